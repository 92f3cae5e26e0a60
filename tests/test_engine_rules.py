"""The engine's rules beyond the original Rust TieredCache's: events, granularity, pins, policies, batches, memory."""

import threading
import tracemalloc

import numpy as np
import pytest

import vyrecache as vc
from helpers import heat, heat_and_promote, make
from vyrecache._core.engine import EV_EVICT, EV_INSERT, EV_LIFT, EV_PLACE, EV_REMOVE


def events(cache):
    return [(int(e["kind"]), int(e["key"]), int(e["src_tier"]), int(e["dst_tier"]))
            for e in cache.events()]


def test_promote_into_a_full_tier_logs_lift_lift_place_place():
    # docs/DESIGN.md's example: K from tier 1 to a full tier 2 whose coldest entry is V.
    cache = make(100, 100, 100)
    key_v, key_k = 1, 2
    cache.insert(key_v, 100)
    heat_and_promote(cache, key_v)
    cache.promote(key_v)
    cache.insert(key_k, 100)
    heat_and_promote(cache, key_k)
    cache.record_events = True
    cache.promote(key_k)
    assert events(cache) == [(EV_LIFT, key_k, 1, 2), (EV_LIFT, key_v, 2, 1),
                             (EV_PLACE, key_v, 2, 1), (EV_PLACE, key_k, 1, 2)]
    slots = cache.events()["slot"].tolist()
    assert slots[0] == slots[3] and slots[1] == slots[2]    # an entry keeps its slot when moved
    cache.check()


def test_a_spill_that_cannot_be_placed_is_an_eviction():
    cache = make(100, 100)
    cache.insert(1, 100)
    cache.pin(1)                            # tier 0 cannot take anything
    cache.insert(2, 100)                    # lands in tier 1
    cache.record_events = True
    cache.insert(3, 50)                     # tier 0 is pinned full: tier 1, where 2 must go
    assert events(cache) == [(EV_EVICT, 2, 1, -1), (EV_INSERT, 3, -1, 1)]


def test_replacement_logs_remove_then_insert_and_slots_stay_readable():
    cache = make(100)
    cache.record_events = True
    cache.insert(1, 10)
    log = cache.events()
    assert events(cache) == [(EV_INSERT, 1, -1, 0)]
    old_slot = int(log["slot"][0])
    cache.insert(1, 20)
    log = cache.events()
    assert events(cache) == [(EV_REMOVE, 1, 0, -1), (EV_INSERT, 1, -1, 0)]
    assert int(log["slot"][0]) == old_slot           # the freed slot is named...
    assert int(log["slot"][1]) != old_slot           # ...and not reused within the operation
    assert log["size"].tolist() == [10, 20]


def test_batch_calls_log_every_event_of_the_batch():
    cache = make(2)
    cache.record_events = True
    cache.access_many(np.array([1, 2, 3], dtype=np.uint64), 1)
    assert events(cache) == [(EV_INSERT, 1, -1, 0), (EV_INSERT, 2, -1, 0),
                             (EV_EVICT, 1, 0, -1), (EV_INSERT, 3, -1, 0)]


def test_granularity_charges_rounded_sizes_and_reports_real_ones():
    cache = make(64, granularity=16)
    cache.insert(1, 1)
    cache.insert(2, 17)
    assert cache.tiers[0].used == 48
    assert cache.get(2).size == 17 and cache.stats(2).size == 17
    cache.insert(3, 20)                     # 48 + 32 > 64: key 1 (coldest) goes
    assert 1 not in cache and cache.tiers[0].used == 64
    cache.check()


def test_spill_moves_victims_down_keeping_statistics():
    cache = make(100, 10)
    cache.insert(1, 10)
    heat_and_promote(cache, 1)
    cache.insert(2, 10)
    heat_and_promote(cache, 2, 4)
    assert cache.get(1).tier == 0 and cache.stats(1).frequency == 3
    assert cache.counters()[0]["spills"] == 1


def test_pinned_entries_are_never_victims_nor_moved():
    cache = make(30, 10)
    cache.insert(1, 10)
    cache.insert(2, 10)
    cache.pin(1)
    cache.pin(1)                            # pins nest
    cache.unpin(1)
    heat(cache, 1)
    cache.promote(1)                        # pinned: stays
    assert cache.get(1).tier == 0
    cache.insert(3, 10)
    cache.insert(4, 10)                     # victim is 2 (coldest unpinned), not 1
    assert 1 in cache and 2 not in cache
    assert cache.evict_coldest() == 3
    assert cache.tiers[0].pinned == 10
    cache.unpin(1)
    assert cache.tiers[0].pinned == 0
    cache.check()


def test_evict_coldest_skips_fully_pinned_tiers_and_returns_none_when_nothing_can_go():
    cache = make(10, 10)
    assert cache.evict_coldest() is None
    cache.insert(1, 10)
    cache.pin(1)
    assert cache.evict_coldest() is None
    assert cache.evict_from_tier(0) is None


def test_evict_from_tier_spills_like_any_victim():
    cache = make(20, 10)
    cache.insert(1, 10)
    heat_and_promote(cache, 1)
    cache.record_events = True
    assert cache.evict_from_tier(1) == 1
    assert events(cache) == [(EV_LIFT, 1, 1, 0), (EV_PLACE, 1, 1, 0)]


def test_oversized_promote_and_demote_are_no_ops():
    cache = make(10, 100, 5)
    cache.insert(1, 50)                     # lands in tier 1
    heat_and_promote(cache, 1)
    cache.demote(1)
    assert cache.get(1).tier == 1


def test_on_evict_runs_after_the_operation_with_the_lock_free():
    seen = []

    def on_evict(entry):
        seen.append((entry, len(cache), cache.get(entry.key)))
        if entry.key < 100:
            cache.insert(100 + entry.key, 1)    # mutating from the callback is allowed

    cache = make(2, on_evict=on_evict)
    cache.insert(1, 1)
    cache.insert(2, 1)
    cache.insert(3, 1)
    assert seen[0] == (vc.CacheEntry(1, 1, 0), 2, None)
    cache.check()


class EveryOther(vc.TierPolicy):
    def __init__(self):
        self.calls = 0

    def should_promote(self, key, stats):
        return key % 2 == 0

    def eviction_candidate(self, tier, cache):
        self.calls += 1
        keys = cache.tier_keys(tier)
        return max(keys) if keys else None   # evict the largest key


def test_a_python_policy_decides_promotion_and_victims():
    policy = EveryOther()
    cache = make(30, 100, policy=policy)
    for key in (5, 1, 3):
        cache.insert(key, 10)
    cache.insert(2, 10)
    assert 5 not in cache and policy.calls >= 1
    assert cache.access(2, 10) == 0 and cache.get(2).tier == 1
    assert cache.access(3, 10) == 0 and cache.get(3).tier == 0


@pytest.mark.parametrize("answer", [None, 999, "x", -1])
def test_an_unusable_policy_answer_falls_back_to_the_coldest(answer):
    class Odd(vc.TierPolicy):
        def eviction_candidate(self, tier, cache):
            return answer

    cache = make(20, policy=Odd())
    cache.insert(1, 10)
    cache.insert(2, 10)
    cache.insert(3, 10)
    assert 1 not in cache and 2 in cache


def test_mutating_from_a_policy_raises_and_a_policy_error_surfaces_after_the_operation():
    class Meddler(vc.TierPolicy):
        def eviction_candidate(self, tier, cache):
            cache.get(1)                    # reads are fine
            cache.insert(50, 1)

    cache = make(20, policy=Meddler())
    cache.insert(1, 10)
    cache.insert(2, 10)
    with pytest.raises(vc.CacheError, match="policy callback"):
        cache.insert(3, 10)
    assert 3 in cache and 1 not in cache and 50 not in cache
    cache.check()


def test_batches_accept_read_only_and_strided_arrays():
    cache = make(1000, 100)
    keys = np.arange(20, dtype=np.uint64)[::2]
    keys.flags.writeable = False
    assert cache.access_many(keys, 1).tolist() == [-1] * 10
    assert cache.access_many(keys, np.ones(10, dtype=np.uint64)).tolist() == [0] * 10
    assert cache.get_tiers(np.array([0, 1], dtype=np.uint64)).tolist() == [0, -1]
    assert cache.record_access_many(keys) == 10
    assert cache.record_access_many(keys) == 10          # frequency 3: ready to promote
    assert cache.promote_many(keys).tolist() == [1] * 10
    assert cache.demote_many(np.array([0, 99], dtype=np.uint64)).tolist() == [0, -1]
    assert cache.insert_many([7, 8], [5, 6]).tolist() == [0, 0]


def test_batch_errors_name_the_index_and_keep_earlier_work():
    cache = make(10)
    with pytest.raises(vc.EntryTooLargeError, match=r"keys\[1\]"):
        cache.access_many(np.array([1, 2, 3], dtype=np.uint64), np.array([1, 11, 1], dtype=np.uint64))
    assert 1 in cache and 2 not in cache and 3 not in cache


def test_counters_have_stable_names_and_reset():
    cache = make(10, 10)
    cache.access(1, 5)
    cache.access(1, 5)
    counters = cache.counters()
    assert list(counters[0]) == ["hits", "misses", "inserts", "evictions", "promotions",
                                 "demotions", "spills", "bytes_in", "bytes_out", "rejections"]
    assert (counters[0]["hits"], counters[0]["misses"], counters[0]["inserts"]) == (1, 1, 1)
    cache.reset_counters()
    assert all(v == 0 for row in cache.counters() for v in row.values())
    assert "hits" in cache.report()


def test_iteration_len_contains_and_views():
    cache = make(100, 100)
    for key in range(5):
        cache.insert(key, 1)
    assert len(cache) == 5 and 3 in cache and 9 not in cache
    assert sorted(cache) == list(range(5))
    assert cache.tier_keys(0) == [4, 3, 2, 1, 0]
    assert (cache.tiers[0].name, cache.tiers[0].capacity, cache.tiers[0].used,
            cache.tiers[0].count) == ("t0", 100, 5, 5)
    assert cache.coldest_key(0) == 0


def test_entries_compare_by_value_and_are_immutable():
    assert vc.CacheEntry(1, 2, 0) == vc.CacheEntry(1, 2, 0) != vc.CacheEntry(1, 2, 1)
    with pytest.raises(AttributeError):
        vc.CacheEntry(1, 2, 0).key = 5
    assert vc.AccessStats(1, 2, 3) == vc.AccessStats(1, 2, 3)


@pytest.mark.parametrize("n", [10_000, 100_000, 131_073, 1_000_000])
def test_sizeof_is_at_most_64_bytes_per_entry_and_tracemalloc_agrees(n):
    # The slot array grows by 1/8 and the map doubles, so the figure per entry depends on where
    # the count falls; 131,073 is just past a doubling of the map, its worst point.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = make(n)
        cache.insert_many(np.arange(n, dtype=np.uint64), 1)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == n
    assert cache.sizeof() / n <= 64
    assert abs(traced - cache.sizeof()) < 0.05 * cache.sizeof() + 4096


def test_threads_sharing_one_cache_lose_no_update():
    cache = make(5000, 500)
    per_thread, threads = 3000, 4
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in range(per_thread):
                key = int(rng.integers(0, 2000))
                op = i % 5
                if op == 0:
                    cache.access_many(rng.integers(0, 2000, 64).astype(np.uint64), 3)
                elif op == 1:
                    cache.record_access(key)
                elif op == 2:
                    cache.insert(key, int(rng.integers(1, 8)))
                else:
                    cache.access(key, 2)
        except Exception as error:          # pragma: no cover - reported below
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert not errors
    cache.check()
    # No lost update: every recorded access bumped the tick exactly once.
    hits = sum(row["hits"] for row in cache.counters())
    assert hits > 0
    counted = cache.counters()
    assert sum(r["inserts"] for r in counted) >= len(cache)


def test_record_access_ticks_are_never_lost_across_threads():
    cache = make(100)
    cache.insert(1, 1)
    per_thread = 5000

    def worker():
        for _ in range(per_thread):
            cache.record_access(1)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    keys = np.ones(1000, dtype=np.uint64)
    for _ in range(5):
        cache.record_access_many(keys)      # nogil batches race the GIL-holding calls
    for thread in workers:
        thread.join()
    assert cache.stats(1).frequency == 4 * per_thread + 5000
    cache.check()


class _LruInPython(vc.TierPolicy):
    """LruPolicy's rules through the Python-policy path, which never prefetches."""

    def should_promote(self, key, stats):
        return stats.frequency >= vc.LruPolicy.DEFAULT_THRESHOLD

    def eviction_candidate(self, tier, cache):
        return None


@pytest.mark.parametrize("call", ["access_many", "insert_many"])
def test_batch_call_on_tables_large_enough_to_prefetch_matches_the_unprefetched_path(call):
    # The first call leaves the tables past the prefetching threshold (1 MiB); during the second
    # the map grows, so the prefetched home buckets are computed again mid-call.
    rng = np.random.default_rng(5)
    universe = rng.integers(0, 2**64, 60_000, dtype=np.uint64)
    keys = universe[rng.integers(0, universe.size, 150_000)]
    tiers = [vc.CacheTier("host", 40_000), vc.CacheTier("vram", 5_000)]
    batched, reference = vc.TieredCache(tiers), vc.TieredCache(tiers, policy=_LruInPython())
    for cache in (batched, reference):
        cache.insert_many(universe[:30_000], 1)
    assert batched.sizeof() >= 1 << 20
    assert getattr(batched, call)(keys, 1).tolist() == getattr(reference, call)(keys, 1).tolist()
    assert batched.get_tiers(universe).tolist() == reference.get_tiers(universe).tolist()
    assert batched.counters() == reference.counters()
    assert batched.record_access_many(universe) == reference.record_access_many(universe)
    assert [batched.stats(int(key)) for key in universe[::97]] == [
        reference.stats(int(key)) for key in universe[::97]]
    # Batches shorter than the prefetcher's reach (24 keys ahead), where it starts near the end.
    for length in range(40):
        short = keys[length * 40:length * 41]
        assert batched.access_many(short, 1).tolist() == reference.access_many(short, 1).tolist()
    assert batched.counters() == reference.counters()
    batched.check()
