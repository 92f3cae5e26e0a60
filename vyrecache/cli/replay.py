"""``vyrecache replay``: replay cache traces through the engine's policies, beside Belady's OPT.

Each trace is read once (gzip, xz and, with ``zstandard``, zstd transparently), then replayed
through a live TieredCache per policy and cache size in batched calls.  The table shows the hit
ratio of each policy per size and OPT beside it (exact with unit sizes; with byte sizes, from a
CSV size column or oracleGeneral's object sizes with ``--sizes bytes``, a lower bound on OPT,
marked ``>=``); ``--tiers`` also shows each tier's
share of the hits; Mooncake traces also show the prefix-usable hit ratio (the hits before each
request's first missing block, the blocks an inference server can actually reuse).  The
replays of a trace run on ``--jobs`` threads (default: every CPU), one cache each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import CommandError

__all__ = ["register", "run"]


def register(commands: Any) -> None:
    """Add the ``replay`` sub-command to *commands* (an argparse sub-parsers object)."""
    from ..traces import FORMATS

    parser = commands.add_parser(
        "replay", help="replay cache traces through every policy, with Belady's OPT",
        description="Replay cache traces through a TieredCache per policy and cache size and "
        "print the hit ratio of each, with Belady's OPT beside it (exact for unit sizes, a "
        "lower bound for byte sizes). Mooncake traces also get the prefix-usable hit ratio.")
    parser.add_argument("traces", nargs="+", type=Path, metavar="TRACE",
                        help="trace files (gzip, xz, zstd with the zstandard package)")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="trace format (default: from the file name)")
    parser.add_argument("--policy", default="all", metavar="NAME[,NAME]",
                        help="policies to replay: lru, fifo, clock, sieve, s3fifo, arc, wtinylfu, "
                             "or all (default)")
    parser.add_argument("--size", default="1%,10%,30%", metavar="N|P%[,...]",
                        help="cache sizes: entries (bytes with a CSV size column) or a "
                             "percentage of the trace's unique keys (default 1%%,10%%,30%%)")
    parser.add_argument("--sizes", choices=("auto", "unit", "bytes"), default="auto",
                        help="entry sizes: bytes from the trace's sizes (a CSV size column, "
                             "oracleGeneral's object sizes), unit (one entry a key), or auto "
                             "(default: bytes for a CSV with a size column, else unit)")
    parser.add_argument("--tiers", default=None, metavar="P%,P%",
                        help="split each cache into tiers, slowest first, e.g. 80%%,20%%, and "
                             "show each tier's hit ratio")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="draw hit ratio against cache size per policy, with OPT "
                             "(needs matplotlib: pip install vyrecache[plot])")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="replay on N threads, one cache each (default: every CPU)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) if index else cell.ljust(width)
                               for index, (cell, width) in enumerate(zip(row, widths)))
                     for row in rows)


def run(args: argparse.Namespace) -> int:
    """Run ``vyrecache replay``; returns the exit status."""
    from tqdm import tqdm

    from ..replay import (parse_cache_sizes, parse_jobs, parse_tier_split, policy_names,
                          replay_grid)
    from ..traces import read_trace

    try:
        names = policy_names(args.policy)
        tiers = parse_tier_split(args.tiers) if args.tiers else None
        jobs = parse_jobs(args.jobs)
    except ValueError as exc:
        raise CommandError(str(exc), status=2) from None
    if args.plot is not None:
        try:
            import matplotlib
        except ImportError:
            raise CommandError("--plot needs matplotlib, which is not installed. Fix: pip "
                               "install vyrecache[plot], or leave out --plot.") from None
        matplotlib.use("Agg")
    loaded = []
    for path in args.traces:
        try:
            trace = read_trace(path, args.format)
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from None
        if args.sizes == "bytes" and trace.sizes is None:
            raise CommandError(f"{path} ({trace.format}) has no sizes. Fix: leave out --sizes "
                               f"bytes, or pass a CSV trace with a size column or an "
                               f"oracleGeneral one.", status=2)
        use_sizes = trace.sizes is not None and (
            args.sizes == "bytes" or (args.sizes == "auto" and trace.format == "csv"))
        if trace.sizes is not None and use_sizes:
            last_size: dict[int, int] = dict(zip(trace.keys.tolist(), trace.sizes.tolist()))
            whole = sum(last_size.values())
        else:
            whole = trace.unique_keys
        try:
            sizes = parse_cache_sizes(args.size, whole)
        except ValueError as exc:
            raise CommandError(str(exc), status=2) from None
        loaded.append((trace, use_sizes, sizes, whole))

    total = sum(len(trace) * len(sizes) * len(names) for trace, _, sizes, _ in loaded)
    reports: list[dict[str, Any]] = []
    with tqdm(total=total, unit="req", unit_scale=True, desc="replay", leave=False,
              disable=total < 2_000_000) as bar:
        for trace, use_sizes, sizes, whole in loaded:
            runs = replay_grid(trace, names, sizes, tiers, use_sizes, jobs, bar.update)
            reports.append({"trace": trace, "use_sizes": use_sizes, "whole": whole,
                            "runs": runs})

    if args.json:
        print(json.dumps([{
            "trace": report["trace"].path, "format": report["trace"].format,
            "requests": len(report["trace"]), "unique_keys": report["trace"].unique_keys,
            "byte_sizes": report["use_sizes"], "tiers": tiers,
            "sizes": [{"capacity": point.capacity, "opt_hits": point.opt_hits,
                       "opt_hit_ratio": point.opt_hit_ratio, "opt_exact": point.opt_exact,
                       "policies": [result.as_dict() for result in point.results]}
                      for point in report["runs"]],
        } for report in reports], indent=2))
    else:
        for report in reports:
            _print_report(report, names, tiers)
    if args.plot is not None:
        _plot(reports, names, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _print_report(report: dict[str, Any], names: list[str], tiers: list[float] | None) -> None:
    trace = report["trace"]
    unit = "bytes" if report["use_sizes"] else "entries"
    print(f"{trace.path} ({trace.format}): {len(trace):,} requests, {trace.unique_keys:,} "
          f"unique keys, {'byte' if report['use_sizes'] else 'unit'} sizes")
    opt_label = "OPT" if not report["use_sizes"] else "OPT>="
    rows = [[f"size ({unit})"] + names + [opt_label]]
    for point in report["runs"]:
        share = point.capacity / report["whole"] * 100
        rows.append([f"{point.capacity:,} ({share:.3g}%)"]
                    + [_percent(result.hit_ratio) for result in point.results]
                    + [_percent(point.opt_hit_ratio)])
    print(_table(rows))
    if tiers:
        print("hit ratio per tier (slowest first):")
        rows = [["size", "policy"] + [f"tier{index} ({share * 100:g}%)"
                                      for index, share in enumerate(tiers)]]
        for point in report["runs"]:
            for result in point.results:
                rows.append([f"{point.capacity:,}", result.policy]
                            + [_percent(ratio) for ratio in result.tier_hit_ratios])
        print(_table(rows))
    if trace.request_starts is not None:
        print("prefix-usable hit ratio (hits before a request's first missing block):")
        rows = [["size"] + names]
        for point in report["runs"]:
            rows.append([f"{point.capacity:,}"]
                        + [_percent(result.prefix_hit_ratio) for result in point.results])
        print(_table(rows))
    print()


def _plot(reports: list[dict[str, Any]], names: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for axis, report in zip(axes[0], reports):
        capacities = [point.capacity for point in report["runs"]]
        for index, name in enumerate(names):
            axis.plot(capacities, [point.results[index].hit_ratio for point in report["runs"]],
                      marker="o", label=name)
        axis.plot(capacities, [point.opt_hit_ratio for point in report["runs"]], "k--",
                  marker="x", label="OPT" if not report["use_sizes"] else "OPT (lower bound)")
        axis.set_xscale("log")
        axis.set_xlabel("cache size (" + ("bytes" if report["use_sizes"] else "entries") + ")")
        axis.set_ylabel("hit ratio")
        axis.set_title(Path(report["trace"].path).name, fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    try:
        figure.savefig(out, dpi=110)
    except OSError as exc:
        raise CommandError(f"cannot write the plot to {out}: {exc.strerror}. Fix: pass a "
                           f"writable path to --plot.") from None
    finally:
        plt.close(figure)
