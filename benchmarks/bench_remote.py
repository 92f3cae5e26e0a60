"""RedisTier against redis-py's own pipelined SET and MGET of the same bytes, on the same server.

Starts a redis-server of its own on a free loopback port (no persistence), then, best of N:

* write: 10,000 entries of 16 KiB through ``RedisTier.write_many`` + ``flush`` against a
  redis-py pipeline of ``SET`` commands, 1,024 per execute (the writer's round-trip size);
* fetch: the same entries back through ``RedisTier.fetch_many`` in batches against redis-py
  ``MGET`` of the same batches, alternating batch by batch; each side's time is the sum over
  batches of that batch's best of N.

The tier does more than the peer for each entry (a header, a checksum on write and on read, key
checks, counters), and the floor is 0.8x of the peer's throughput.  When hiredis is installed the
script runs once with it and once without (in a child process that hides it), since redis-py
picks its reply parser at import.  ``--json PATH`` also writes the figures, with BENCHMARKS.md's
table ``remote`` (the child run without hiredis reports to its parent through ``--json -``).

Run: ``python benchmarks/bench_remote.py [--entries N] [--size BYTES] [--batch N] [--repeat N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from harness import add_json_argument, interleaved_best, write_json

FLOOR = 0.8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", directory, "--logfile", ""],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"redis-server did not start on port {port}")
        time.sleep(0.02)


def run(entries: int, size: int, batch: int, repeat: int) -> dict:
    import redis

    import vyrecache as vc

    directory = tempfile.mkdtemp(prefix="bench-remote-")
    server, port = start_server(directory)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        raw = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        rng = np.random.default_rng(0)
        values = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(entries)]
        keys = list(range(entries))
        names = [b"peer:%d" % key for key in keys]
        batches = [(keys[i:i + batch], names[i:i + batch]) for i in range(0, entries, batch)]
        # Room for every entry at once: the write is measured, not the queue's drop policy.
        tier = vc.RedisTier(url, namespace="bench", timeout=5.0, max_pending_bytes=2 * entries * (size + 64))

        def tier_write():
            tier.write_many(keys, values)
            if not tier.flush(120):
                raise SystemExit("the tier's writes did not finish in 120 s")

        def peer_write():
            for start in range(0, entries, 1024):
                pipe = raw.pipeline(transaction=False)
                for name, value in zip(names[start:start + 1024], values[start:start + 1024]):
                    pipe.set(name, value)
                pipe.execute()

        flush_db = raw.flushdb
        results = {}
        # Alternate the two sides so that a noisy neighbour hits both alike; each write starts
        # on an emptied server.
        tier_write_s, peer_write_s = interleaved_best([tier_write, peer_write], repeat,
                                                      before=[flush_db, flush_db])
        tier_write()
        peer_write()
        # Fetches alternate batch by batch (which side goes first alternates too), and each side's
        # time is the sum over batches of each batch's best: a burst of load from elsewhere spoils
        # one batch of one run, not a whole pass.
        tier_best = [float("inf")] * len(batches)
        peer_best = [float("inf")] * len(batches)
        for run_index in range(repeat):
            for index, (batch_keys, batch_names) in enumerate(batches):
                sides = [lambda batch_keys=batch_keys: tier.fetch_many(batch_keys),
                         lambda batch_names=batch_names: raw.mget(batch_names)]
                peer_first = not (run_index + index) % 2
                seconds = interleaved_best(sides[::-1] if peer_first else sides, 1)
                tier_s, peer_s = seconds[::-1] if peer_first else seconds
                tier_best[index] = min(tier_best[index], tier_s)
                peer_best[index] = min(peer_best[index], peer_s)
        tier_fetch_s, peer_fetch_s = sum(tier_best), sum(peer_best)
        assert tier.fetch_many(keys[:10]) == values[:10], "the tier returned other bytes"
        counts = tier.counters()
        assert counts["dropped"] == 0 and counts["errors"] == 0 and counts["corrupt"] == 0, counts
        total = entries * size
        for name, tier_s, peer_s in (("write", tier_write_s, peer_write_s), ("fetch", tier_fetch_s, peer_fetch_s)):
            results[name] = {"tier_s": tier_s, "peer_s": peer_s,
                             "tier_mb_s": total / tier_s / 1e6, "peer_mb_s": total / peer_s / 1e6,
                             "ratio": peer_s / tier_s}
        results["latency"] = counts["latency"]
        tier.close()
        raw.close()
        return results
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def hiredis_in_use() -> bool:
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return False
    return bool(HIREDIS_AVAILABLE)


def table(runs: dict, batch: int) -> dict:
    rows = []
    for parser_name, results in runs.items():
        for op in ("write", "fetch"):
            row = results[op]
            rows.append([parser_name, op, "-" if op == "write" else f"{batch:,}", f"{row['tier_mb_s']:,.0f}",
                         f"{row['peer_mb_s']:,.0f}", f"{row['ratio']:.2f}"])
    return {"remote": {"columns": ["parser", "op", "batch", "RedisTier MB/s", "redis-py MB/s", "ratio"],
                       "rows": rows}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=16 << 10)
    parser.add_argument("--batch", type=int, default=256, help="keys per fetch_many / MGET (default 256)")
    parser.add_argument("--repeat", type=int, default=5)
    add_json_argument(parser)
    parser.add_argument("--without-hiredis", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.without_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    if shutil.which("redis-server") is None:
        print("redis-server not found. Fix: apt-get install redis-server", file=sys.stderr)
        return 1
    runs = {("hiredis" if hiredis_in_use() else "python parser"): run(args.entries, args.size, args.batch, args.repeat)}
    if hiredis_in_use() and not args.without_hiredis:
        # The same run in a child process that hides hiredis; it reports on its standard output.
        child = subprocess.run([sys.executable, __file__, "--json", "-", "--without-hiredis", "--entries", str(args.entries),
                                "--size", str(args.size), "--batch", str(args.batch), "--repeat", str(args.repeat)],
                               capture_output=True, text=True, env=os.environ)
        if not child.stdout.strip():
            raise SystemExit(f"the run without hiredis failed: {child.stderr[-2000:]}")
        runs.update(json.loads(child.stdout)["results"]["runs"])
    to_stdout = str(args.json) == "-"
    write_json(args.json, "bench_remote", {"entries": args.entries, "size": args.size, "batch": args.batch,
                                           "repeat": args.repeat, "floor": FLOOR, "runs": runs,
                                           "tables": table(runs, args.batch)})
    if not to_stdout:
        print(f"{args.entries:,} entries of {args.size:,} B, fetch batches of {args.batch}, best of {args.repeat}")
        print(f"{'parser':<14} {'op':<6} {'RedisTier MB/s':>15} {'redis-py MB/s':>14} {'ratio':>6}")
        for parser_name, results in runs.items():
            for op in ("write", "fetch"):
                row = results[op]
                print(f"{parser_name:<14} {op:<6} {row['tier_mb_s']:>15,.0f} {row['peer_mb_s']:>14,.0f} "
                      f"{row['ratio']:>6.2f}")
    worst = min(results[op]["ratio"] for results in runs.values() for op in ("write", "fetch"))
    if worst < FLOOR:
        if not to_stdout:
            print(f"below the {FLOOR}x floor: {worst:.2f}x")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
