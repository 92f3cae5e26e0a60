"""The engine's hash map under long probe runs: keys built to share one home bucket.

A bucket keeps its entry's distance from the key's home in 4 bits (15 meaning "15 or more", then
the delete reads the key).  Random keys at load 1/2 rarely sit 15 buckets from home, so these
tests build keys whose hashes share their top bits: every key of a set has the same home, and
each insert lengthens one run.  Every step is checked against a dict and with check().
"""

import numpy as np
import pytest

import vyrecache as vc

MULTIPLIER = 0x9E3779B97F4A7C15          # the engine's Fibonacci hash multiplier
INVERSE = pow(MULTIPLIER, -1, 1 << 64)


def colliding_keys(count, home_bits=60, seed=0):
    """`count` distinct keys whose hash products share their top `64 - home_bits` bits and more:
    products base + j, so any map of up to 2**home_bits buckets files them under one home."""
    base = (int(np.random.default_rng(seed).integers(1, 1 << 62)) << 2) & ~((1 << home_bits) - 1)
    return [((base + j) * INVERSE) % (1 << 64) for j in range(count)]


def test_colliding_keys_share_a_home():
    keys = colliding_keys(4)
    homes = {((key * MULTIPLIER) % (1 << 64)) >> 50 for key in keys}
    assert len(homes) == 1


@pytest.mark.parametrize("order", ["front", "middle", "back", "random"])
def test_long_runs_survive_deletes_anywhere_in_them(order):
    keys = colliding_keys(60, seed=len(order))
    cache = vc.TieredCache([vc.CacheTier("t", 10_000)])
    for key in keys:
        cache.insert(key, 1)
    cache.check()
    present = set(keys)
    if order == "front":
        doomed = keys[:30]
    elif order == "middle":
        doomed = keys[15:45]
    elif order == "back":
        doomed = keys[30:]
    else:
        doomed = [keys[i] for i in np.random.default_rng(4).permutation(len(keys))[:30]]
    for done, key in enumerate(doomed, 1):
        cache.remove(key)
        present.discard(key)
        cache.check()
        assert all(key in cache for key in present)
        assert not any(gone in cache for gone in doomed[:done])


def test_long_runs_through_evictions_and_growth_match_a_dict():
    # Two colliding sets and random keys in a small tier: misses evict the coldest, the map
    # doubles while runs are long, and every lookup must still agree with a plain model.
    keys = colliding_keys(40, seed=1) + colliding_keys(40, seed=2)
    rng = np.random.default_rng(3)
    keys += [int(k) for k in rng.integers(0, 2**63, 40, dtype=np.uint64)]
    cache = vc.TieredCache([vc.CacheTier("t", 50)])
    order = []                  # LRU order of the model, coldest first
    for step in range(3000):
        key = int(keys[rng.integers(0, len(keys))])
        expected = 0 if key in order else -1
        assert cache.access(key, 1) == expected
        if key in order:
            order.remove(key)
        elif len(order) == 50:
            order.pop(0)
        order.append(key)
        if step % 97 == 0:
            cache.check()
            assert sorted(cache) == sorted(order)
    cache.check()
    batch = np.array(keys, dtype=np.uint64)
    assert (cache.get_tiers(batch) >= 0).sum() == len(order)


def test_batch_access_over_long_runs_matches_single_calls():
    keys = np.array(colliding_keys(64, seed=5) * 3, dtype=np.uint64)
    one, many = vc.TieredCache([vc.CacheTier("t", 40)]), vc.TieredCache([vc.CacheTier("t", 40)])
    singles = [one.access(int(key), 1) for key in keys]
    assert many.access_many(keys, 1).tolist() == singles
    one.check()
    many.check()
    assert list(one) == list(many)
