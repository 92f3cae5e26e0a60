"""``vyrecache bench``: run the side-by-side benchmarks and print their tables.

The benchmarks are the scripts ``benchmarks/bench_core.py`` (the engine against
dict, functools, cachetools, lru-dict and cachebox), ``bench_buffer.py``
(put/read and promote/demote bandwidth), ``bench_compaction.py``
(compaction throughput) and ``bench_remote.py`` (RedisTier against redis-py,
on a redis-server it starts) of a source checkout; a script that is not there is
reported and skipped.  ``--plot out.png`` also replays the demo's workload
through a TieredCache once per device-tier size and draws each tier's hit
ratio against that size (needs matplotlib: ``pip install vyrecache[plot]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..report import format_bytes
from . import CommandError, parse_size, positive_int
from .workload import KvWorkload

__all__ = ["register", "run", "BENCHMARKS", "find_benchmarks_dir", "hit_ratio_sweep"]

#: Short name -> script, in the order they run.
BENCHMARKS = {"core": "bench_core.py", "buffer": "bench_buffer.py", "compaction": "bench_compaction.py",
              "remote": "bench_remote.py"}

#: Device-tier sizes of the sweep, as fractions of the working set.
_SWEEP_FRACTIONS = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def _benchmark_name(text: str) -> str:
    if text not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"unknown benchmark {text!r} (choose from {', '.join(BENCHMARKS)})")
    return text


def register(commands: Any) -> None:
    """Add the ``bench`` sub-command to *commands* (an argparse sub-parsers object)."""
    parser = commands.add_parser("bench", help="run the benchmarks in benchmarks/ and print their tables",
                                 description="Run the side-by-side benchmarks of a source checkout (benchmarks/bench_core.py, "
                                 "bench_buffer.py, bench_compaction.py, bench_remote.py; missing ones are skipped) and print their "
                                 "tables. --plot OUT.png also replays the demo's workload through a TieredCache "
                                 "per device-tier size and draws each tier's hit ratio against that size.")
    parser.add_argument("names", nargs="*", type=_benchmark_name, metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--dir", type=Path, default=None, metavar="PATH",
                        help="directory of the benchmark scripts (default: ./benchmarks, else the source tree's)")
    parser.add_argument("--timeout", type=positive_int, default=3600, metavar="SECONDS",
                        help="give up on a script after this long (default 3600)")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="also draw per-tier hit ratio against device-tier size into this image")
    parser.add_argument("--no-scripts", action="store_true", help="run no script (with --plot: only the plot)")
    parser.add_argument("--trace-requests", type=positive_int, default=20000, metavar="N",
                        help="requests in the replayed trace of --plot (default 20000)")
    parser.add_argument("--entries", type=positive_int, default=4096, metavar="N",
                        help="prefix blocks in the replayed trace's working set (default 4096)")
    parser.add_argument("--block-size", type=parse_size, default=16 << 10, metavar="SIZE",
                        help="full block size in the replayed trace (default 16KiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the replayed trace (default 0)")
    parser.add_argument("--json", action="store_true",
                        help="print each script's status and output, and the sweep, as JSON")
    parser.set_defaults(run=run)


def find_benchmarks_dir() -> Path | None:
    """Return ``./benchmarks`` if it exists, else the source tree's ``benchmarks/``, else None."""
    for candidate in (Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"):
        if candidate.is_dir():
            return candidate
    return None


def hit_ratio_sweep(workload: KvWorkload, requests: int, host_size: int,
                    device_sizes: list[int]) -> list[dict[str, Any]]:
    """Replay one trace of *requests* requests through a host+device TieredCache per device size.

    Returns one ``{"device_size", "hit_ratio": {tier: ratio, "total": ratio}}``
    per size.  Each access is ``cache.access(key, size)``: a hit records the
    access (and may promote), a miss inserts.

    Raises:
        vyrecache.CacheError: a tier size is invalid for the cache.
    """
    import vyrecache as vc

    keys, sizes = workload.batch(requests)
    points = []
    for device_size in device_sizes:
        cache = vc.TieredCache([vc.CacheTier("host", host_size), vc.CacheTier("device", device_size)],
                               policy=vc.LruPolicy())
        found = np.asarray(cache.access_many(keys, sizes), dtype=np.int64)
        # From access()'s results (tier or -1), so the figure does not depend on how counters count misses.
        hits = np.bincount(found[found >= 0], minlength=2)
        ratios = {"host": hits[0] / len(keys), "device": hits[1] / len(keys), "total": hits.sum() / len(keys)}
        points.append({"device_size": device_size, "hit_ratio": {k: float(v) for k, v in ratios.items()}})
    return points


def _draw(points: list[dict[str, Any]], host_size: int, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [point["device_size"] / (1 << 20) for point in points]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for series, style in (("device", "o-"), ("host", "s-"), ("total", "k--")):
        axes.plot(sizes, [100 * point["hit_ratio"].get(series, 0.0) for point in points], style, label=series)
    axes.set_xlabel(f"device tier size (MiB); host tier {format_bytes(host_size)}")
    axes.set_ylabel("share of accesses that hit (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _run_script(path: Path, timeout: int, capture: bool) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        completed = subprocess.run([sys.executable, str(path)], cwd=path.parent.parent, timeout=timeout,
                                   capture_output=capture, text=True)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "returncode": None, "seconds": time.perf_counter() - started,
                "output": ""}
    return {"status": "ok" if completed.returncode == 0 else "failed", "returncode": completed.returncode,
            "seconds": time.perf_counter() - started,
            "output": (completed.stdout or "") + (completed.stderr or "") if capture else None}


def run(args: argparse.Namespace) -> int:
    """Run the selected benchmark scripts and the optional plot; return 0 when all that ran passed.

    Raises:
        CommandError: ``--plot`` without matplotlib (status 2), no benchmark
            directory, or every selected script missing.
    """
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401 - only checking that the optional extra is installed
        except ImportError:
            raise CommandError("--plot needs matplotlib, which is not installed. "
                               "Fix: pip install vyrecache[plot]", status=2) from None
    elif args.no_scripts:
        raise CommandError("--no-scripts leaves nothing to do. Fix: add --plot OUT.png.", status=2)

    results: dict[str, dict[str, Any]] = {}
    failed = False
    if not args.no_scripts:
        directory = args.dir if args.dir is not None else find_benchmarks_dir()
        if directory is None or not directory.is_dir():
            raise CommandError(f"no benchmarks directory ({directory or './benchmarks'} does not exist). "
                               "Fix: run from a source checkout of vyrecache, or pass --dir.")
        names = args.names or list(BENCHMARKS)
        for name in names:
            path = directory / BENCHMARKS[name]
            if not path.is_file():
                results[name] = {"status": "missing", "returncode": None, "seconds": 0.0, "output": None}
                if not args.json:
                    print(f"== {name}: {path} not found, skipped", flush=True)
                continue
            if not args.json:
                print(f"== {name}: {path}", flush=True)
            results[name] = _run_script(path, args.timeout, capture=args.json)
            if results[name]["status"] != "ok":
                failed = True
                if not args.json:
                    print(f"== {name}: {results[name]['status']} "
                          f"(exit status {results[name]['returncode']})", flush=True)
        if all(result["status"] == "missing" for result in results.values()):
            if args.json:
                print(json.dumps({"benchmarks": results}, indent=2))
            raise CommandError(f"none of the benchmark scripts ({', '.join(BENCHMARKS[n] for n in names)}) "
                               f"exists in {directory}. Fix: run from a complete source checkout.")

    sweep = None
    if args.plot is not None:
        workload = KvWorkload(args.entries, args.block_size, seed=args.seed)
        working_set = workload.working_set_bytes()
        host_size = max(args.block_size, int(working_set * 0.75))
        device_sizes = sorted({int(working_set * fraction) for fraction in _SWEEP_FRACTIONS})
        sweep = hit_ratio_sweep(workload, args.trace_requests, host_size, device_sizes)
        _draw(sweep, host_size, args.plot,
              f"KV-cache trace: {args.trace_requests:,} requests, working set {format_bytes(working_set)}")
        if not args.json:
            print(f"== hit ratio against device-tier size (host tier {format_bytes(host_size)}):")
            for point in sweep:
                ratios = point["hit_ratio"]
                print(f"  device {format_bytes(point['device_size']):>10}: device {100 * ratios.get('device', 0):5.1f}%"
                      f"  host {100 * ratios.get('host', 0):5.1f}%  total {100 * ratios['total']:5.1f}%")
            print(f"== plot written to {args.plot}")

    if args.json:
        print(json.dumps({"benchmarks": results, "sweep": sweep,
                          "plot": str(args.plot) if args.plot is not None else None}, indent=2))
    return 1 if failed else 0
