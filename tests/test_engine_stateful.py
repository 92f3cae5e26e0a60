"""Differential test: random operation sequences on the engine and on the reference model.

Every step compares the result (or the error class), then every observable: each key's entry and
statistics, each tier's LRU order, used bytes, counters and the event log, and runs check().
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import vyrecache as vc
from reference_model import ModelCache

KEYS = st.integers(0, 11)
SIZES = st.sampled_from([0, 1, 3, 7, 10, 16, 33, 64, 200, 2**64 - 1])
BAD_KEYS = st.sampled_from([-1, 2**64, 1.0, "1", None, True, b"1"])


def outcome(call, *args):
    try:
        return ("ok", call(*args))
    except vc.CacheError as error:
        return ("error", type(error).__name__)


def model_error_name(error):
    return type(error).__name__


class EngineVersusModel(RuleBasedStateMachine):
    @initialize(capacities=st.lists(st.sampled_from([0, 10, 32, 64, 100]), min_size=1, max_size=3),
                spill=st.booleans(), threshold=st.integers(0, 3),
                granularity=st.sampled_from([1, 1, 8]), log_events=st.booleans())
    def build(self, capacities, spill, threshold, granularity, log_events):
        self.cache = vc.TieredCache([vc.CacheTier(f"t{i}", c) for i, c in enumerate(capacities)],
                                    policy=vc.LruPolicy(threshold), spill=spill,
                                    granularity=granularity)
        # Without the log a full tier's miss takes the in-place path (the coldest entry's slot
        # is reused at once); with it, freed slots wait for the next operation.
        self.cache.record_events = log_events
        self.model = ModelCache(capacities, threshold, spill, granularity)
        self.model_events = []

    # ---- running one call on both ----
    def both(self, engine_call, model_call, *args, convert=lambda value: value):
        try:
            expected = ("ok", model_call(*args))
        except vc.CacheError as error:
            expected = ("error", model_error_name(error))
        self.model_events = list(self.model.events)
        try:
            actual = ("ok", convert(engine_call(*args)))
        except vc.CacheError as error:
            actual = ("error", type(error).__name__)
        assert actual == expected, (engine_call.__name__, args)
        return actual

    def batch(self, engine_call, model_call, keys, *columns):
        expected, events, error = [], [], None
        for row in zip(keys, *columns):
            try:
                expected.append(model_call(*row))
            except vc.CacheError as failure:
                error = model_error_name(failure)
                events += self.model.events if error is None else []
                break
            events += self.model.events
        self.model_events = events
        arrays = [np.array(keys, dtype=np.uint64)] + [np.array(c, dtype=np.uint64) for c in columns]
        try:
            actual = engine_call(*arrays).tolist()
        except vc.CacheError as failure:
            assert type(failure).__name__ == error
            return
        assert error is None
        assert actual == expected

    # ---- rules ----
    @rule(key=KEYS, size=SIZES)
    def insert(self, key, size):
        self.both(self.cache.insert, self.model_insert, key, size)

    def model_insert(self, key, size):
        self.model.insert(key, size)        # insert() says whether it stored; LRU always does
        return True

    @rule(key=KEYS, size=SIZES)
    def access(self, key, size):
        self.both(self.cache.access, self.model.access, key, size)

    @rule(key=KEYS)
    def touch(self, key):
        self.both(self.cache.touch, self.model.touch, key)

    @rule(key=KEYS)
    def record_access(self, key):
        self.both(self.cache.record_access, self.model.record_access, key)

    @rule(key=KEYS)
    def promote(self, key):
        self.both(self.cache.promote, self.model.promote, key)

    @rule(key=KEYS)
    def demote(self, key):
        self.both(self.cache.demote, self.model.demote, key)

    @rule(key=KEYS)
    def remove(self, key):
        self.both(self.cache.remove, self.model.remove, key,
                  convert=lambda e: (e.key, e.size, e.tier))

    @rule()
    def evict_coldest(self):
        self.both(self.cache.evict_coldest, self.model.evict_coldest)

    @rule(data=st.data())
    def evict_from_tier(self, data):
        tier = data.draw(st.integers(0, len(self.model.capacities) - 1))
        self.both(self.cache.evict_from_tier, self.model.evict_from_tier, tier)

    @rule(key=KEYS)
    def pin(self, key):
        self.both(self.cache.pin, self.model.pin, key)

    @precondition(lambda self: any(e.pins for e in self.model.entries.values()))
    @rule(data=st.data())
    def unpin(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, e in self.model.entries.items() if e.pins)))
        self.both(self.cache.unpin, self.model.unpin, key)

    @rule(keys=st.lists(KEYS, max_size=8), data=st.data())
    def access_many(self, keys, data):
        sizes = data.draw(st.lists(SIZES, min_size=len(keys), max_size=len(keys)))
        self.batch(self.cache.access_many, self.model.access, keys, sizes)

    @rule(keys=st.lists(KEYS, max_size=8), data=st.data())
    def insert_many(self, keys, data):
        sizes = data.draw(st.lists(SIZES, min_size=len(keys), max_size=len(keys)))
        if any(self.model.charge(size) > max(self.model.capacities) for size in sizes):
            # A size no tier can hold is found before anything changes.
            before = self.snapshot()
            with pytest.raises(vc.EntryTooLargeError):
                self.cache.insert_many(np.array(keys, dtype=np.uint64), np.array(sizes, dtype=np.uint64))
            assert self.snapshot() == before
            self.model_events = []
            return
        self.batch(self.cache.insert_many, self.model.insert, keys, sizes)

    @rule(keys=st.lists(KEYS, max_size=6), up=st.booleans())
    def move_many(self, keys, up):
        expected = self.model.move_many(keys, up)
        self.model_events = list(self.model.events)
        call = self.cache.promote_many if up else self.cache.demote_many
        assert call(np.array(keys, dtype=np.uint64)).tolist() == expected

    @rule(key=KEYS)
    def record_access_many_and_get_tiers(self, key):
        keys = [key, key + 1]
        present = sum(k in self.model.entries for k in keys)
        for k in keys:
            self.model.record_access(k)
        self.model_events = []
        assert self.cache.record_access_many(np.array(keys, dtype=np.uint64)) == present
        tiers = [self.model.entries[k].tier if k in self.model.entries else -1 for k in keys]
        assert self.cache.get_tiers(np.array(keys, dtype=np.uint64)).tolist() == tiers

    @rule(bad=BAD_KEYS, size=SIZES)
    def bad_key_changes_nothing(self, bad, size):
        before = self.snapshot()
        for call, args in ((self.cache.insert, (bad, size)), (self.cache.access, (bad, size)),
                           (self.cache.promote, (bad,)), (self.cache.pin, (bad,))):
            try:
                call(*args)
            except (TypeError, ValueError) as error:
                assert "Fix:" in str(error)
            else:
                raise AssertionError(f"{call.__name__}{args!r} did not raise")
        assert self.snapshot() == before

    # ---- comparison ----
    def snapshot(self):
        cache = self.cache
        return ([cache.tier_keys(t) for t in range(len(cache.tiers))], cache.counters(),
                [(k, cache.get(k), cache.stats(k)) for k in range(13)])

    @invariant()
    def agree(self):
        if not hasattr(self, "cache"):
            return
        cache, model = self.cache, self.model
        cache.check()
        for tier in range(len(model.capacities)):
            assert cache.tier_keys(tier) == model.tier_keys(tier)
            assert cache.tiers[tier].used == model.used(tier)
            assert cache.tiers[tier].pinned == model.pinned(tier)
        for key in range(13):
            entry = cache.get(key)
            assert (None if entry is None else (entry.key, entry.size, entry.tier)) == model.get(key)
            stats = cache.stats(key)
            expected = model.stats(key)
            assert (None if stats is None else (stats.frequency, stats.last_access, stats.size)) == expected
        assert len(cache) == len(model.entries)
        assert cache.counters() == model.counters
        if cache.record_events:
            events = [(int(e["kind"]), int(e["key"]), int(e["src_tier"]), int(e["dst_tier"]))
                      for e in cache.events()]
            assert events == self.model_events


EngineVersusModel.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("VYRECACHE_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestEngineVersusModel = EngineVersusModel.TestCase
