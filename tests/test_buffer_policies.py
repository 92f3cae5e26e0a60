"""BufferCache under every native policy: the same decisions as a TieredCache with that policy,
every entry's bytes exact, check() after every step; W-TinyLFU's declined puts store nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vyrecache as vc
from helpers import payload

POLICIES = {
    "fifo": vc.FifoPolicy, "clock": vc.ClockPolicy, "sieve": vc.SievePolicy,
    "s3fifo": vc.S3FifoPolicy, "arc": vc.ArcPolicy, "wtinylfu": vc.WTinyLfuPolicy,
}

OPS = st.lists(st.tuples(st.sampled_from(["put", "access", "access", "remove"]), st.integers(0, 30),
                         st.sampled_from([16, 200, 700, 1500])), max_size=80)


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPS)
def test_a_buffer_cache_decides_as_a_tiered_cache_with_the_same_policy(name, operations):
    tiers = [vc.CacheTier("host", 4096, "host"), vc.CacheTier("vram", 2048, "device")]
    model: dict[int, bytes] = {}
    with vc.BufferCache(tiers, backend="host", policy=POLICIES[name](promote_threshold=2)) as cache:
        reference = vc.TieredCache(tiers, policy=POLICIES[name](promote_threshold=2),
                                   granularity=cache._backend.alignment)
        for version, (op, key, size) in enumerate(operations):
            if op == "put":
                data = payload(key, size, version)
                stored = cache.put(key, data)
                assert stored == reference.insert(key, size)
                if stored:
                    model[key] = data
                else:
                    model.pop(key, None)
                    assert key not in cache
            elif op == "access":
                assert cache.access(key) == (-1 if reference.get(key) is None
                                             else reference.touch(key))
            elif key in reference:
                cache.remove(key)
                reference.remove(key)
                model.pop(key)
            for gone in [k for k in model if k not in cache]:
                del model[gone]
            cache.check()
            assert sorted(cache) == sorted(reference)
            assert [(t.used, t.count) for t in cache.tiers] == [(t.used, t.count) for t in reference.tiers]
            for present, data in model.items():
                assert cache.read(present).tobytes() == data


def test_a_declined_put_stores_nothing_and_is_counted():
    tiers = [vc.CacheTier("host", 16 * 1024, "host")]
    with vc.BufferCache(tiers, backend="host", policy=vc.WTinyLfuPolicy()) as cache:
        hot = np.zeros(1024, dtype=np.uint8)
        results = []
        for round_index in range(40):
            for key in range(14):                 # a popular set, accessed again and again
                if cache.access(key) < 0:
                    cache.put(key, hot)
            results.append(cache.put(1000 + round_index, hot))   # one-hit wonders
        assert not all(results)                   # the filter turned some of them away
        declined = [1000 + index for index, stored in enumerate(results) if not stored]
        assert all(key not in cache for key in declined)
        assert cache.counters()[0]["rejections"] >= len(declined)
        stored = cache.put_many(np.array([5000, 5001], dtype=np.uint64), [hot, hot])
        assert stored.dtype == bool and stored.shape == (2,)
        cache.check()
