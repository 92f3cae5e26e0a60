"""The demo's workload, side by side: BufferCache per call against the few lines a user would write.

The workload is ``vyrecache demo``'s (KV blocks of 16 KiB, a partial last block per chain and one
partial decode block per request, host 48 MiB + device 8 MiB, promotion at the third access).
Every contestant serves the same access stream in one process, interleaved round by round, with
its payloads made before timing:

* ``OrderedDict``: two OrderedDicts of numpy arrays with the same rules (promote at 3 accesses,
  the fast tier's victims spill into the slow one, the slow tier's leave);
* ``BufferCache host`` / ``BufferCache vulkan``: ``access(key)``, and ``put(key, block)`` on a
  miss, per call;
* ``... fill_many``: the same caches with one ``fill_many(keys, blocks)`` per request (every
  access of the request, and the puts of its misses, in one call).

It prints accesses/s, hit ratio, bytes put, bytes copied to make room and the write
amplification, and the memcpy bound: the time ``np.copyto`` takes for the bytes put, in the same
sizes.  ``--json PATH`` also writes the figures, with BENCHMARKS.md's tables ``workload`` (and
``workload-scaling`` with ``--scaling``).
Run: ``python benchmarks/bench_workload.py [--requests N] [--rounds R] [--headroom S ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import numpy as np

import vyrecache as vc
from vyrecache.cli.workload import KvWorkload

from harness import add_json_argument, best_of, interleaved_best, write_json

HOST, DEVICE, BLOCK, THRESHOLD = 48 << 20, 8 << 20, 16 << 10, 3


class OrderedDictPeer:
    """Two LRU tiers of numpy arrays: the slow one takes puts, the fast one promoted entries."""

    def __init__(self, slow: int, fast: int) -> None:
        self.tiers = [OrderedDict(), OrderedDict()]
        self.capacity = [slow, fast]
        self.used = [0, 0]
        self.frequency: dict[int, int] = {}

    def _make_room(self, tier: int, size: int) -> None:
        entries = self.tiers[tier]
        while self.used[tier] + size > self.capacity[tier] and entries:
            key, value = entries.popitem(last=False)
            self.used[tier] -= value.nbytes
            if tier == 1 and self.used[0] + value.nbytes <= self.capacity[0] or tier == 1:
                self._make_room(0, value.nbytes)
                self.tiers[0][key] = value
                self.used[0] += value.nbytes
            else:
                del self.frequency[key]

    def access(self, key: int) -> int:
        for tier in (1, 0):
            entries = self.tiers[tier]
            if key in entries:
                entries.move_to_end(key)
                count = self.frequency[key] = self.frequency[key] + 1
                if tier == 0 and count >= THRESHOLD:
                    value = entries.pop(key)
                    self.used[0] -= value.nbytes
                    self._make_room(1, value.nbytes)
                    self.tiers[1][key] = value
                    self.used[1] += value.nbytes
                return tier
        return -1

    def put(self, key: int, data: np.ndarray) -> None:
        self._make_room(0, data.nbytes)
        self.tiers[0][key] = data.copy()
        self.used[0] += data.nbytes
        self.frequency[key] = 0


def serve(cache, keys: list[int], blocks: list[np.ndarray]) -> list[int]:
    """Serve every access (the timed part): the tier each access found, -1 for a miss."""
    tiers = []
    for key, block in zip(keys, blocks):
        tier = cache.access(key)
        if tier < 0:
            cache.put(key, block)
        tiers.append(tier)
    return tiers


def serve_requests(cache, requests: list[tuple[np.ndarray, list[np.ndarray]]]) -> list[np.ndarray]:
    """serve() with one fill_many per request: each request's tiers found."""
    found = []
    fill = cache.fill_many
    for keys, blocks in requests:
        found.append(fill(keys, blocks))
    return found


def memcpy_bound(blocks: list[np.ndarray]) -> float:
    """Seconds np.copyto takes to copy every block once into an arena (its pages touched first)."""
    arena = np.ones(sum(block.nbytes for block in blocks), dtype=np.uint8)

    def copy_all() -> None:
        offset = 0
        for block in blocks:
            np.copyto(arena[offset:offset + block.nbytes], block)
            offset += block.nbytes
    return best_of(copy_all, 1)


def race(contestants: dict, headroom: float, keys: list[int], blocks: list[np.ndarray],
         requests: list[tuple[np.ndarray, list[np.ndarray]]], rounds: int) -> tuple[dict, dict, list]:
    """Every contestant's best time over `rounds` interleaved rounds, each run on a fresh cache made
    untimed; the facts of each (hit ratio, bytes put and copied) and the blocks the last one missed."""
    facts: dict[str, dict] = {}
    missed: list[np.ndarray] = []
    timed: list[tuple] = []           # the run just timed: (name, cache, what it found)

    def settle() -> None:
        """The facts of the run just timed, and its cache closed: untimed, before the next run."""
        while timed:
            name, cache, found = timed.pop()
            hit_mask = ((np.concatenate(found) >= 0).tolist() if name.endswith("fill_many")
                        else [tier >= 0 for tier in found])
            missed[:] = [block for block, hit in zip(blocks, hit_mask) if not hit]
            facts[name] = {"hit_ratio": sum(hit_mask) / len(keys)}
            if isinstance(cache, vc.BufferCache):
                facts[name].update(put_bytes=cache.puts_bytes,
                                   copied_bytes=sum(tier["cleaning_bytes"] for tier in cache.counters()),
                                   write_amplification=cache.write_amplification())
                cache.close()

    def contestant(name: str, make):
        made: list = []

        def fresh() -> None:
            settle()
            made[:] = [make(headroom)]

        def run() -> None:
            cache = made.pop()
            found = serve_requests(cache, requests) if name.endswith("fill_many") else serve(cache, keys, blocks)
            timed.append((name, cache, found))
        return fresh, run

    pairs = [contestant(name, make) for name, make in contestants.items()]
    seconds = interleaved_best([run for _, run in pairs], rounds, before=[fresh for fresh, _ in pairs])
    settle()
    return dict(zip(contestants, seconds)), facts, missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--headroom", type=float, nargs="*", default=[vc.buffer_cache.DEFAULT_HEADROOM])
    parser.add_argument("--no-vulkan", action="store_true")
    parser.add_argument("--scaling", action="store_true", help="also time access() at 4,096 and 1,000,000 entries")
    add_json_argument(parser)
    args = parser.parse_args()
    workload = KvWorkload(4096, BLOCK, seed=0)
    drawn = [workload.batch(1) for _ in range(args.requests)]
    keys_array = np.concatenate([request_keys for request_keys, _ in drawn])
    sizes = np.concatenate([request_sizes for _, request_sizes in drawn])
    keys = keys_array.tolist()
    source = np.random.default_rng(0).integers(0, 256, BLOCK, dtype=np.uint8)
    blocks = [source[:size] for size in sizes.tolist()]
    requests = [(request_keys, [source[:size] for size in request_sizes.tolist()])
                for request_keys, request_sizes in drawn]
    tiers = [vc.CacheTier("host", HOST, "host"), vc.CacheTier("device", DEVICE, "device")]
    contestants = {"OrderedDict": lambda headroom: OrderedDictPeer(HOST, DEVICE)}
    backends = ["host"] + ([] if args.no_vulkan else ["vulkan"])
    for backend in backends:
        contestants[f"BufferCache {backend}"] = (
            lambda headroom, backend=backend: vc.BufferCache(tiers, backend=backend, headroom=headroom))
        contestants[f"BufferCache {backend} fill_many"] = contestants[f"BufferCache {backend}"]
    print(f"workload: {len(requests):,} requests, {len(keys):,} accesses, blocks of {BLOCK >> 10} KiB, host {HOST >> 20} MiB + "
          f"device {DEVICE >> 20} MiB")
    results: dict = {"requests": len(requests), "accesses": len(keys), "rounds": args.rounds, "headroom": {}}
    table_rows = []
    for headroom in args.headroom:
        best, facts, missed = race(contestants, headroom, keys, blocks, requests, args.rounds)
        bound = memcpy_bound(missed)
        peer = best["OrderedDict"]
        print(f"\nheadroom {headroom}:")
        for name, seconds_ in best.items():
            fact = facts[name]
            line = f"hit {fact['hit_ratio']:.3f}"
            if "put_bytes" in fact:
                line += (f", put {fact['put_bytes'] / 2**20:,.0f} MiB, copied {fact['copied_bytes'] / 2**20:,.0f} MiB, "
                         f"WA {fact['write_amplification']:.3f}")
            print(f"  {name:<30} {len(keys) / seconds_:>12,.0f} accesses/s  {peer / seconds_:5.2f}x peer  "
                  f"{bound / seconds_:4.0%} of memcpy   {line}")
            row = [f"{headroom:.2f}", name.replace("fill_many", "`fill_many`"), f"{len(keys) / seconds_:,.0f}",
                   f"{peer / seconds_:.2f}x", f"{bound / seconds_:.0%}", f"{fact['hit_ratio']:.3f}"]
            if "put_bytes" in fact:
                row += [f"{fact['put_bytes'] / 2**20:,.0f}", f"{fact['copied_bytes'] / 2**20:,.0f}",
                        f"{fact['write_amplification']:.3f}"]
            else:
                row += ["", "", ""]
            table_rows.append(row)
        print(f"  memcpy bound (np.copyto of the bytes put, in the same sizes): {bound * 1e3:.1f} ms, "
              f"{len(keys) / bound:,.0f} accesses/s")
        table_rows.append([f"{headroom:.2f}", "memcpy bound: `np.copyto` of the bytes put", f"{len(keys) / bound:,.0f}",
                           f"{peer / bound:.2f}x", "100%", "", "", "", ""])
        results["headroom"][str(headroom)] = {"seconds": best, "facts": facts, "memcpy_bound_s": bound}
    tables = {"workload": {"columns": ["headroom", "contestant", "accesses/s", "/ OrderedDict", "of the memcpy bound",
                                       "hit ratio", "put MiB", "copied by cleaning MiB", "write amplification"],
                           "rows": table_rows}}
    if args.scaling:
        print("\nscaling:")
        costs = scaling()
        results["scaling_ns"] = {str(count): cost for count, cost in costs.items()}
        base = next(iter(costs.values()))
        tables["workload-scaling"] = {"columns": ["entries", "`access()` hit ns", "/ 4,096 entries"],
                                      "rows": [[f"{count:,}", f"{cost:.1f}", f"{cost / base:.2f}x"]
                                               for count, cost in costs.items()]}
    results["tables"] = tables
    write_json(args.json, "bench_workload", results)


def scaling(counts=(4096, 1_000_000), accesses=200_000) -> dict[int, float]:
    """ns per BufferCache.access() on hits against the number of 64-byte entries (best of 3)."""
    rng = np.random.default_rng(1)
    costs = {}
    for count in counts:
        with vc.BufferCache([vc.CacheTier("host", count * 64, "host")], backend="host") as cache:
            cache.put_many(np.arange(count, dtype=np.uint64), np.zeros((count, 64), dtype=np.uint8))
            keys = rng.integers(0, count, accesses).tolist()

            def hits(access=cache.access, keys=keys) -> None:
                for key in keys:
                    access(key)
            costs[count] = best_of(hits, 3) / accesses * 1e9
    base = costs[counts[0]]
    for count, cost in costs.items():
        print(f"  access() hit, {count:>9,} entries: {cost:6.1f} ns ({cost / base:.2f}x)")
    return costs


if __name__ == "__main__":
    main()
