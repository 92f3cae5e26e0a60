"""The original Rust TieredCache's own unit tests, rewritten against vyrecache's API: the
seed this project grew from, whose behaviour the engine keeps."""

import pytest

import vyrecache as vc
from helpers import heat_and_promote, make


def test_get_returns_entry_after_insert():
    cache = make(1024)
    cache.insert(1, 100)
    assert cache.get(1) == vc.CacheEntry(1, 100, 0)
    cache.check()


def test_get_missing_returns_none():
    assert make(1024).get(99) is None


def test_insert_replaces_existing_key():
    cache = make(1024)
    cache.insert(1, 100)
    cache.insert(1, 200)
    assert cache.get(1).size == 200
    cache.check()


def test_a_replacement_releases_the_bytes_of_the_entry_it_replaced():
    cache = make(1024)
    cache.insert(1, 100)
    cache.insert(1, 200)
    assert cache.tiers[0].count == 1
    assert cache.tiers[0].used == 200
    cache.check()


def test_promote_moves_to_higher_tier_and_demote_moves_back():
    cache = make(1024, 1024)
    cache.insert(1, 100)
    heat_and_promote(cache, 1)
    assert cache.get(1).tier == 1
    cache.check()
    cache.demote(1)
    assert cache.get(1).tier == 0
    cache.check()


@pytest.mark.parametrize("budget", [200, 250])
def test_an_insert_past_the_tier_budget_evicts_the_coldest_key(budget):
    cache = make(budget)
    cache.insert(1, 100)
    cache.insert(2, 100)
    cache.record_access(1)
    cache.insert(3, 100)
    assert 1 in cache and 2 not in cache and 3 in cache
    assert cache.get(1) is not None and cache.get(2) is None and cache.get(3) is not None
    cache.check()


def test_stats_order_by_last_access_not_rank():
    cache = make(1024)
    cache.insert(1, 100)
    cache.insert(2, 100)
    cache.record_access(1)
    cache.record_access(2)
    cache.record_access(1)
    first, second = cache.stats(1), cache.stats(2)
    assert first.last_access > second.last_access
    assert (first.frequency, second.frequency) == (2, 1)
    assert first.size == 100


def test_promote_without_eviction_keeps_both_keys():
    cache = make(200, 200)
    cache.insert(1, 100)
    cache.insert(2, 100)
    heat_and_promote(cache, 1)
    assert cache.get(1) is not None and cache.get(2) is not None
    cache.check()


def _promote_two_into_a_tier_that_holds_one(cache) -> None:
    """Keys 1 and 2 (100 bytes each) in tier 0, then both promoted, 2 first, into tier 1 of 100
    bytes: 1's promotion needs 2's room."""
    cache.insert(1, 100)
    cache.insert(2, 100)
    heat_and_promote(cache, 2)
    assert cache.get(2).tier == 1
    heat_and_promote(cache, 1)
    assert cache.get(1).tier == 1


def test_a_promote_into_a_full_tier_evicts_that_tiers_coldest_key():
    # spill=False is the original cache's exact behaviour: the victim leaves the cache.
    cache = make(400, 100, spill=False)
    _promote_two_into_a_tier_that_holds_one(cache)
    assert cache.get(2) is None
    assert cache.tiers[1].used == 100
    cache.check()


def test_a_promote_into_a_full_tier_spills_its_coldest_entry_down_by_default():
    cache = make(400, 100)
    _promote_two_into_a_tier_that_holds_one(cache)
    assert cache.get(2).tier == 0
    assert cache.stats(2).frequency == 3       # a spilled entry keeps its statistics
    assert [t.used for t in cache.tiers] == [100, 100]
    cache.check()
