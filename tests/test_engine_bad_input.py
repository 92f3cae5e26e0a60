"""Every bad input raises the documented error, names the value, says how to fix it, and
changes nothing."""

import numpy as np
import pytest

import vyrecache as vc


def make(**options):
    cache = vc.TieredCache([vc.CacheTier("host", 100), vc.CacheTier("vram", 50)], **options)
    cache.insert(1, 10)
    cache.insert(2, 20)
    cache.record_access(2)
    cache.pin(2)
    return cache


def state(cache):
    return ([cache.tier_keys(t) for t in range(len(cache.tiers))], cache.counters(),
            [(k, cache.get(k), cache.stats(k), cache.pins(k)) for k in (1, 2)])


BAD_KEYS = [
    (True, TypeError), (False, TypeError), (np.bool_(True), TypeError), (1.0, TypeError),
    ("1", TypeError), (None, TypeError), (b"1", TypeError), ([1], TypeError),
    (-1, ValueError), (2**64, ValueError), (-(2**70), ValueError), (2**100, ValueError),
    (np.int64(-5), ValueError),
]

KEY_CALLS = [
    ("insert", lambda c, k: c.insert(k, 5)),
    ("access", lambda c, k: c.access(k, 5)),
    ("touch", lambda c, k: c.touch(k)),
    ("record_access", lambda c, k: c.record_access(k)),
    ("get", lambda c, k: c.get(k)),
    ("stats", lambda c, k: c.stats(k)),
    ("promote", lambda c, k: c.promote(k)),
    ("demote", lambda c, k: c.demote(k)),
    ("remove", lambda c, k: c.remove(k)),
    ("pin", lambda c, k: c.pin(k)),
    ("unpin", lambda c, k: c.unpin(k)),
    ("contains", lambda c, k: k in c),
]


@pytest.mark.parametrize("call_name,call", KEY_CALLS, ids=[name for name, _ in KEY_CALLS])
@pytest.mark.parametrize("bad,error", BAD_KEYS, ids=[repr(b) for b, _ in BAD_KEYS])
def test_a_bad_key_raises_names_the_value_and_changes_nothing(call_name, call, bad, error):
    cache = make()
    before = state(cache)
    with pytest.raises(error) as raised:
        call(cache, bad)
    message = str(raised.value)
    assert "Fix:" in message
    assert str(bad if not isinstance(bad, np.integer) else int(bad)) in message or repr(bad) in message
    assert state(cache) == before
    cache.check()


BAD_SIZES = [(True, TypeError), (2.5, TypeError), ("8", TypeError), (None, TypeError),
             (-1, ValueError), (2**64, ValueError)]


@pytest.mark.parametrize("bad,error", BAD_SIZES, ids=[repr(b) for b, _ in BAD_SIZES])
@pytest.mark.parametrize("method", ["insert", "access"])
def test_a_bad_size_raises_and_changes_nothing(method, bad, error):
    cache = make()
    before = state(cache)
    with pytest.raises(error, match="Fix:"):
        getattr(cache, method)(7, bad)
    assert state(cache) == before


def test_numpy_integers_are_keys():
    cache = make()
    cache.insert(np.uint64(2**64 - 1), np.int32(4))
    assert cache.get(2**64 - 1) == vc.CacheEntry(2**64 - 1, 4, 0)


def test_too_large_keeps_the_original_message_and_the_old_entry():
    cache = make()
    before = state(cache)
    with pytest.raises(vc.EntryTooLargeError) as raised:
        cache.insert(1, 101)
    assert str(raised.value).startswith(vc.errors.ENTRY_TOO_LARGE_MESSAGE)
    assert "101" in str(raised.value)
    assert state(cache) == before


def test_missing_key_keeps_the_original_message():
    cache = make()
    for call in (cache.promote, cache.demote, cache.remove, cache.pin, cache.unpin):
        with pytest.raises(vc.KeyNotFoundError) as raised:
            call(77)
        assert str(raised.value).startswith(vc.errors.KEY_NOT_FOUND_MESSAGE)
        assert "77" in str(raised.value)
        assert isinstance(raised.value, KeyError)


def test_all_pinned_raises_before_any_change():
    cache = vc.TieredCache([vc.CacheTier("only", 30)])
    cache.insert(1, 10)
    cache.insert(2, 20)
    cache.pin(1)
    cache.pin(2)
    before = state(cache)
    with pytest.raises(vc.AllPinnedError, match="Fix:"):
        cache.insert(3, 5)
    with pytest.raises(vc.AllPinnedError):
        cache.access(3, 5)
    assert state(cache) == before
    assert 3 not in cache


def test_unpin_of_an_unpinned_key_raises():
    cache = make()
    with pytest.raises(vc.CacheError, match="not pinned"):
        cache.unpin(1)


BAD_ARRAYS = [
    (np.array([1.0, 2.0]), TypeError), (np.array([True]), TypeError),
    (np.array([1, -2], dtype=np.int64), ValueError), (np.array(["a"]), TypeError),
    (np.zeros((2, 2), dtype=np.uint64), ValueError),
]


@pytest.mark.parametrize("bad,error", BAD_ARRAYS, ids=["float", "bool", "negative", "str", "2d"])
@pytest.mark.parametrize("method", ["access_many", "insert_many", "get_tiers",
                                    "record_access_many", "promote_many", "demote_many"])
def test_bad_key_arrays_raise_and_change_nothing(method, bad, error):
    cache = make()
    before = state(cache)
    args = (bad, 1) if method in ("access_many", "insert_many") else (bad,)
    with pytest.raises(error, match="Fix:"):
        getattr(cache, method)(*args)
    assert state(cache) == before


def test_mismatched_sizes_raise():
    cache = make()
    with pytest.raises(ValueError, match="Fix:"):
        cache.insert_many(np.arange(3, dtype=np.uint64), np.arange(2, dtype=np.uint64))


@pytest.mark.parametrize("tiers,error", [
    ([], ValueError),
    ([vc.CacheTier("", 10)], ValueError),
    ([vc.CacheTier("a", 10), vc.CacheTier("a", 20)], ValueError),
    ([vc.CacheTier("a", -1)], ValueError),
    ([vc.CacheTier("a", 1.5)], TypeError),
    ([vc.CacheTier("a", 2**64)], ValueError),
    ([vc.CacheTier(None, 10)], ValueError),
])
def test_bad_tiers_raise(tiers, error):
    with pytest.raises(error, match="Fix:"):
        vc.TieredCache(tiers)


@pytest.mark.parametrize("options,error", [
    ({"policy": object()}, TypeError), ({"spill": "yes"}, TypeError),
    ({"on_evict": 5}, TypeError), ({"granularity": 0}, ValueError),
    ({"granularity": True}, ValueError),
])
def test_bad_options_raise(options, error):
    with pytest.raises(error, match="Fix:"):
        vc.TieredCache([vc.CacheTier("a", 10)], **options)


@pytest.mark.parametrize("threshold", [-1, 2**32, 1.5, True])
def test_bad_promote_threshold_raises(threshold):
    with pytest.raises(ValueError, match="Fix:"):
        vc.LruPolicy(threshold)


@pytest.mark.parametrize("call", [
    lambda c: c.access(key=1, size=5),
    lambda c: c.access(1, size=5),
    lambda c: c.access(1),
    lambda c: c.access(1, 5, 6),
], ids=["keywords", "size keyword", "one argument", "three arguments"])
def test_access_takes_exactly_two_positional_arguments_and_changes_nothing(call):
    cache = make()
    before = state(cache)
    with pytest.raises(TypeError, match="access"):
        call(cache)
    assert state(cache) == before
    cache.check()
