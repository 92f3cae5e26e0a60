"""The batched data path against its memcpy bound, side by side in one process.

* ``put_many`` / ``read_many`` of 1,000 entries of 16 KiB against ``np.copyto`` of the same bytes
  into (out of) an arena, and per-key overhead at 64-byte entries against single ``put`` calls;
* a lease (enter + exit) against a bare ``pin`` + ``unpin``;
* the demo's workload with one ``fill_many`` per request (access, and put the misses), and with
  ``access_many`` + ``put_many``, against the memcpy bound of the bytes it moves and against the
  per-call loop.

Rounds are interleaved; each figure is the best round.  ``--json PATH`` also writes the figures,
with BENCHMARKS.md's table ``batches-BACKEND``.  Run:
``python benchmarks/bench_batches.py [--backend host|vulkan] [--rounds N] [--json PATH]``.
"""

from __future__ import annotations

import argparse

import numpy as np

import vyrecache as vc
from vyrecache.cli.workload import KvWorkload

from harness import add_json_argument, best_of, interleaved_best, write_json


def bulk(backend: str, rounds: int) -> dict[str, float]:
    count, size = 1000, 16 << 10
    rows = np.random.default_rng(0).integers(0, 256, (count, size), dtype=np.uint8)
    keys = np.arange(count, dtype=np.uint64)
    out = np.empty_like(rows)
    arena = np.ones(count * size, dtype=np.uint8).reshape(count, size)
    with vc.BufferCache([vc.CacheTier("host", 64 << 20, "host")], backend=backend) as cache:
        cache.put_many(keys, rows)
        put = best_of(lambda: cache.put_many(keys, rows), rounds)
        read = best_of(lambda: cache.read_many(keys, out), rounds)
    copy_in = best_of(lambda: np.copyto(arena, rows), rounds)
    copy_out = best_of(lambda: np.copyto(out, arena), rounds)
    print(f"1,000 x 16 KiB: put_many {put * 1e3:.2f} ms ({copy_in / put:.2f}x np.copyto in, "
          f"{copy_in * 1e3:.2f} ms); read_many {read * 1e3:.2f} ms ({copy_out / read:.2f}x np.copyto out, "
          f"{copy_out * 1e3:.2f} ms)")

    # Per-key costs of small entries in the steady state: each round times 100 batches in a row
    # (one slow batch, a page fault or a scheduler tick, weighs a hundredth), put_many's and
    # put()'s rounds interleaved, at least 9 of them, after a warm-up of both; the best round.
    small = np.zeros((count, 64), dtype=np.uint8)
    repeat = 100
    with vc.BufferCache([vc.CacheTier("host", 1 << 20, "host")], backend=backend) as cache:
        cache.put_many(keys, small)
        smalls = [small[i] for i in range(count)]
        key_list = keys.tolist()

        def batches() -> None:
            for _ in range(repeat):
                cache.put_many(keys, small)

        def singles() -> None:
            for _ in range(repeat // 10):
                for key, row in zip(key_list, smalls):
                    cache.put(key, row)
        batches()
        singles()
        many, single = interleaved_best([batches, singles], max(rounds, 9))
        many /= repeat
        single /= repeat // 10
        out_small = np.empty_like(small)
        read_small = best_of(lambda: cache.read_many(keys, out_small), rounds)
    print(f"64-byte entries: put_many {many / count * 1e9:.0f} ns/key, read_many "
          f"{read_small / count * 1e9:.0f} ns/key, put() {single / count * 1e9:.0f} ns/call")
    return {"put_many_16k_s": put, "read_many_16k_s": read, "copyto_in_s": copy_in, "copyto_out_s": copy_out,
            "put_many_64_ns_per_key": many / count * 1e9, "read_many_64_ns_per_key": read_small / count * 1e9,
            "put_64_ns_per_call": single / count * 1e9}


def leases(backend: str, rounds: int) -> dict[str, float]:
    n = 20000
    with vc.BufferCache([vc.CacheTier("host", 1 << 20, "host")], backend=backend) as cache:
        cache.put(1, np.zeros(4096, dtype=np.uint8))

        def leased() -> None:
            lease = cache.lease
            for _ in range(n):
                with lease(1):
                    pass

        def pinned() -> None:
            pin, unpin = cache.pin, cache.unpin
            for _ in range(n):
                pin(1)
                unpin(1)
        lease_time = best_of(leased, rounds)
        pin_time = best_of(pinned, rounds)
    print(f"lease enter + exit: {lease_time / n * 1e9:.0f} ns (pin + unpin: {pin_time / n * 1e9:.0f} ns)")
    return {"lease_ns": lease_time / n * 1e9, "pin_unpin_ns": pin_time / n * 1e9}


def workload(backend: str, rounds: int) -> dict[str, float]:
    block = 16 << 10
    work = KvWorkload(4096, block, seed=0)
    requests = []
    for _ in range(4000):
        keys, sizes = work.batch(1)
        requests.append((keys, sizes))
    source = np.random.default_rng(0).integers(0, 256, block, dtype=np.uint8)
    tiers = [vc.CacheTier("host", 48 << 20, "host"), vc.CacheTier("device", 8 << 20, "device")]
    accesses = sum(len(keys) for keys, _ in requests)

    # Each run serves the requests on a fresh cache, made (with its list of rows) untimed before
    # it; the one before is closed then, untimed too, and the bytes the batched run put kept.
    live: list = []
    put_bytes: dict[str, int] = {}

    def close_live() -> None:
        while live:
            done, cache, _ = live.pop()
            put_bytes[done] = cache.puts_bytes
            cache.close()

    def fresh_for(name: str):
        def fresh() -> None:
            close_live()
            cache = vc.BufferCache(tiers, backend=backend)
            live.append((name, cache, [[source[:size] for size in sizes.tolist()] for _, sizes in requests]))
        return fresh

    def batched() -> None:
        _, cache, blocks = live[0]
        for (keys, _), datas in zip(requests, blocks):
            missing = np.flatnonzero(cache.access_many(keys) < 0)
            if missing.size:
                cache.put_many(keys[missing], [datas[index] for index in missing.tolist()])

    def filled() -> None:
        _, cache, blocks = live[0]
        fill = cache.fill_many
        for (keys, _), datas in zip(requests, blocks):
            fill(keys, datas)

    def per_call() -> None:
        _, cache, blocks = live[0]
        for (keys, _), datas in zip(requests, blocks):
            for key, data in zip(keys.tolist(), datas):
                if cache.access(key) < 0:
                    cache.put(key, data)

    names = ("batched", "per_call", "filled")
    batch_best, call_best, fill_best = interleaved_best([batched, per_call, filled], rounds,
                                                        before=[fresh_for(name) for name in names])
    close_live()
    moved = put_bytes["batched"]
    arena = np.ones(moved, dtype=np.uint8)
    pieces = [source[: min(block, moved - offset)] for offset in range(0, moved, block)]

    def copies() -> None:
        offset = 0
        for piece in pieces:
            np.copyto(arena[offset:offset + piece.size], piece)
            offset += piece.size
    bound = best_of(copies, rounds)
    print(f"demo workload ({accesses / len(requests):.1f} keys per request), memcpy of the "
          f"{moved / 2**20:,.0f} MiB put: {bound * 1e3:.1f} ms")
    for name, seconds in (("fill_many, one call per request", fill_best),
                          ("access_many + put_many of the misses", batch_best),
                          ("access + put per key", call_best)):
        print(f"  {name:<38} {accesses / seconds:>10,.0f} accesses/s  {seconds * 1e3:7.1f} ms  "
              f"memcpy bound {bound / seconds:4.0%}  {call_best / seconds:.2f}x per key")
    return {"fill_many_accesses_per_s": accesses / fill_best, "batched_accesses_per_s": accesses / batch_best,
            "per_call_accesses_per_s": accesses / call_best, "memcpy_bound_s": bound, "fill_many_s": fill_best,
            "batched_s": batch_best, "per_call_s": call_best, "moved_bytes": moved}


def floor(met: bool, text: str) -> str:
    return f"{text}: {'met' if met else '**not met**'}"


def table(results: dict) -> dict:
    """BENCHMARKS.md's table of a run, with the floors each figure is held to."""
    bulk_, leases_, work = results["bulk"], results["leases"], results["workload"]
    put_ratio = bulk_["copyto_in_s"] / bulk_["put_many_16k_s"]
    read_ratio = bulk_["copyto_out_s"] / bulk_["read_many_16k_s"]
    bound = work["memcpy_bound_s"]
    rows = [
        ["`put_many` of 1,000 x 16 KiB (replacing them)", f"{bulk_['put_many_16k_s'] * 1e3:.2f} ms",
         f"`np.copyto` into an arena {bulk_['copyto_in_s'] * 1e3:.2f} ms", f"{put_ratio:.2f}x",
         floor(put_ratio >= 0.8, ">= 0.8x")],
        ["`read_many` of 1,000 x 16 KiB", f"{bulk_['read_many_16k_s'] * 1e3:.2f} ms",
         f"`np.copyto` out of an arena {bulk_['copyto_out_s'] * 1e3:.2f} ms", f"{read_ratio:.2f}x",
         floor(read_ratio >= 0.8, ">= 0.8x")],
        ["`put_many` of 64-byte entries (replacing them), per key", f"{bulk_['put_many_64_ns_per_key']:.0f} ns",
         f"`put()` per call {bulk_['put_64_ns_per_call']:.0f} ns", "",
         floor(bulk_["put_many_64_ns_per_key"] <= 150, "<= 150 ns")],
        ["`read_many` of 64-byte entries, per key", f"{bulk_['read_many_64_ns_per_key']:.0f} ns", "", "", ""],
        ["lease enter + exit", f"{leases_['lease_ns']:.0f} ns", f"`pin` + `unpin` {leases_['pin_unpin_ns']:.0f} ns",
         "", floor(leases_["lease_ns"] <= 1000, "<= 1 us")],
        ["demo workload, one `fill_many` per request",
         f"{work['fill_many_accesses_per_s']:,.0f} accesses/s, {work['fill_many_s'] * 1e3:.1f} ms",
         f"memcpy of the {work['moved_bytes'] / 2**20:,.0f} MiB put: {bound * 1e3:.1f} ms",
         f"{bound / work['fill_many_s']:.0%} of the bound", floor(bound / work["fill_many_s"] >= 0.6, ">= 60%")],
        ["demo workload, `access_many` + `put_many` of the misses",
         f"{work['batched_accesses_per_s']:,.0f} accesses/s, {work['batched_s'] * 1e3:.1f} ms", "",
         f"{bound / work['batched_s']:.0%} of the bound", ""],
        ["demo workload, `access` + `put` per key",
         f"{work['per_call_accesses_per_s']:,.0f} accesses/s, {work['per_call_s'] * 1e3:.1f} ms", "",
         f"{bound / work['per_call_s']:.0%} of the bound", ""],
    ]
    return {f"batches-{results['backend']}": {"columns": ["measure", "BufferCache", "peer in the same run", "ratio",
                                                          "floor"], "rows": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="host", choices=("host", "vulkan"))
    parser.add_argument("--rounds", type=int, default=5)
    add_json_argument(parser)
    args = parser.parse_args()
    results = {"backend": args.backend, "bulk": bulk(args.backend, args.rounds),
               "leases": leases(args.backend, args.rounds),
               "workload": workload(args.backend, max(1, args.rounds // 2))}
    results["tables"] = table(results)
    write_json(args.json, "bench_batches", results)


if __name__ == "__main__":
    main()
