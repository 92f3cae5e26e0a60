"""What every benchmark script shares: one timer, interleaved rounds, and ``--json PATH`` output.

Best-of timing: the least time over rounds is the one least disturbed by a shared machine.
Peers run interleaved (each round runs every peer once, in turn), so a slow spell of the
machine, whose speed moves 30-50% within minutes, lands on all of them instead of on one.

Clocks: wall time (``time.perf_counter``) by default.  ``CPU_TIME`` (the process's CPU time)
suits peers that compute in the calling thread and never wait (an engine loop, a simulator):
on a machine shared with other work it leaves out the time the scheduler gives the core to
other processes, which wall time counts against whichever peer was running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLOCKS", "CPU_TIME", "WALL_TIME", "add_clock_argument", "add_json_argument", "best_of",
           "cpu_model", "interleaved_best", "write_json"]

Clock = Callable[[], float]
WALL_TIME: Clock = time.perf_counter
CPU_TIME: Clock = time.process_time
CLOCKS = {"wall": WALL_TIME, "cpu": CPU_TIME}


def best_of(run: Callable[[], object], rounds: int, warmup: bool = False,
            before: Callable[[], object] | None = None, clock: Clock = WALL_TIME) -> float:
    """The least time (by `clock`) of `rounds` calls of `run`, in seconds; `warmup` first makes
    one untimed call (page faults, shader compilation, descriptor sets), `before` runs untimed
    before each timed call (a reset)."""
    if warmup:
        run()
    best = float("inf")
    for _ in range(rounds):
        if before is not None:
            before()
        started = clock()
        run()
        best = min(best, clock() - started)
    return best


def interleaved_best(runs: Sequence[Callable[[], object]], rounds: int, clock: Clock = WALL_TIME,
                     before: Sequence[Callable[[], object] | None] | None = None) -> list[float]:
    """The least time (by `clock`) of each run over `rounds` rounds, every round running each
    once, in turn; `before`, one callable or None per run, runs untimed before each timed call
    of its run (a reset, a fresh cache, a warm-up)."""
    if before is not None and len(before) != len(runs):
        raise ValueError(f"{len(before)} before-calls for {len(runs)} runs. Fix: give one (or None) per run.")
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for index, run in enumerate(runs):
            if before is not None and before[index] is not None:
                before[index]()
            started = clock()
            run()
            best[index] = min(best[index], clock() - started)
    return best


def cpu_model() -> str:
    """The processor's model name as ``lscpu`` reports it (a VM's is often only the vendor's)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def add_clock_argument(parser: argparse.ArgumentParser, default: str = "wall") -> None:
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=default,
                        help=f"what to time: wall time, or the process's CPU time (default {default})")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write the results as JSON to PATH ('-' for standard output)")


def write_json(path: Path | None, benchmark: str, results: Any) -> None:
    """Write `results` with what identifies the run (script, machine, its load, Python) to `path`;
    nothing when `path` is None, standard output when it is '-'."""
    if path is None:
        return
    document = {"benchmark": benchmark, "machine": platform.machine(), "processor": platform.processor(),
                "cpu": cpu_model(), "cores": os.cpu_count(),
                "load_average": [round(load, 2) for load in os.getloadavg()],
                "python": platform.python_version(), "argv": sys.argv[1:], "results": results}
    text = json.dumps(document, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        path.write_text(text)
