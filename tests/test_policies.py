"""The native eviction policies: their API, admission, tiers, memory, and W-TinyLFU's checks.

Exact behaviour is pinned elsewhere: against libCacheSim on real traces
(test_policies_libcachesim.py) and against plain-Python models with pins, spills and tiers
(test_policies_model.py).  W-TinyLFU has no exact model (its sketch is hashed), so here a
state machine runs it through every call with check() after each step.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import vyrecache as vc

ALL = [vc.LruPolicy, vc.FifoPolicy, vc.ClockPolicy, vc.SievePolicy, vc.S3FifoPolicy,
       vc.ArcPolicy, vc.WTinyLfuPolicy]
NEW = ALL[1:]


def zipf_keys(n, universe=2000, seed=1, skew=1.0):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, universe + 1) ** skew
    return rng.choice(universe, size=n, p=weights / weights.sum()).astype(np.uint64)


@pytest.mark.parametrize("policy", NEW)
def test_policy_is_exported_native_and_compares_by_value(policy):
    assert getattr(vc, policy.__name__) is policy and policy.__name__ in vc.__all__
    assert policy._native
    assert policy(promote_threshold=2) == policy(promote_threshold=2)
    assert policy(promote_threshold=2) != policy(promote_threshold=3)
    assert repr(policy()).startswith(policy.__name__ + "(promote_threshold=3")
    cache = vc.TieredCache([vc.CacheTier("t", 100)], policy=policy())
    assert cache.policy_info(0)["policy"] == policy.name


@pytest.mark.parametrize("policy", NEW)
@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "3", None, True])
def test_bad_promote_threshold_names_the_value_and_the_fix(policy, bad):
    with pytest.raises(ValueError, match="promote_threshold") as raised:
        policy(promote_threshold=bad)
    assert repr(bad) in str(raised.value) and "Fix:" in str(raised.value)


@pytest.mark.parametrize("call, name", [
    (lambda: vc.S3FifoPolicy(small_ratio=1.0), "small_ratio"),
    (lambda: vc.S3FifoPolicy(small_ratio=-0.1), "small_ratio"),
    (lambda: vc.S3FifoPolicy(ghost_ratio="0.9"), "ghost_ratio"),
    (lambda: vc.S3FifoPolicy(move_threshold=0), "move_threshold"),
    (lambda: vc.S3FifoPolicy(move_threshold=4), "move_threshold"),
    (lambda: vc.WTinyLfuPolicy(window_ratio=1.0), "window_ratio"),
    (lambda: vc.WTinyLfuPolicy(window_ratio=float("nan")), "window_ratio"),
])
def test_bad_policy_parameters_name_the_value_and_the_fix(call, name):
    with pytest.raises(ValueError, match=name) as raised:
        call()
    assert "Fix:" in str(raised.value)


def test_adaptive_must_be_a_bool():
    with pytest.raises(TypeError, match="adaptive.*Fix:"):
        vc.WTinyLfuPolicy(adaptive=1)


@pytest.mark.parametrize("policy", ALL[:-1])
def test_policies_without_admission_always_store(policy):
    cache = vc.TieredCache([vc.CacheTier("t", 10)], policy=policy())
    assert all(cache.insert(key, 1) is True for key in range(50))
    assert cache.counters()[0]["rejections"] == 0
    assert len(cache) == 10


def test_wtinylfu_declines_a_cold_key_too_large_for_the_window():
    # A window of 1 byte: every entry of 10 bytes goes straight to the admission contest.
    cache = vc.TieredCache([vc.CacheTier("t", 100)], policy=vc.WTinyLfuPolicy(adaptive=False))
    assert cache.policy_info(0)["window"]["capacity"] == 1
    for key in range(10):
        assert cache.insert(key, 10) is True            # room: no contest
    for _ in range(3):
        cache.access_many(np.arange(10, dtype=np.uint64), 10)   # the residents grow popular
    assert cache.insert(99, 10) is False                # a new key, never seen before
    assert 99 not in cache and len(cache) == 10
    counters = cache.counters()[0]
    assert counters["rejections"] == 1 and counters["evictions"] == 0
    cache.check()
    for _ in range(6):
        cache.insert(98, 10)                            # declined, but seen each time
    assert 98 in cache                                  # now more popular than a resident
    cache.check()


def test_wtinylfu_access_of_a_declined_key_is_a_miss_and_stores_nothing():
    cache = vc.TieredCache([vc.CacheTier("t", 40)], policy=vc.WTinyLfuPolicy(adaptive=False))
    for key in range(4):
        cache.insert(key, 10)
        for _ in range(3):
            cache.access(key, 10)
    assert cache.access(50, 10) == -1
    assert 50 not in cache
    assert cache.counters()[0]["misses"] == 0 and cache.counters()[0]["rejections"] == 1
    result = cache.insert_many(np.array([51, 2], dtype=np.uint64), 10)
    assert result.tolist() == [-1, 0]                   # declined, then a replacement
    cache.check()


def test_wtinylfu_keeps_hot_keys_among_one_hit_wonders():
    # Every other request is a key never seen again: LRU lets them push the hot keys out,
    # the admission filter keeps them out of the main space.
    trace = np.empty(80_000, dtype=np.uint64)
    trace[0::2] = zipf_keys(40_000, universe=1000, seed=3)
    trace[1::2] = np.arange(10**6, 10**6 + 40_000, dtype=np.uint64)
    ratios = {}
    for policy in (vc.LruPolicy(), vc.WTinyLfuPolicy()):
        cache = vc.TieredCache([vc.CacheTier("t", 200)], policy=policy)
        ratios[type(policy).__name__] = float((cache.access_many(trace, 1) >= 0).mean())
        cache.check()
    assert ratios["WTinyLfuPolicy"] > ratios["LruPolicy"] + 0.05, ratios


def test_adaptive_wtinylfu_moves_its_window_and_the_fixed_one_does_not():
    trace = np.concatenate([zipf_keys(60_000, universe=5000, seed=4),
                            np.tile(np.arange(100_000, 100_600, dtype=np.uint64), 40)])
    windows = {}
    for adaptive in (False, True):
        cache = vc.TieredCache([vc.CacheTier("t", 500)],
                               policy=vc.WTinyLfuPolicy(adaptive=adaptive))
        cache.access_many(trace, 1)
        cache.check()
        windows[adaptive] = cache.policy_info(0)["window"]["capacity"]
    assert windows[False] == 5
    assert windows[True] != 5


@pytest.mark.parametrize("policy", NEW)
def test_per_call_and_batched_access_agree(policy):
    trace = zipf_keys(5000, universe=400, seed=5)
    sizes = (trace % 7 + 1).astype(np.uint64)
    one = vc.TieredCache([vc.CacheTier("slow", 300), vc.CacheTier("fast", 60)], policy=policy())
    many = vc.TieredCache([vc.CacheTier("slow", 300), vc.CacheTier("fast", 60)], policy=policy())
    per_call = [one.access(int(k), int(s)) for k, s in zip(trace, sizes)]
    assert many.access_many(trace, sizes).tolist() == per_call
    for tier in range(2):
        assert one.tier_keys(tier) == many.tier_keys(tier)
        assert one.policy_info(tier) == many.policy_info(tier)
    assert one.counters() == many.counters()
    one.check()
    many.check()


@pytest.mark.parametrize("policy", ALL)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 800), universe=st.integers(2, 120),
       sizes=st.sampled_from(["unit", "mixed"]), pinned=st.lists(st.integers(0, 60), max_size=3))
def test_misses_replaced_in_place_decide_as_the_general_path(policy, seed, length, universe, sizes,
                                                              pinned):
    # A cache with an on_evict callback logs its changes and so takes the general insert path
    # on every miss; one without replaces a full tier's victim in place.  Both must agree on
    # every result, entry, counter and policy state.  (Hypothesis shrinks the seed and length;
    # the keys themselves come skewed, as caches see them.)
    trace = zipf_keys(length, universe=universe, seed=seed)
    weights = np.ones_like(trace) if sizes == "unit" else trace % 3 + 1
    assert_in_place_agrees(policy, trace, weights, pinned, (24, 6))


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("skew", [0.8, 1.2])
@pytest.mark.parametrize("capacities", [(300,), (300, 60)])
def test_misses_replaced_in_place_decide_as_the_general_path_on_larger_tiers(policy, skew,
                                                                           capacities):
    # Tiers large enough for every segment to hold many entries, and long enough traces for
    # every ghost list to fill, and no pins (which send every miss down the general path).
    # With one tier, no promotion takes S3-FIFO's small entries away before they meet the move
    # threshold.
    trace = zipf_keys(20_000, universe=3000, seed=3, skew=skew)
    assert_in_place_agrees(policy, trace, np.ones_like(trace), [], capacities)


def assert_in_place_agrees(policy, trace, weights, pinned, capacities):
    evicted = []
    caches = [vc.TieredCache([vc.CacheTier(f"tier{index}", capacity)
                              for index, capacity in enumerate(capacities)],
                             policy=policy(promote_threshold=2), on_evict=on_evict)
              for on_evict in (None, evicted.append)]
    for cache in caches:
        for key in pinned:
            cache.insert(key, 1)
            cache.pin(key)
    half = len(trace) // 2
    for part in (slice(0, half), slice(half, None)):
        results = [cache.access_many(trace[part], weights[part]).tolist() for cache in caches]
        assert results[0] == results[1]
        for tier in range(len(capacities)):
            assert caches[0].tier_keys(tier) == caches[1].tier_keys(tier)
            assert caches[0].policy_info(tier) == caches[1].policy_info(tier)
        assert caches[0].counters() == caches[1].counters()
        for cache in caches:
            cache.check()
        for key in pinned[:1]:
            for cache in caches:
                if cache.get(key) is not None and cache.pins(key):
                    cache.unpin(key)


@pytest.mark.parametrize("policy", NEW)
def test_a_raising_on_evict_changes_no_decision_and_loses_no_victim(policy):
    # The callback runs after each operation is complete: its error reaches the caller, and the
    # cache holds what the same calls leave in a cache whose callback never raises.
    trace = zipf_keys(3000, universe=300, seed=11)
    sizes = (trace % 3 + 1).astype(np.uint64)
    reported = {"raising": [], "quiet": []}

    def raising(entry):
        reported["raising"].append(entry)
        if len(reported["raising"]) % 3 == 0:
            raise RuntimeError(f"victim {entry.key}")

    caches = {name: vc.TieredCache([vc.CacheTier("slow", 60), vc.CacheTier("fast", 12)],
                                   policy=policy(promote_threshold=2), on_evict=on_evict)
              for name, on_evict in (("raising", raising), ("quiet", reported["quiet"].append))}
    errors = 0
    for key, size in zip(trace.tolist(), sizes.tolist()):
        results = {}
        for name, cache in caches.items():
            try:
                results[name] = cache.access(key, size)
            except RuntimeError:
                errors += 1
                results[name] = "raised"
        assert results["quiet"] != "raised"
        if results["raising"] != "raised":
            assert results["raising"] == results["quiet"]
        for cache in caches.values():
            cache.check()
    assert errors > 0
    assert reported["raising"] == reported["quiet"]
    for tier in range(2):
        assert caches["raising"].tier_keys(tier) == caches["quiet"].tier_keys(tier)
        assert caches["raising"].policy_info(tier) == caches["quiet"].policy_info(tier)
    assert caches["raising"].counters() == caches["quiet"].counters()


@pytest.mark.parametrize("policy", NEW)
def test_a_spilled_entry_keeps_its_statistics(policy):
    cache = vc.TieredCache([vc.CacheTier("slow", 10), vc.CacheTier("fast", 2)],
                           policy=policy(promote_threshold=1))
    cache.insert(1, 1)
    cache.access(1, 1)                                  # promoted to the fast tier
    assert cache.get(1).tier == 1
    stats = cache.stats(1)
    for key in (2, 3, 4):
        cache.insert(key, 1)
        for _ in range(3):                              # promoted, pushing others down (and
            cache.access(key, 1)                        # more popular than key 1 by then)
    assert cache.get(1).tier == 0
    assert cache.stats(1) == stats
    assert cache.counters()[0]["spills"] >= 1
    cache.check()


@pytest.mark.parametrize("policy", NEW)
def test_pinned_entries_are_never_victims(policy):
    cache = vc.TieredCache([vc.CacheTier("t", 20)], policy=policy())
    for key in range(5):
        cache.insert(key, 1)
        cache.pin(key)
    cache.access_many(zipf_keys(3000, universe=300, seed=6), 1)
    assert all(key in cache for key in range(5))
    cache.check()
    cache.access_many(np.arange(1000, 1100, dtype=np.uint64), 1)
    assert all(key in cache for key in range(5))
    for key in range(5):
        cache.unpin(key)
    evicted = [cache.evict_coldest() for _ in range(20)]
    assert sorted(evicted)[:5] == list(range(5)) and len(cache) == 0
    cache.check()


def test_every_pinned_raises_and_changes_nothing():
    for policy in NEW:
        cache = vc.TieredCache([vc.CacheTier("t", 3)], policy=policy())
        for key in range(3):
            cache.insert(key, 1)
            cache.pin(key)
        before = (cache.tier_keys(0), cache.policy_info(0))
        with pytest.raises(vc.AllPinnedError, match="Fix:"):
            cache.insert(9, 1)
        assert (cache.tier_keys(0), cache.policy_info(0)) == before
        cache.check()


@pytest.mark.parametrize("policy", [vc.S3FifoPolicy, vc.ArcPolicy, vc.WTinyLfuPolicy])
def test_sizeof_counts_ghosts_and_sketch(policy):
    lru = vc.TieredCache([vc.CacheTier("t", 1000)])
    cache = vc.TieredCache([vc.CacheTier("t", 1000)], policy=policy())
    keys = zipf_keys(20_000, universe=5000, seed=7)
    lru.access_many(keys, 1)
    cache.access_many(keys, 1)
    assert cache.sizeof() > lru.sizeof() + 1000 * 8


def test_ghost_hit_sends_an_evicted_key_to_main():
    cache = vc.TieredCache([vc.CacheTier("t", 100)], policy=vc.S3FifoPolicy())
    cache.access_many(np.arange(300, dtype=np.uint64), 1)
    info = cache.policy_info(0)
    assert info["ghost"]["count"] > 0 and info["small"]["count"] <= 10
    assert 250 not in cache     # evicted from small a moment ago: a ghost
    cache.access(250, 1)
    after = cache.policy_info(0)
    assert after["main"]["count"] == info["main"]["count"] + 1
    assert cache.tier_keys(0).index(250) == after["small"]["count"]     # main's newest


class WTinyLfuMachine(RuleBasedStateMachine):
    """Every call on a W-TinyLFU cache of several tiers, with pins; check() after each."""

    @initialize(capacities=st.lists(st.sampled_from([0, 10, 32, 100]), min_size=1, max_size=3),
                spill=st.booleans(), window=st.sampled_from([0.0, 0.01, 0.2, 0.5]),
                adaptive=st.booleans(), threshold=st.integers(0, 3))
    def build(self, capacities, spill, window, adaptive, threshold):
        self.cache = vc.TieredCache(
            [vc.CacheTier(f"t{i}", c) for i, c in enumerate(capacities)],
            policy=vc.WTinyLfuPolicy(window_ratio=window, adaptive=adaptive,
                                     promote_threshold=threshold), spill=spill)

    def call(self, method, *args):
        try:
            return method(*args)
        except (vc.AllPinnedError, vc.EntryTooLargeError, vc.KeyNotFoundError):
            return None

    @rule(key=st.integers(0, 15), size=st.sampled_from([0, 1, 3, 9, 20, 40]))
    def access(self, key, size):
        self.call(self.cache.access, key, size)

    @rule(key=st.integers(0, 15), size=st.sampled_from([0, 1, 3, 9, 20, 40]))
    def insert(self, key, size):
        stored = self.call(self.cache.insert, key, size)
        if stored is not None:
            assert (key in self.cache) == stored

    @rule(keys=st.lists(st.integers(0, 15), max_size=10))
    def access_many(self, keys):
        self.call(self.cache.access_many, np.array(keys, dtype=np.uint64), 3)

    @rule(key=st.integers(0, 15))
    def pin_or_unpin(self, key):
        if key in self.cache:
            if self.cache.pins(key):
                self.cache.unpin(key)
            else:
                self.cache.pin(key)

    @rule(key=st.integers(0, 15), up=st.booleans())
    def move(self, key, up):
        self.call(self.cache.promote if up else self.cache.demote, key)

    @rule(key=st.integers(0, 15))
    def remove(self, key):
        self.call(self.cache.remove, key)

    @rule()
    def evict(self):
        self.cache.evict_coldest()

    @invariant()
    def consistent(self):
        if hasattr(self, "cache"):
            self.cache.check()


TestWTinyLfuMachine = WTinyLfuMachine.TestCase
TestWTinyLfuMachine.settings = settings(max_examples=60, stateful_step_count=50, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("base, name", [(vc.LruPolicy, "lru"), (vc.SievePolicy, "sieve")])
def test_a_plain_subclass_stays_native_and_an_override_makes_a_python_policy(base, name):
    class Quiet(base):
        pass

    class Eager(base):
        def should_promote(self, key, stats):
            return True

    assert Quiet._native and not Eager._native and base._native
    assert not vc.TierPolicy._native
    cache = vc.TieredCache([vc.CacheTier("t", 10)], policy=Quiet())
    assert cache.policy_info(0)["policy"] == name
    assert vc.TieredCache([vc.CacheTier("t", 10)], policy=Eager()).policy_info(0)["policy"] == "lru"
