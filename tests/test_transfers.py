"""Asynchronous moves: promote_many / demote_many(keys, wait=False) return a Transfer.

On Vulkan the device copies the bytes while the caller goes on; these tests read the raw
memory behind an entry (not through the cache, which would wait) to show when the bytes land,
and check that everything that touches bytes in flight sees the right ones.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vyrecache as vc

MODES = ["host", "vulkan", "vulkan-fence", "vulkan-device-copies"]


def _backend(request, mode: str):
    if mode == "host":
        return "host"
    device = request.getfixturevalue("vulkan_device")
    from device_only import DeviceOnlyBackend
    from vyrecache.vulkan.backend import VulkanBackend
    if mode == "vulkan-fence":
        # The fallback of devices without timeline semaphores: a fence per command buffer.
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(device, "timeline_semaphores", False)
    if mode == "vulkan-device-copies":
        return DeviceOnlyBackend(device=device)
    return VulkanBackend(device=device)


def _make(request, mode: str, host: int, device: int, **options) -> vc.BufferCache:
    return vc.BufferCache([vc.CacheTier("host", host, "host"), vc.CacheTier("vram", device, "device")],
                          backend=_backend(request, mode), **options)


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def payload(key: int, size: int) -> np.ndarray:
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8)


def raw_bytes(cache: vc.BufferCache, key: int) -> bytes:
    """The bytes at the entry's location now, read from the mapping (no wait for transfers)."""
    _, block, offset, size = cache._location_of(key)
    if size == 0:
        return b""
    return block.array[offset:offset + size].tobytes()


def _read(cache: vc.BufferCache, key: int) -> bytes:
    return cache.read(key).tobytes()


def _assert_in_tier(cache: vc.BufferCache, keys: np.ndarray, tier: int, size: int, read=_read) -> None:
    """Every key is in `tier` and `read(cache, key)` gives its payload."""
    for key in keys.tolist():
        assert cache.get(key).tier == tier
        assert read(cache, key) == payload(key, size).tobytes()


def _fill_low_tier(cache: vc.BufferCache, keys: np.ndarray, size: int) -> None:
    for key in keys.tolist():
        cache.put(key, payload(key, size))
    cache.demote_many(keys)
    assert all(cache.get(key).tier == 0 for key in keys.tolist())
    for _ in range(3):              # hot enough for the policy to promote them
        for key in keys.tolist():
            cache.record_access(key)


def test_host_backend_completes_at_once(request):
    cache = _make(request, "host", 1 << 20, 1 << 20)
    try:
        keys = np.arange(8, dtype=np.uint64)
        _fill_low_tier(cache, keys, 4096)
        transfer = cache.promote_many(keys, wait=False)
        assert isinstance(transfer, vc.Transfer)
        assert transfer.done() and transfer.wait() and transfer.wait(0)
        assert transfer.tiers.dtype == np.int8 and transfer.tiers.tolist() == [1] * 8
        assert cache._engine.pins(0) == 0
        cache.check()
    finally:
        cache.close()


def test_a_shader_executor_completes_moves_within_the_call(vulkan_device):
    """The compute shader runs its tables from Python, with no queue of the cache's own: a
    wait=False move completes within the call, as on the host backend, with the right bytes."""
    from device_only import DeviceOnlyBackend
    backend = DeviceOnlyBackend(device=vulkan_device, compaction="shader")
    cache = vc.BufferCache([vc.CacheTier("host", 1 << 20, "host"), vc.CacheTier("vram", 1 << 20, "device")],
                           backend=backend)
    try:
        keys = np.arange(8, dtype=np.uint64)
        _fill_low_tier(cache, keys, 4096 + 7)
        transfer = cache.promote_many(keys, wait=False)
        assert transfer.done() and transfer.tiers.tolist() == [1] * 8
        for key in keys.tolist():
            assert cache.read(key).tobytes() == payload(key, 4096 + 7).tobytes()
        cache.check()
    finally:
        cache.close()


@pytest.mark.parametrize("vulkan_mode", ["vulkan", "vulkan-fence", "vulkan-device-copies"])
def test_wait_false_returns_before_the_device_copied_the_bytes(request, vulkan_mode):
    size, count = 1 << 20, 96                   # 96 MiB: many milliseconds of copying
    seen_in_flight = []
    # Up to three fresh tries: on a 2-core machine, lavapipe's copy threads may now and then
    # run the whole copy before this thread is scheduled again.
    for _ in range(3):
        cache = _make(request, vulkan_mode, 128 << 20, 128 << 20)
        try:
            keys = np.arange(count, dtype=np.uint64)
            _fill_low_tier(cache, keys, size)
            transfer = cache.promote_many(keys, wait=False)
            in_flight = not transfer.done()
            # The metadata is already the new one, and the keys are pinned meanwhile.
            assert transfer.tiers.tolist() == [1] * count
            assert all(cache.get(key).tier == 1 for key in keys.tolist())
            if in_flight:
                assert cache._engine.pins(0) == 1
            assert transfer.wait()
            assert transfer.done()
            for key in keys.tolist():
                assert raw_bytes(cache, key) == payload(key, size).tobytes()
            assert cache._engine.pins(0) == 0 and cache._engine.pins(count - 1) == 0
            cache.check()
        finally:
            cache.close()
        seen_in_flight.append(in_flight)
        if in_flight:
            break
    assert any(seen_in_flight), "the transfer was complete every time promote_many returned"


def test_the_default_keeps_the_synchronous_result(request, mode):
    cache = _make(request, mode, 1 << 20, 1 << 20)
    try:
        keys = np.arange(16, dtype=np.uint64)
        _fill_low_tier(cache, keys, 3000)
        tiers = cache.promote_many(np.append(keys, np.uint64(999)))
        assert isinstance(tiers, np.ndarray) and tiers.dtype == np.int8
        assert tiers.tolist() == [1] * 16 + [-1]
        for key in keys.tolist():
            assert raw_bytes(cache, key) == payload(key, 3000).tobytes()
        assert cache._transfers_in_flight() == 0
        cache.check()
    finally:
        cache.close()


def test_reads_and_leases_of_bytes_in_flight_see_the_right_bytes(request, mode):
    size, count = 256 << 10, 64
    cache = _make(request, mode, 32 << 20, 32 << 20)
    try:
        keys = np.arange(count, dtype=np.uint64)
        _fill_low_tier(cache, keys, size)
        transfer = cache.promote_many(keys, wait=False)
        assert cache.read(int(keys[-1])).tobytes() == payload(int(keys[-1]), size).tobytes()
        out = np.empty((count, size), dtype=np.uint8)
        assert cache.read_many(keys, out).all()
        for key in keys.tolist():
            assert out[key].tobytes() == payload(key, size).tobytes()
        with cache.lease(int(keys[0])) as lease:
            if mode != "vulkan-device-copies":
                view = np.asarray(lease)
                assert view.tobytes() == payload(0, size).tobytes()
                del view
        transfer.wait()
        cache.check()
    finally:
        cache.close()


def test_many_transfers_in_flight_at_once(request, mode):
    size, groups, per_group = 64 << 10, 40, 8      # more transfers than command buffers in the pool
    cache = _make(request, mode, 64 << 20, 64 << 20)
    try:
        keys = np.arange(groups * per_group, dtype=np.uint64)
        _fill_low_tier(cache, keys, size)
        transfers = [cache.promote_many(keys[g * per_group:(g + 1) * per_group], wait=False)
                     for g in range(groups)]
        assert cache._transfers_in_flight() <= 32
        for transfer in transfers:
            assert transfer.tiers.tolist() == [1] * per_group
        assert all(transfer.wait(timeout=60) for transfer in transfers)
        for key in keys.tolist():
            assert raw_bytes(cache, key) == payload(key, size).tobytes()
            assert cache._engine.pins(key) == 0
        # And back down, with every second transfer never waited for: the next operation
        # completes them.
        downs = [cache.demote_many(keys[g * per_group:(g + 1) * per_group], wait=False)
                 for g in range(groups)]
        for key in keys[::7].tolist():
            assert cache.read(key).tobytes() == payload(key, size).tobytes()
        for transfer in downs[::2]:
            transfer.wait()
        cache.put(10**6, payload(1, 100))
        cache.check()
        _assert_in_tier(cache, keys, 0, size)
        cache.check()
    finally:
        cache.close()


@pytest.mark.parametrize("segments", [0, 3])
def test_puts_that_reuse_freed_memory_wait_for_the_copies_reading_it(request, mode, segments):
    """Promote a tier's entries, then at once put new ones there: the segments the move freed
    are the first the puts take, and the new bytes must not land in memory the device still
    reads (entries within a segment, and entries of a run of 3 segments)."""
    cache = _make(request, mode, 32 << 20, 32 << 20)
    size = 256 << 10
    if segments:
        size = segments * cache._tier_memory(0)["segment_size"] - 4096
    count = (20 << 20) // size
    try:
        keys = np.arange(count, dtype=np.uint64)
        _fill_low_tier(cache, keys, size)
        fresh = np.arange(1000, 1000 + count, dtype=np.uint64)
        rows = np.stack([payload(int(key), size) for key in fresh])
        transfer = cache.promote_many(keys, wait=False)
        cache.put_many(fresh, rows)
        transfer.wait()
        _assert_in_tier(cache, keys, 1, size, read=raw_bytes)
        _assert_in_tier(cache, fresh, 0, size)
        cache.check()
    finally:
        cache.close()


def test_close_waits_for_a_transfer_in_flight(request, mode):
    cache = _make(request, mode, 64 << 20, 64 << 20)
    keys = np.arange(32, dtype=np.uint64)
    _fill_low_tier(cache, keys, 1 << 20)
    transfer = cache.promote_many(keys, wait=False)
    cache.close()
    assert transfer.done() and transfer.wait() and transfer.wait(0)
    with pytest.raises(vc.CacheClosedError):
        cache.promote_many(keys, wait=False)


@pytest.mark.parametrize("timeout, error", [(-1, ValueError), (-0.5, ValueError), (math.nan, ValueError),
                                            ("1", TypeError), (True, TypeError), ([1], TypeError)])
def test_bad_timeouts_are_refused_clearly(request, mode, timeout, error):
    cache = _make(request, mode, 8 << 20, 8 << 20)
    try:
        keys = np.arange(8, dtype=np.uint64)
        _fill_low_tier(cache, keys, 256 << 10)
        transfer = cache.promote_many(keys, wait=False)
        with pytest.raises(error, match=r"timeout.*Fix"):
            transfer.wait(timeout)
        assert transfer.wait(math.inf) and transfer.wait(0) and transfer.wait(np.float32(1.0))
        cache.check()
    finally:
        cache.close()


@pytest.mark.parametrize("wait", ["no", 0, None, 1.0])
def test_a_wait_that_is_not_a_bool_changes_nothing(request, wait):
    cache = _make(request, "host", 1 << 20, 1 << 20)
    try:
        keys = np.arange(4, dtype=np.uint64)
        _fill_low_tier(cache, keys, 1000)
        for call in (cache.promote_many, cache.demote_many):
            with pytest.raises(TypeError, match=r"wait.*Fix"):
                call(keys, wait=wait)
        assert all(cache.get(key).tier == 0 for key in keys.tolist())
        cache.check()
    finally:
        cache.close()


def test_a_failed_start_changes_nothing(request):
    """The first asynchronous move of a mapped cache allocates its staging buffer: when that
    fails, the error comes before any entry moved."""
    from vyrecache.vulkan import faults
    cache = _make(request, "vulkan", 4 << 20, 4 << 20)
    try:
        keys = np.arange(8, dtype=np.uint64)
        _fill_low_tier(cache, keys, 64 << 10)
        faults.fail_next_allocation(1)
        try:
            with pytest.raises(vc.DeviceOutOfMemoryError):
                cache.promote_many(keys, wait=False)
        finally:
            faults.reset()
        assert all(cache.get(key).tier == 0 for key in keys.tolist())
        assert cache._engine.pins(0) == 0
        cache.check()
        transfer = cache.promote_many(keys, wait=False)
        assert transfer.wait() and transfer.tiers.tolist() == [1] * 8
        cache.check()
    finally:
        cache.close()


def test_validation_stays_silent(request, vulkan_device):
    cache = _make(request, "vulkan", 8 << 20, 8 << 20)
    seen = len(vulkan_device.validation_messages)
    try:
        keys = np.arange(32, dtype=np.uint64)
        _fill_low_tier(cache, keys, 64 << 10)
        ups = [cache.promote_many(keys[i::4], wait=False) for i in range(4)]
        assert cache.read(3).tobytes() == payload(3, 64 << 10).tobytes()
        for transfer in ups:
            transfer.wait()
        down = cache.demote_many(keys, wait=False)
        cache.put(500, payload(500, 1000))
        down.wait()
        cache.check()
    finally:
        cache.close()
    assert vulkan_device.validation_messages[seen:] == []


# -- the asynchronous path ends where the synchronous one does --------------------------------

_steps = st.lists(st.tuples(st.sampled_from(["put", "up", "down", "read", "remove", "wait"]),
                            st.lists(st.integers(0, 23), min_size=1, max_size=8),
                            st.integers(0, 5000), st.booleans()),
                  min_size=1, max_size=25)


def _sizes(key: int, salt: int) -> int:
    return (key * 977 + salt) % 6000


@pytest.mark.parametrize("async_mode", ["vulkan", "vulkan-device-copies"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_async_moves_end_where_synchronous_moves_do(request, async_mode, steps):
    """Two caches see the same calls; one moves with wait=False and waits (or not) later.  After
    every step both have the same tiers and bytes, and check() passes."""
    sync = _make(request, "host", 48 << 10, 24 << 10)
    fast = _make(request, async_mode, 48 << 10, 24 << 10)
    if async_mode == "vulkan-device-copies":
        # Replacements are written in place only where the memory is mapped; device-only tiers
        # append them, which leaves other dead space to clean.  The peer appends too.
        sync.replace_in_place = False
    in_flight: list = []
    try:
        for kind, keys, salt, wait_now in steps:
            key_array = np.array(keys, dtype=np.uint64)
            if kind == "put":
                # Pins of transfers in flight would change the victims: the moves must be done.
                for transfer in in_flight:
                    transfer.wait()
                in_flight.clear()
                for key in keys:
                    data = payload(key + salt, _sizes(key, salt))
                    outcomes = []
                    for cache in (sync, fast):
                        try:
                            outcomes.append(cache.put(key, data))
                        except vc.CacheError as error:
                            outcomes.append(type(error))
                    assert outcomes[0] == outcomes[1]
            elif kind in ("up", "down"):
                for transfer in in_flight:      # pins would skip keys the sync cache moves
                    transfer.wait()
                in_flight.clear()
                expected = (sync.promote_many if kind == "up" else sync.demote_many)(key_array)
                transfer = (fast.promote_many if kind == "up" else fast.demote_many)(key_array, wait=False)
                assert transfer.tiers.tolist() == expected.tolist()
                if wait_now:
                    assert transfer.wait()
                else:
                    in_flight.append(transfer)
            elif kind == "read":
                for key in keys:
                    if key in sync:
                        assert fast.read(key).tobytes() == sync.read(key).tobytes()
            elif kind == "remove":
                for transfer in in_flight:
                    transfer.wait()
                in_flight.clear()
                for key in keys:
                    if key in sync:
                        assert fast.remove(key) == sync.remove(key)
            else:
                for transfer in in_flight:
                    transfer.wait()
                in_flight.clear()
            fast.check()
            sync.check()
            assert sorted(fast) == sorted(sync)
            for key in sync:
                assert fast.get(key) == sync.get(key)
        for transfer in in_flight:
            transfer.wait()
        for key in sync:
            assert raw_bytes(fast, key) == sync.read(key).tobytes()
            assert fast._engine.pins(key) == 0
    finally:
        gc.collect()
        sync.close()
        fast.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["put", "up", "down", "read", "compact"]),
                                st.lists(st.integers(0, 31), min_size=1, max_size=10),
                                st.integers(0, 5000)),
                      min_size=1, max_size=30))
def test_operations_between_transfers_never_see_or_make_wrong_bytes(request, steps):
    """Puts, moves, reads and compaction while transfers are still in flight, never waited for:
    every byte read is the last one stored, and check() passes after every step."""
    cache = _make(request, "vulkan", 64 << 10, 32 << 10)
    model: dict[int, bytes] = {}
    try:
        for kind, keys, salt in steps:
            key_array = np.array(keys, dtype=np.uint64)
            if kind == "put":
                for key in keys:
                    data = payload(key + salt, _sizes(key, salt))
                    try:
                        stored = cache.put(key, data)
                    except (vc.PinnedError, vc.AllPinnedError):
                        continue            # a key (or every segment) pinned by a transfer
                    if stored:
                        model[key] = data.tobytes()
            elif kind == "up":
                cache.promote_many(key_array, wait=False)
            elif kind == "down":
                cache.demote_many(key_array, wait=False)
            elif kind == "compact":
                cache.compact()
            else:
                for key in keys:
                    if key in cache:
                        assert cache.read(key).tobytes() == model[key]
            for key in list(model):
                if key not in cache:
                    del model[key]      # evicted
            cache.check()
        for key in cache:
            assert cache.read(key).tobytes() == model[key]
    finally:
        cache.close()
