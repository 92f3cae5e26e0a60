"""The engine's hash map under long probe runs: keys built to share one home group.

The map probes groups of 16 buckets (8 in debug builds) through control bytes holding 7 bits of
each key's hash, and stops at the first group with an empty bucket.  Random keys at load 9/16
rarely fill a group, so these tests build keys whose hashes share their top bits and the bits
of their control byte: every key of a set has the same home group and matches every other
key's byte, so the keys fill group after group, every lookup compares every key of the run, and
deletes in those full groups leave tombstones.  Every step is checked against a plain model and
with check().
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


def test_churn_in_full_groups_keeps_the_map_its_size():
    # Colliding keys share a home group and their 7 hash bits, so they fill groups one after
    # another and every delete there leaves a tombstone.  Long churn must rebuild the map in
    # place as tombstones use up its room, never let it grow without bound, and never lose a key.
    keys = colliding_keys(200, seed=6)
    rng = np.random.default_rng(7)
    cache = vc.TieredCache([vc.CacheTier("t", 30)])
    order = []                  # LRU order of the model, coldest first
    for key in keys[:30]:
        cache.insert(key, 1)
        order.append(key)
    settled = cache.sizeof()
    for step in range(6000):
        key = keys[rng.integers(0, len(keys))]
        expected = 0 if key in order else -1
        assert cache.access(key, 1) == expected
        if key in order:
            order.remove(key)
        else:
            order.pop(0)
        order.append(key)
        if step % 50 == 0:
            cache.check()
            assert cache.tier_keys(0) == order[::-1]
    cache.check()
    assert cache.sizeof() <= 2 * settled


def test_tombstones_are_cleared_in_place_not_by_growing():
    # Each family of colliding keys fills whole groups from its home; removing the family leaves
    # tombstones there.  Family after family they use up the map's room while the cache holds at
    # most 30 keys: the map must rebuild at its size, not double each time.
    cache = vc.TieredCache([vc.CacheTier("t", 10_000)])
    settled = None
    for family in range(200):
        keys = colliding_keys(30, home_bits=52, seed=100 + family)
        for key in keys:
            cache.insert(key, 1)
        if settled is None:
            settled = cache.sizeof()
        if family % 20 == 0:
            cache.check()
        for key in keys:
            cache.remove(key)
        assert len(cache) == 0
    cache.check()
    assert cache.sizeof() <= settled
