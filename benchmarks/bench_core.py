"""Side-by-side benchmark of the core engine against Python's usual caches, in one process.

Workload: Zipf(0.99) over 100,000 random 63-bit keys, 1,000,000 accesses, entries of equal size;
vyrecache has tier 0 = 10,000 entries and tier 1 = 2,000, the peers one LRU of 12,000.  Each
vyrecache access is ``access(key, size)``; each peer access is a get, plus a set on a miss.

Prints ns/op (best of --repeat runs), hit ratio and every peer's time relative to vyrecache's
per-call ``access``; then an evicting insert, the cost at 10,000 vs 1,000,000 live entries, and
the engine's memory per entry.  ``--json PATH`` also writes them, with the tables of BENCHMARKS.md
(``core-contestants``, ``core-costs``, ``core-memory``).
Run: ``python benchmarks/bench_core.py [--quick] [--repeat N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import platform
import subprocess
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

import vyrecache as vc

from harness import add_json_argument, best_of, cpu_model, interleaved_best, write_json

TIER0, TIER1 = 10_000, 2_000
CAPACITY = TIER0 + TIER1


def zipf_trace(universe: int, accesses: int, skew: float, seed: int) -> np.ndarray:
    """`accesses` keys drawn with P(rank r) ~ 1/r**skew from `universe` random 63-bit keys."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, universe, dtype=np.uint64)
    weights = np.cumsum(1.0 / np.arange(1, universe + 1) ** skew)
    ranks = np.searchsorted(weights, rng.random(accesses) * weights[-1])
    return keys[np.minimum(ranks, universe - 1)]


# ---- one function per contestant: run(keys, count_hits) -> hits, or None ----
#
# The timed runs pass count_hits=False: a `hits += 1` in the loop allocates an int per hit once
# past 256, a cost per access that is the benchmark's bookkeeping, not the cache's.  The hit
# ratio comes from one more, untimed, run that counts (or from the cache's own statistics where
# it keeps them).

def run_lru_cache(keys: list, count_hits: bool) -> int:
    @functools.lru_cache(maxsize=CAPACITY)
    def load(key):
        return 1
    for key in keys:
        load(key)
    return load.cache_info().hits


def run_get_set(get, set_, keys: list, count_hits: bool) -> int | None:
    """A get per key, and a set on a miss: the usual way to use a mapping as a cache."""
    if not count_hits:
        for key in keys:
            if get(key) is None:
                set_(key, 1)
        return None
    hits = 0
    for key in keys:
        if get(key) is None:
            set_(key, 1)
        else:
            hits += 1
    return hits


def run_mapping(cache, keys: list, count_hits: bool) -> int | None:
    return run_get_set(cache.get, cache.__setitem__, keys, count_hits)


def run_cachebox(cache, keys: list, count_hits: bool) -> int | None:
    return run_get_set(cache.get, cache.insert, keys, count_hits)


def new_cache(tier0: int = TIER0, tier1: int = TIER1) -> vc.TieredCache:
    return vc.TieredCache([vc.CacheTier("host", tier0), vc.CacheTier("vram", tier1)])


def cache_hits(cache: vc.TieredCache) -> int:
    return sum(tier["hits"] for tier in cache.counters())


def run_vyrecache(keys: list, count_hits: bool = False) -> int:
    cache = new_cache()
    access = cache.access
    for key in keys:
        access(key, 1)
    return cache_hits(cache)


def run_vyrecache_batch(array: np.ndarray, count_hits: bool = False) -> int:
    cache = new_cache()
    cache.access_many(array, 1)
    return cache_hits(cache)


def packed_keys(array: np.ndarray) -> np.ndarray:
    """The same trace with each key replaced by its index << 32, as keys that pack a small id
    in the high half look: a hash map whose fingerprint bits come from the low half would
    see them all alike."""
    return np.unique(array, return_inverse=True)[1].astype(np.uint64) << np.uint64(32)


def peers() -> list[tuple[str, object]]:
    import cachebox
    import cachetools
    import lru
    return [
        ("dict get/set (no eviction)", lambda keys, count: run_mapping({}, keys, count)),
        ("functools.lru_cache", run_lru_cache),
        ("cachetools.LRUCache",
         lambda keys, count: run_mapping(cachetools.LRUCache(CAPACITY), keys, count)),
        ("lru-dict LRU", lambda keys, count: run_mapping(lru.LRU(CAPACITY), keys, count)),
        ("cachebox.LRUCache",
         lambda keys, count: run_cachebox(cachebox.LRUCache(CAPACITY), keys, count)),
    ]


def all_hit_workload(live: int, accesses: int, seed: int) -> tuple[vc.TieredCache, np.ndarray]:
    """A cache holding `live` entries and a Zipf(0.99) trace of hits over a random order."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, live, dtype=np.uint64)
    cache = vc.TieredCache([vc.CacheTier("host", live)])
    cache.insert_many(keys, 1)
    weights = np.cumsum(1.0 / np.arange(1, live + 1) ** 0.99)
    order = keys[rng.permutation(live)]      # Zipf ranks over a random order of the keys
    ranks = np.searchsorted(weights, rng.random(accesses) * weights[-1])
    return cache, order[np.minimum(ranks, live - 1)]


def scale_costs(sizes: tuple[int, ...], accesses: int, repeat: int, seed: int) -> list:
    """(ns per access() call, ns per access_many key) at each number of live entries, all hits,
    timed interleaved."""
    runs = []
    for live in sizes:
        cache, trace = all_hit_workload(live, accesses, seed)
        trace_list, access = trace.tolist(), cache.access

        def per_call(trace_list=trace_list, access=access):
            for key in trace_list:
                access(key, 1)
        runs += [per_call, lambda cache=cache, trace=trace: cache.access_many(trace, 1)]
    seconds = interleaved_best(runs, repeat)
    return [(seconds[2 * i] / accesses * 1e9, seconds[2 * i + 1] / accesses * 1e9)
            for i in range(len(sizes))]


def memory_latency(sizes_mib: tuple[int, ...]) -> dict[int, float] | None:
    """ns per dependent load over blocks of each size (benchmarks/pointer_chase.c), or None
    without a C compiler."""
    source = Path(__file__).with_name("pointer_chase.c")
    with tempfile.TemporaryDirectory() as scratch:
        program = Path(scratch) / "pointer_chase"
        try:
            subprocess.run(["cc", "-O2", "-o", str(program), str(source)], check=True,
                           capture_output=True)
            out = subprocess.run([str(program), *map(str, sizes_mib)], check=True,
                                 capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
    return {int(mib): float(ns) for mib, ns in (line.split() for line in out.splitlines())}


def evicting_insert_cost(inserts: int, repeat: int) -> float:
    """ns per insert() of a new key into a full tier (each one evicts), best of `repeat`, each
    on a fresh full cache made untimed."""
    fresh = np.arange(TIER0, TIER0 + inserts, dtype=np.uint64).tolist()
    full: list[vc.TieredCache] = []

    def fill() -> None:
        cache = vc.TieredCache([vc.CacheTier("host", TIER0)])
        cache.insert_many(np.arange(TIER0, dtype=np.uint64), 1)
        full[:] = [cache]

    def run() -> None:
        insert = full[0].insert
        for key in fresh:
            insert(key, 1)
    return best_of(run, repeat, before=fill) / inserts * 1e9


def memory_per_entry(count: int) -> tuple[float, float]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = vc.TieredCache([vc.CacheTier("host", count)])
        cache.insert_many(np.arange(count, dtype=np.uint64), 1)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return cache.sizeof() / count, traced / count


def markdown_name(name: str) -> str:
    """A contestant's name as BENCHMARKS.md writes it (method names as code)."""
    return name.strip().replace("access_many()", "`access_many()`").replace(" access()", " `access()`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 accesses, one repeat")
    parser.add_argument("--repeat", type=int, default=5)
    add_json_argument(parser)
    args = parser.parse_args()
    accesses = 100_000 if args.quick else 1_000_000
    repeat = 1 if args.quick else args.repeat

    trace = zipf_trace(100_000, accesses, 0.99, seed=7)
    trace_list = trace.tolist()
    print(f"machine: {cpu_model()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"workload: Zipf(0.99) over 100,000 keys, {accesses:,} accesses, capacity {CAPACITY:,} "
          f"entries; best of {repeat}\n")

    contestants = peers() + [("vyrecache access() per call", run_vyrecache),
                             ("vyrecache access_many() per key", run_vyrecache_batch),
                             ("  the same, keys index << 32", run_vyrecache_batch)]
    inputs = ([trace_list] * (len(contestants) - 2)) + [trace, packed_keys(trace)]
    seconds = interleaved_best([functools.partial(run, keys, False)
                                for (_, run), keys in zip(contestants, inputs)], repeat)
    rows = [(name, elapsed / accesses * 1e9, run(keys, True) / accesses)
            for (name, run), keys, elapsed in zip(contestants, inputs, seconds)]
    per_call = rows[-3][1]

    print(f"{'contestant':34} {'ns/op':>8} {'hit ratio':>10} {'time / vyrecache access()':>26}")
    for name, ns, ratio in rows:
        print(f"{name:34} {ns:8.1f} {ratio:10.3f} {ns / per_call:25.2f}x")
    tables = {"core-contestants": {
        "columns": ["contestant", "ns/op", "hit ratio", "time / vyrecache `access()`"],
        "rows": [[markdown_name(name), f"{ns:.1f}", f"{ratio:.3f}", f"{ns / per_call:.2f}x"]
                 for name, ns, ratio in rows]}}

    insert_ns = evicting_insert_cost(accesses, repeat)
    print(f"\nevicting insert() per call: {insert_ns:.1f} ns")

    (small_call, small_batch), (large_call, large_batch) = scale_costs(
        (10_000, 1_000_000), accesses, repeat, seed=3)
    print(f"all-hit access() at 10,000 live entries: {small_call:.1f} ns/call, "
          f"{small_batch:.1f} ns/key batched")
    print(f"all-hit access() at 1,000,000 live entries: {large_call:.1f} ns/call "
          f"({large_call / small_call:.2f}x), {large_batch:.1f} ns/key batched "
          f"({large_batch / small_batch:.2f}x)")
    costs = [["evicting `insert()`, ns per call", f"{insert_ns:.1f}", ""],
             ["all hits at 10,000 live entries, `access()` ns per call", f"{small_call:.1f}", ""],
             ["all hits at 10,000 live entries, `access_many()` ns per key", f"{small_batch:.1f}", ""],
             ["all hits at 1,000,000 live entries, `access()` ns per call", f"{large_call:.1f}",
              f"{large_call / small_call:.2f}x"],
             ["all hits at 1,000,000 live entries, `access_many()` ns per key", f"{large_batch:.1f}",
              f"{large_batch / small_batch:.2f}x"]]
    latency = memory_latency((1, 8, 64))
    if latency is None:
        print("dependent-load latency: skipped (no C compiler to build pointer_chase.c)")
    else:
        print("dependent-load latency (pointer_chase.c): "
              + ", ".join(f"{mib} MiB {ns:.0f} ns" for mib, ns in latency.items()))
        # At 1,000,000 entries the map (8 MiB) and the slots (45 MiB) are past the L2 cache: a
        # call's bucket read and then its slot read are two such loads, one after the other.
        bound = small_call + latency[8] + latency[64]
        print(f"  a call at 1,000,000 entries: the 10,000-entry cost + about two 8-64 MiB "
              f"loads = {bound:.0f} ns if none were cached")
        costs += [[f"dependent-load latency over {mib} MiB (pointer_chase.c), ns", f"{ns:.0f}", ""]
                  for mib, ns in latency.items()]
        costs.append(["a call at 1,000,000 entries if no load were cached (the 10,000-entry call + an "
                      "8 MiB and a 64 MiB load), ns", f"{bound:.0f}", ""])
    tables["core-costs"] = {"columns": ["measure", "value", "/ 10,000 live entries"], "rows": costs}

    print("\nengine memory per entry (sizeof() / tracemalloc):")
    memory = []
    for count in (10_000, 100_000, 1_000_000):
        by_sizeof, by_trace = memory_per_entry(count)
        print(f"  {count:>9,} entries: {by_sizeof:6.1f} B / {by_trace:6.1f} B")
        memory.append({"entries": count, "sizeof_bytes": by_sizeof, "tracemalloc_bytes": by_trace})
    tables["core-memory"] = {"columns": ["entries", "`sizeof()` B per entry", "tracemalloc B per entry"],
                             "rows": [[f"{row['entries']:,}", f"{row['sizeof_bytes']:.1f}",
                                       f"{row['tracemalloc_bytes']:.1f}"] for row in memory]}
    write_json(args.json, "bench_core", {
        "accesses": accesses, "repeat": repeat,
        "contestants": [{"name": name.strip(), "ns_per_op": ns, "hit_ratio": ratio} for name, ns, ratio in rows],
        "evicting_insert_ns": insert_ns,
        "all_hits_ns": {"10000": {"per_call": small_call, "per_key_batched": small_batch},
                        "1000000": {"per_call": large_call, "per_key_batched": large_batch}},
        "latency_ns": None if latency is None else {str(mib): ns for mib, ns in latency.items()},
        "memory": memory, "tables": tables})


if __name__ == "__main__":
    main()
