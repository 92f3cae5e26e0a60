"""Leases: an entry pinned for a block, with zero-copy views that can never outlive it."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import vyrecache as vc


@pytest.fixture(params=["host", "vulkan", "vulkan-device-copies"])
def cache(request):
    if request.param.startswith("vulkan"):
        device = request.getfixturevalue("vulkan_device")
        from device_only import DeviceOnlyBackend
        from vyrecache.vulkan.backend import VulkanBackend
        make_backend = DeviceOnlyBackend if request.param == "vulkan-device-copies" else VulkanBackend
        backend = make_backend(device=device)
    else:
        backend = "host"
    made = vc.BufferCache([vc.CacheTier("host", 64 << 10, "host"), vc.CacheTier("vram", 16 << 10, "device")],
                          backend=backend)
    made.mapped = request.param != "vulkan-device-copies"
    yield made
    gc.collect()
    made.close()


def _writable_view(lease):
    """Ask for a writable buffer, as a consumer that writes would (ctypes does)."""
    import ctypes
    return (ctypes.c_char * lease.location.size).from_buffer(lease)


def blob(key: int, size: int = 3000) -> np.ndarray:
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8)


def test_a_lease_pins_its_entry_under_pressure_and_frees_it_after(cache):
    cache.put(1, blob(1))
    with cache.lease(1) as lease:
        where = cache.location(1)
        assert lease.location == where
        for key in range(2, 200):            # many times the tiers: everything else churns
            cache.put(key, blob(key))
            cache.access(key)
        assert 1 in cache and cache.location(1) == where
        assert cache.read(1).tobytes() == blob(1).tobytes()
        with pytest.raises(vc.PinnedError, match="Fix"):
            cache.put(1, blob(9))
        with pytest.raises(vc.PinnedError, match="Fix"):
            cache.remove(1)
    assert cache._engine.pins(1) == 0
    cache.remove(1)
    cache.check()


def test_views_are_zero_copy_and_read_only_unless_asked(cache):
    if not cache.mapped:
        pytest.skip("device-only memory has no CPU view (tested below)")
    cache.put(5, blob(5))
    with cache.lease(5) as lease:
        array = np.asarray(lease)
        assert array.tobytes() == blob(5).tobytes() and not array.flags.writeable
        tensor = np.from_dlpack(lease)
        assert tensor.tobytes() == blob(5).tobytes() and not tensor.flags.writeable
        view = memoryview(lease)
        with pytest.raises(TypeError):
            view[0] = 1
        view.release()
        with pytest.raises((BufferError, TypeError)):
            _writable_view(lease)
        del array, tensor
    with cache.lease(5, writable=True) as lease:
        view = np.from_dlpack(lease)
        view[:4] = 7
        del view
    assert cache.read(5)[:4].tolist() == [7, 7, 7, 7]
    cache.check()


def test_a_view_kept_past_the_lease_refuses_to_end_it(cache):
    if not cache.mapped:
        pytest.skip("device-only memory has no CPU view")
    cache.put(3, blob(3))
    lease = cache.lease(3)
    view = memoryview(lease)
    with pytest.raises(BufferError, match="Fix"):
        lease.release()
    assert cache._engine.pins(3) == 1           # still pinned: the view stays valid
    with pytest.raises(BufferError, match="Fix"):
        cache.close()                          # closing would free memory under the view
    assert bytes(view[:10]) == blob(3)[:10].tobytes()
    view.release()
    lease.release()
    with pytest.raises(BufferError, match="ended"):
        memoryview(lease)
    with pytest.raises(BufferError, match="ended"):
        lease.__dlpack__(max_version=(1, 0))
    cache.check()


def test_a_dlpack_tensor_keeps_the_lease_until_it_is_gone(cache):
    if not cache.mapped:
        pytest.skip("device-only memory has no CPU view")
    cache.put(4, blob(4))
    lease = cache.lease(4, writable=True)
    capsule = lease.__dlpack__()               # an unconsumed legacy capsule
    with pytest.raises(BufferError):
        lease.release()
    del capsule
    gc.collect()
    lease.release()
    with pytest.raises(BufferError, match="DLPack 1.0"):
        cache.lease(4).__dlpack__()            # read-only needs a versioned consumer
    cache.unpin(4)
    cache.check()


def test_leases_of_device_only_memory_give_a_location_but_no_view(cache):
    if cache.mapped:
        pytest.skip("this backend maps its memory")
    cache.put(6, blob(6))
    with cache.lease(6) as lease:
        assert lease.location.buffer != 0
        with pytest.raises(BufferError, match="device-only"):
            memoryview(lease)


def test_a_lease_of_a_missing_key_raises(cache):
    with pytest.raises(vc.KeyNotFoundError):
        cache.lease(404)
    cache.check()
