"""The demo with a remote tier against the same demo without one, and the no-eviction ceiling.

Starts a redis-server of its own on a free loopback port (``maxmemory 1gb``, ``allkeys-lru``, no
persistence), then runs ``vyrecache demo --backend host`` with a host tier a quarter of the
working set, in interleaved rounds: without a remote tier, with ``--remote`` (the server emptied
first, so that no round starts with the last one's entries), with a host tier holding the whole
working set (the hit ratio's ceiling), and with ``--remote --decode-write-back`` (the decode
blocks, used once, written to Redis too, as every victim was before ``put(..., write_back=False)``).
Prints each round and the median ratio; the floor is a remote demo within 2x of the demo without it.

``--other PATH`` adds, to every round, the remote demo of another built source tree (an earlier
commit, for a before/after in the same run).  ``--json PATH`` also writes every round, with
BENCHMARKS.md's table ``remote-demo``.

Run: ``python benchmarks/bench_remote_demo.py [--rounds N] [--duration SECONDS] [--other PATH] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench_remote import start_server
from harness import add_json_argument, write_json

FLOOR = 2.0
HOST_SIZE = "15MiB"         # a quarter of the default workload's 61 MiB working set
CEILING_SIZE = "128MiB"     # the whole working set: nothing is evicted


def demo(duration: float, host_size: str, remote: str | None, tree: str | None = None,
         decode_write_back: bool = False) -> dict:
    command = [sys.executable, "-m", "vyrecache", "demo", "--backend", "host", "--host-size", host_size,
               "--duration", str(duration), "--quiet", "--json"]
    if remote is not None:
        command += ["--remote", remote]
    if decode_write_back:
        command += ["--decode-write-back"]
    environment = dict(os.environ)
    if tree is not None:
        environment["PYTHONPATH"] = tree
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment,
                            cwd=tree)
    report = json.loads(result.stdout)
    row = {"requests_per_second": report["requests_per_second"], "hit_ratio": report["hit_ratio"]["total"]}
    if report["remote"] is not None:
        counts = report["remote"]
        row.update(remote_hits=counts["hits"], remote_writes=counts["writes"], dropped=counts["dropped"],
                   errors=counts["errors"], fetch_p50=counts["latency"]["fetch_p50"])
    return row


def table(rounds: list[dict], other: str | None) -> dict:
    """BENCHMARKS.md's table: a row per round, then the medians of the slowdowns."""
    columns = ["round", "no remote req/s", "hits", "+ Redis req/s", "hits", "remote hits", "slowdown",
               "decode blocks written back: req/s", "slowdown"]
    if other is not None:
        columns += ["`--other` build: req/s", "hits", "slowdown"]
    columns.append("ceiling hits")
    rows = []
    for index, row in enumerate(rounds, 1):
        cells = [str(index), f"{row['local']['requests_per_second']:,.0f}", f"{row['local']['hit_ratio']:.3f}",
                 f"{row['remote']['requests_per_second']:,.0f}", f"{row['remote']['hit_ratio']:.3f}",
                 f"{row['remote']['remote_hits']:,}", f"{row['slowdown']:.2f}x",
                 f"{row['decode_written']['requests_per_second']:,.0f}", f"{row['decode_written_slowdown']:.2f}x"]
        if other is not None:
            cells += [f"{row['other']['requests_per_second']:,.0f}", f"{row['other']['hit_ratio']:.3f}",
                      f"{row['other_slowdown']:.2f}x"]
        rows.append(cells + [f"{row['ceiling']['hit_ratio']:.3f}"])
    medians = {key: f"**{statistics.median(row[key] for row in rounds):.2f}x**"
               for key in ("slowdown", "decode_written_slowdown", "other_slowdown") if key in rounds[0]}
    median = ["median", "", "", "", "", "", medians["slowdown"], "", medians["decode_written_slowdown"]]
    if other is not None:
        median += ["", "", medians["other_slowdown"]]
    rows.append(median + [""])
    return {"remote-demo": {"columns": columns, "rows": rows}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--other", default=None, metavar="PATH",
                        help="also run the remote demo of this built source tree in every round")
    add_json_argument(parser)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server not found. Fix: apt-get install redis-server", file=sys.stderr)
        return 1
    import redis

    directory = tempfile.mkdtemp(prefix="bench-remote-demo-")
    server, port = start_server(directory)
    try:
        raw = redis.Redis(host="127.0.0.1", port=port)
        raw.config_set("maxmemory", "1gb")
        raw.config_set("maxmemory-policy", "allkeys-lru")
        url = f"redis://127.0.0.1:{port}/0"
        rounds = []
        for _ in range(args.rounds):
            local = demo(args.duration, HOST_SIZE, None)
            raw.flushall()
            remote = demo(args.duration, HOST_SIZE, url)
            ceiling = demo(args.duration, CEILING_SIZE, None)
            raw.flushall()
            written = demo(args.duration, HOST_SIZE, url, decode_write_back=True)
            row = {"local": local, "remote": remote, "ceiling": ceiling, "decode_written": written,
                   "slowdown": local["requests_per_second"] / remote["requests_per_second"],
                   "decode_written_slowdown": local["requests_per_second"] / written["requests_per_second"]}
            if args.other is not None:
                raw.flushall()
                other = demo(args.duration, HOST_SIZE, url, os.path.abspath(args.other))
                row["other"] = other
                row["other_slowdown"] = local["requests_per_second"] / other["requests_per_second"]
            rounds.append(row)
        raw.close()
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    slowdown = statistics.median(row["slowdown"] for row in rounds)
    to_stdout = str(args.json) == "-"
    write_json(args.json, "bench_remote_demo", {
        "rounds": rounds, "median_slowdown": slowdown, "duration": args.duration, "host_size": HOST_SIZE,
        "ceiling_size": CEILING_SIZE, "other": args.other, "floor": FLOOR, "tables": table(rounds, args.other)})
    if not to_stdout:
        print(f"demo --backend host, host tier {HOST_SIZE}, {args.duration:g} s per run, {args.rounds} interleaved rounds")
        print(f"{'round':>5} {'no remote req/s':>16} {'hits':>6} {'+ Redis req/s':>14} {'hits':>6} "
              f"{'remote hits':>11} {'slowdown':>8} {'ceiling hits':>12}")
        for index, row in enumerate(rounds, 1):
            print(f"{index:>5} {row['local']['requests_per_second']:>16,.0f} {row['local']['hit_ratio']:>6.3f} "
                  f"{row['remote']['requests_per_second']:>14,.0f} {row['remote']['hit_ratio']:>6.3f} "
                  f"{row['remote']['remote_hits']:>11,} {row['slowdown']:>7.2f}x {row['ceiling']['hit_ratio']:>12.3f}")
            print(f"{'':>5} --decode-write-back: + Redis {row['decode_written']['requests_per_second']:,.0f} req/s, "
                  f"hits {row['decode_written']['hit_ratio']:.3f}, slowdown {row['decode_written_slowdown']:.2f}x")
            if "other" in row:
                print(f"{'':>5} {args.other}: + Redis {row['other']['requests_per_second']:,.0f} req/s, "
                      f"hits {row['other']['hit_ratio']:.3f}, slowdown {row['other_slowdown']:.2f}x")
        print(f"median slowdown {slowdown:.2f}x (floor: within {FLOOR:g}x); with the decode blocks written back "
              f"{statistics.median(row['decode_written_slowdown'] for row in rounds):.2f}x")
        if args.other is not None:
            print(f"median slowdown of {args.other}: "
                  f"{statistics.median(row['other_slowdown'] for row in rounds):.2f}x")
    return 0 if slowdown <= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main())
