"""put_many / read_many / access_many / fill_many: the same tiers, evictions and bytes as the
single calls.

Two caches get one random sequence: one through the batch calls, one key at a time.  After every
step their keys, tiers, counters and bytes must agree, and check() must pass on both.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vyrecache as vc
from vyrecache.counters import ENGINE_COUNTERS
from vyrecache.host.backend import HostBackend
from helpers import closing_caches, payload


@pytest.fixture(params=["host", "vulkan", "vulkan-device-copies"])
def make_cache(request):
    if request.param.startswith("vulkan"):
        device = request.getfixturevalue("vulkan_device")
        from device_only import DeviceOnlyBackend
        from vyrecache.vulkan.backend import VulkanBackend
        make_backend = DeviceOnlyBackend if request.param == "vulkan-device-copies" else VulkanBackend

        def backend():
            return make_backend(device=device)
    else:
        def backend():
            return "host"

    def new_cache(**options):
        return vc.BufferCache([vc.CacheTier("host", 8192, "host"), vc.CacheTier("vram", 2048, "device")],
                              backend=backend(), **options)

    with closing_caches(new_cache) as build:
        yield build


def state(cache):
    return ({key: (cache.get(key).tier, cache.read(key).tobytes()) for key in cache},
            [{name: value for name, value in tier.items() if name not in ("fragmentation",)}
             for tier in cache.counters()])


BATCH = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 1500)), min_size=0, max_size=12)
STEPS = st.lists(st.one_of(st.tuples(st.just("put"), BATCH),
                           st.tuples(st.just("access"), BATCH),
                           st.tuples(st.just("fill"), BATCH),
                           st.tuples(st.just("read"), BATCH)), max_size=14)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_batches_agree_with_single_calls(make_cache, steps):
    left_batch, left_single = [], []
    batched = make_cache(on_evict=left_batch.append)
    single = make_cache(on_evict=left_single.append)
    for version, (kind, items) in enumerate(steps):
        keys = np.array([key for key, _ in items], dtype=np.uint64)
        if kind == "put":
            blobs = [payload(key, size, version) for key, size in items]
            assert batched.put_many(keys, blobs).all()
            for key, blob in zip(keys.tolist(), blobs):
                single.put(key, blob)
        elif kind == "access":
            tiers = batched.access_many(keys)
            assert tiers.tolist() == [single.access(key) for key in keys.tolist()]
        elif kind == "fill":
            # access every key, then put the ones that were missing, in order
            blobs = [payload(key, size, version) for key, size in items]
            tiers = batched.fill_many(keys, blobs)
            expected = [single.access(key) for key in keys.tolist()]
            assert tiers.tolist() == expected
            for key, blob, tier in zip(keys.tolist(), blobs, expected):
                if tier < 0:
                    single.put(key, blob)
        else:
            out = np.full((len(keys), 1500), 7, dtype=np.uint8)
            found = batched.read_many(keys, out)
            for index, key in enumerate(keys.tolist()):
                assert bool(found[index]) == (key in single)
                if key in single:
                    entry = single.read(key).tobytes()
                    assert out[index, :len(entry)].tobytes() == entry
                else:
                    assert (out[index] == 7).all()     # rows of missing keys stay untouched
        batched.check()
        single.check()
        assert state(batched) == state(single)
        assert left_batch == left_single


def test_put_many_takes_rows_with_sizes_and_zero_size_entries(make_cache):
    cache = make_cache()
    rows = np.arange(4 * 64, dtype=np.uint8).reshape(4, 64)
    sizes = np.array([64, 0, 17, 1], dtype=np.uint64)
    cache.put_many(np.arange(4, dtype=np.uint64), rows, sizes)
    for key in range(4):
        assert cache.read(key).tobytes() == rows[key, :int(sizes[key])].tobytes()
    strided = np.arange(4, dtype=np.uint64)[::-1]
    out = np.zeros((4, 64), dtype=np.uint8)
    assert cache.read_many(strided, out).all()
    assert out[0, :1].tobytes() == rows[3, :1].tobytes()
    cache.check()


def test_bad_batches_raise_and_change_nothing(make_cache):
    cache = make_cache()
    cache.put(1, payload(1, 100))
    cache.pin(1)
    before = state(cache)
    rows = np.zeros((2, 16), dtype=np.uint8)
    cases = [
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), rows[:1]), ValueError),
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), rows.astype(np.int16)), ValueError),
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), rows[:, ::2]), ValueError),
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), rows, [16, 17]), ValueError),
        (lambda: cache.put_many(np.array([5, 1], dtype=np.uint64), rows), vc.PinnedError),
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), [b"x", object()]), TypeError),
        (lambda: cache.put_many(np.array([5, 6], dtype=np.uint64), [b"x", bytes(1 << 20)]), vc.EntryTooLargeError),
        (lambda: cache.put_many([-1, 2], rows), ValueError),
        (lambda: cache.fill_many(np.array([5, 6], dtype=np.uint64), rows[:1]), ValueError),
        (lambda: cache.fill_many(np.array([5, 6], dtype=np.uint64), rows, [16, 17]), ValueError),
        (lambda: cache.fill_many(np.array([5, 6], dtype=np.uint64), [b"x", bytes(1 << 20)]),
         vc.EntryTooLargeError),
        (lambda: cache.fill_many(np.array([5, 6], dtype=np.uint64), [b"x", object()]), TypeError),
        (lambda: cache.read_many(np.array([1], dtype=np.uint64), np.zeros((1, 50), np.uint8)), ValueError),
        (lambda: cache.read_many(np.array([1], dtype=np.uint64), np.zeros((2, 200), np.uint8)), ValueError),
        (lambda: cache.read_many(np.array([1], dtype=np.uint64), np.zeros((1, 200), np.float32)), ValueError),
    ]
    for call, error in cases:
        with pytest.raises(error, match="Fix") as caught:
            call()
        assert getattr(caught.value, "stored", 0) == 0      # found before anything changed
        assert state(cache) == before
        cache.check()


def test_fill_many_reads_only_the_rows_of_missing_keys_and_never_replaces_a_hit(make_cache):
    cache = make_cache()
    cache.put(1, payload(1, 300))
    cache.pin(1)                                  # a pinned hit: its row may be anything
    cache.put(2, payload(2, 200))
    keys = np.array([1, 2, 3, 3], dtype=np.uint64)
    rows = [bytes(1 << 20), b"ignored", payload(3, 50), payload(3, 60, 1)]
    tiers = cache.fill_many(keys, rows)
    assert tiers.tolist() == [0, 0, -1, -1]       # what access_many says; 3 was put twice, in order
    assert cache.read(1).tobytes() == payload(1, 300)
    assert cache.read(2).tobytes() == payload(2, 200)
    assert cache.read(3).tobytes() == payload(3, 60, 1)
    rows2 = np.zeros((2, 64), dtype=np.uint8)
    assert cache.fill_many(np.array([2, 9], dtype=np.uint64), rows2, [0, 17]).tolist() == [0, -1]
    assert cache.read(9).tobytes() == bytes(17)
    cache.check()


# -- replacements of an entry's own charge (written where the entry lies) ----------------------

# A step: ("put", batch) of new sizes, ("same", picks) replacing present keys with a size of the
# same charge, ("pin"/"unpin", picks) of present keys, ("lease"/"release", picks), ("access", batch).
PICKS = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 1 << 16)), min_size=0, max_size=12)
REPLACING_STEPS = st.lists(st.one_of(st.tuples(st.just("put"), BATCH),
                                     st.tuples(st.just("same"), PICKS),
                                     st.tuples(st.just("same"), PICKS),
                                     st.tuples(st.just("access"), BATCH),
                                     st.tuples(st.just("pin"), PICKS),
                                     st.tuples(st.just("unpin"), PICKS),
                                     st.tuples(st.just("lease"), PICKS),
                                     st.tuples(st.just("release"), PICKS)), max_size=16)


def same_charge_items(cache, picks):
    """(key, size) for present keys of `cache`, each with a new size of its entry's charge."""
    present = sorted(cache)
    items = []
    for index, noise in picks:
        if not present:
            break
        key = present[index % len(present)]
        size = cache.get(key).size
        if size:
            charge = -(-size // cache.alignment) * cache.alignment
            size = charge - noise % min(cache.alignment, charge)
        items.append((key, size))
    return items


def raising_on_evict(reported):
    """on_evict that records every victim and raises for every third one."""
    def on_evict(entry):
        reported.append(entry)
        if len(reported) % 3 == 0:
            raise RuntimeError(f"victim {entry.key}")
    return on_evict


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=REPLACING_STEPS)
def test_replacements_agree_with_single_calls_with_pins_leases_and_a_raising_on_evict(make_cache, steps):
    left_batch, left_single = [], []
    batched = make_cache(on_evict=raising_on_evict(left_batch))
    single = make_cache(on_evict=raising_on_evict(left_single))
    leases = {}                      # key -> (the batched cache's lease, the single one's)
    pins = {}
    for version, (kind, items) in enumerate(steps, start=1):
        if kind in ("same", "pin", "unpin", "lease", "release"):
            items = same_charge_items(single, items)
        keys = np.array([key for key, _ in items], dtype=np.uint64)
        if kind in ("put", "same"):
            blobs = [payload(key, size, version) for key, size in items]
            blocked = [key for key in keys.tolist() if pins.get(key) or key in leases]
            if blocked:
                before = state(batched)
                with pytest.raises(vc.PinnedError) as caught:
                    batched.put_many(keys, blobs)
                assert caught.value.stored == 0 and state(batched) == before
                with pytest.raises(vc.PinnedError):
                    single.put(blocked[0], b"")
                continue
            batch_error = single_error = None
            try:
                batched.put_many(keys, blobs)
            except RuntimeError as error:
                batch_error = error
            for key, blob in zip(keys.tolist(), blobs):
                try:
                    single.put(key, blob)
                except RuntimeError as error:
                    single_error = single_error or error
            assert (batch_error is None) == (single_error is None)
        elif kind == "access":
            try:
                tiers = batched.access_many(keys).tolist()
            except RuntimeError:
                tiers = None
            expected = []
            for key in keys.tolist():
                try:
                    expected.append(single.access(key))
                except RuntimeError:
                    expected.append(None)      # the access completed; its tier is checked below
            if tiers is not None and None not in expected:
                assert tiers == expected
        elif kind in ("pin", "lease"):
            for key in keys.tolist():
                if kind == "pin":
                    batched.pin(key)
                    single.pin(key)
                    pins[key] = pins.get(key, 0) + 1
                elif key not in leases:
                    leases[key] = (batched.lease(key), single.lease(key))
        elif kind == "unpin":
            for key in keys.tolist():
                if pins.get(key):
                    batched.unpin(key)
                    single.unpin(key)
                    pins[key] -= 1
        else:
            for key in keys.tolist():
                if key in leases:
                    for lease in leases.pop(key):
                        lease.release()
        for key, (lease, _) in leases.items():
            # A leased entry is never replaced: its bytes stay the ones the lease was taken on.
            assert batched.read(key).tobytes() == single.read(key).tobytes()
            try:
                view = memoryview(lease)
            except BufferError:         # device-only memory: no CPU view
                continue
            assert view.tobytes() == batched.read(key).tobytes()
            view.release()
        batched.check()
        single.check()
        assert state(batched) == state(single)
        assert left_batch == left_single
    for pair in leases.values():
        for lease in pair:
            lease.release()


def engine_state(cache):
    """Keys, tiers, bytes and the engine's counters: what does not depend on where the bytes lie."""
    engine = set(ENGINE_COUNTERS)
    return ({key: (cache.get(key).tier, cache.read(key).tobytes()) for key in cache},
            [{name: value for name, value in tier.items() if name in engine} for tier in cache.counters()])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=REPLACING_STEPS.map(lambda steps: [step for step in steps if step[0] in ("put", "same", "access")]))
def test_a_replacement_in_place_leaves_what_a_remove_and_an_insert_leave(make_cache, steps):
    """Against a cache that appends every replacement: the same keys, tiers, bytes, engine
    counters and victims (no pins here, so the log never evicts for fragmentation)."""
    left_place, left_append = [], []
    in_place = make_cache(on_evict=left_place.append)
    appending = make_cache(on_evict=left_append.append)
    appending.replace_in_place = False
    host_memory = isinstance(in_place._backend, HostBackend)     # every block mapped, no copy rows
    for version, (kind, items) in enumerate(steps, start=1):
        if kind == "same":
            items = same_charge_items(appending, items)
        keys = np.array([key for key, _ in items], dtype=np.uint64)
        if kind == "access":
            assert in_place.access_many(keys).tolist() == appending.access_many(keys).tolist()
        else:
            blobs = [payload(key, size, version) for key, size in items]
            locations = {key: in_place._location_of(key) for key in keys.tolist() if key in in_place}
            in_place.put_many(keys, blobs)
            appending.put_many(keys, blobs)
            if kind == "same" and host_memory and len(set(keys.tolist())) == len(keys):
                for key, location in locations.items():
                    # Overwritten where they lay, when the put lands in the entry's tier (a
                    # promoted entry's put lands lower, so its bytes move).
                    if location[1] is not None and in_place.get(key).tier == location[0]:
                        assert in_place._location_of(key)[:3] == location[:3]
        in_place.check()
        appending.check()
        assert engine_state(in_place) == engine_state(appending)
        assert left_place == left_append
