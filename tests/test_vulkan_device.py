"""The Vulkan wrapper on a real device (lavapipe here): blocks, copies, staging, errors, close."""

import numpy as np
import pytest

from vyrecache.copytable import COPY_DTYPE, empty_copy_table
from vyrecache.errors import CacheClosedError, DeviceError, DeviceLostError, DeviceOutOfMemoryError
from vyrecache.vulkan import Device, devices, live_objects
from vyrecache.vulkan.check import check, checked
from device_only import device_only

KiB = 1 << 10
MiB = 1 << 20


def random_bytes(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def test_devices_lists_lavapipe_with_memory_tables_and_limits(require_vulkan):
    before = live_objects()
    found = devices()
    assert live_objects() == before  # the listing's short-lived instance is gone
    assert found
    info = found[0]
    assert info.name and info.api_version >= (1, 1, 0)
    assert info.memory_types and info.memory_heaps
    assert all(t.heap_index < len(info.memory_heaps) for t in info.memory_types)
    assert info.max_memory_allocation_size and info.max_memory_allocation_size >= 256 * MiB
    assert info.max_storage_buffer_range >= 128 * MiB
    assert info.min_storage_buffer_offset_alignment >= 1
    assert min(info.max_compute_work_group_count) >= 65535
    data = info.to_dict()
    assert data["name"] == info.name and data["memory_types"][0]["flags"]
    assert "heap 0" in str(info) and info.name in repr(info)
    if info.device_type == "cpu":  # lavapipe: one type that is device-local and host-visible
        assert info.heap_budgets is None or len(info.heap_budgets) == len(info.memory_heaps)


def test_every_kind_resolves_to_a_storage_capable_type(vulkan_device):
    for kind in ("device", "host"):
        index = vulkan_device.memory_type_for(kind, 16 * MiB)
        assert vulkan_device._buffer_type_bits >> index & 1


def test_host_visible_block_is_mapped_and_round_trips_bytes(vulkan_device):
    block = vulkan_device.allocate_block(vulkan_device.memory_type_for("host", MiB), MiB)
    assert block.host_visible and block.address != 0 and block.array.nbytes == MiB
    assert block.buffer_handle != 0 and block.size == MiB
    data = random_bytes(MiB)
    vulkan_device.upload(block, 0, data)
    assert np.array_equal(vulkan_device.download(block, 0, MiB), data)
    out = bytearray(100)
    vulkan_device.download(block, 5, 100, out)
    assert bytes(out) == data[5:105].tobytes()
    vulkan_device.free_block(block)
    assert block.freed and block.array is None and block.address == 0
    vulkan_device.free_block(block)  # idempotent


def test_block_ids_are_small_and_reused(vulkan_device):
    memory_type = vulkan_device.memory_type_for("device", 4 * KiB)
    first = [vulkan_device.allocate_block(memory_type, 4 * KiB) for _ in range(4)]
    ids = [block.id for block in first]
    assert len(set(ids)) == 4 and max(ids) < 16
    vulkan_device.free_block(first[1])
    again = vulkan_device.allocate_block(memory_type, 4 * KiB)
    assert again.id == ids[1]
    for block in (first[0], first[2], first[3], again):
        vulkan_device.free_block(block)


def test_copy_table_moves_many_rows_across_waves(vulkan_device):
    device = vulkan_device
    memory_type = device.memory_type_for("device", MiB)
    a, b, c = (device.allocate_block(memory_type, MiB) for _ in range(3))
    source = random_bytes(MiB, seed=1)
    device.upload(a, 0, source)
    # Wave 1: 1000 rows of 512 bytes a -> b and 1000 rows a -> c, interleaved; wave 2: b -> c.
    rows = 1000
    table = empty_copy_table(2 * rows + rows)
    chunk = 512
    offsets = np.arange(rows, dtype=np.uint64) * chunk
    table["src_block"][:2 * rows:2] = a.id
    table["dst_block"][:2 * rows:2] = b.id
    table["src_offset"][:2 * rows:2] = offsets
    table["dst_offset"][:2 * rows:2] = offsets[::-1]  # reversed into b
    table["src_block"][1:2 * rows:2] = a.id
    table["dst_block"][1:2 * rows:2] = c.id
    table["src_offset"][1:2 * rows:2] = offsets
    table["dst_offset"][1:2 * rows:2] = offsets
    table["size"][:2 * rows] = chunk
    # Wave 2 reads what wave 1 wrote into b: only correct with the barrier between waves.
    table["src_block"][2 * rows:] = b.id
    table["dst_block"][2 * rows:] = c.id
    table["src_offset"][2 * rows:] = offsets
    table["dst_offset"][2 * rows:] = offsets + np.uint64(rows * chunk)
    table["size"][2 * rows:] = chunk
    with device.record() as recorder:
        recorder.copy(table, wave_starts=[2 * rows])
        # 2 groups in wave 1, 1 in wave 2, 1 barrier between them
        assert recorder.commands == 4
    reversed_chunks = source[:rows * chunk].reshape(rows, chunk)[::-1].ravel()
    assert np.array_equal(device.download(b, 0, rows * chunk), reversed_chunks)
    assert np.array_equal(device.download(c, 0, rows * chunk), source[:rows * chunk])
    assert np.array_equal(device.download(c, rows * chunk, rows * chunk), reversed_chunks)
    for block in (a, b, c):
        device.free_block(block)


def test_copy_table_skips_zero_size_rows_and_rejects_bad_rows(vulkan_device):
    device = vulkan_device
    memory_type = device.memory_type_for("device", 4 * KiB)
    a = device.allocate_block(memory_type, 4 * KiB)
    b = device.allocate_block(memory_type, 4 * KiB)
    table = np.array([(a.id, b.id, 0, 0, 0)], dtype=COPY_DTYPE)
    with device.record() as recorder:
        recorder.copy(table)
        assert recorder.commands == 0
    bad = np.array([(a.id, b.id, 4000, 0, 200)], dtype=COPY_DTYPE)
    with pytest.raises(ValueError, match="leaves a block"):
        with device.record() as recorder:
            recorder.copy(bad)
    with pytest.raises(TypeError, match="COPY_DTYPE"):
        with device.record() as recorder:
            recorder.copy(np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="only ids"):
        with device.record() as recorder:
            recorder.copy(np.array([(a.id, 999, 0, 0, 1)], dtype=COPY_DTYPE))
    device.free_block(a)
    device.free_block(b)


def test_upload_and_download_through_staging(vulkan_device):
    device = vulkan_device
    block = device_only(device.allocate_block(device.memory_type_for("device", 3 * MiB), 3 * MiB))
    data = random_bytes(3 * MiB - 100, seed=2)
    device.upload(block, 37, data)
    assert device._staging is not None
    if block.array is not None:  # lavapipe: the mapping shows the bytes a GPU copy delivered
        assert np.array_equal(block.array[37:37 + data.size], data)
    out = np.empty(data.size, dtype=np.uint8)
    device.download(block, 37, data.size, out)
    assert np.array_equal(out, data)
    device.free_block(block)


def test_staging_handles_transfers_larger_than_the_staging_buffer(vulkan_device, monkeypatch):
    from vyrecache.vulkan import device as device_module
    monkeypatch.setattr(device_module, "_STAGING_MAX", 1 * MiB)
    device = vulkan_device
    block = device_only(device.allocate_block(device.memory_type_for("device", 4 * MiB), 4 * MiB))
    data = random_bytes(3 * MiB + 5, seed=3)
    device.upload(block, 1, data)
    assert np.array_equal(device.download(block, 1, data.size), data)
    device.free_block(block)


def test_out_of_range_transfers_are_refused(vulkan_device):
    device = vulkan_device
    block = device.allocate_block(device.memory_type_for("host", 4 * KiB), 4 * KiB)
    with pytest.raises(ValueError, match="leaves block"):
        device.upload(block, 4000, b"x" * 100)
    with pytest.raises(ValueError, match="exactly"):
        device.download(block, 0, 10, bytearray(11))
    with pytest.raises(ValueError, match="block size"):
        device.allocate_block(0, 0)
    with pytest.raises(ValueError, match="block size"):
        device.allocate_block(0, (1 << 30) + 1)
    device.free_block(block)


def test_recordings_do_not_nest_and_an_exception_discards_the_recording(vulkan_device):
    device = vulkan_device
    a = device.allocate_block(device.memory_type_for("host", 4 * KiB), 4 * KiB)
    b = device.allocate_block(device.memory_type_for("host", 4 * KiB), 4 * KiB)
    a.array[:] = 7
    b.array[:] = 0
    with pytest.raises(RuntimeError):
        with device.record() as recorder:
            recorder.copy_region(a, 0, b, 0, 4 * KiB)
            raise RuntimeError("abandon")
    assert not b.array.any()
    with device.record():
        with pytest.raises(DeviceError, match="already open"):
            device.record()
    with device.record() as recorder:
        recorder.copy_region(a, 0, b, 0, 4 * KiB)
    assert (b.array == 7).all()
    device.free_block(a)
    device.free_block(b)


def test_checker_maps_results_to_errors_with_call_and_fix():
    assert check("vkWaitForFences", 2) == 2
    with pytest.raises(DeviceOutOfMemoryError, match="vkAllocateMemory.*VK_ERROR_OUT_OF_DEVICE_MEMORY.*Fix"):
        check("vkAllocateMemory", -2)
    with pytest.raises(DeviceOutOfMemoryError, match="VK_ERROR_OUT_OF_HOST_MEMORY"):
        check("vkCreateBuffer", -1)
    with pytest.raises(DeviceLostError, match="vkQueueSubmit.*DEVICE_LOST.*Fix"):
        check("vkQueueSubmit", -4)
    with pytest.raises(DeviceError, match="VK_ERROR_UNKNOWN"):
        check("vkCreateFence", -13)


def test_checker_maps_binding_exceptions(require_vulkan):
    import vulkan
    with pytest.raises(DeviceOutOfMemoryError, match="vkAllocateMemory"):
        with checked("vkAllocateMemory"):
            raise vulkan.VkErrorOutOfDeviceMemory()
    with pytest.raises(DeviceLostError):
        with checked("vkQueueSubmit"):
            raise vulkan.VkErrorDeviceLost()


def test_closed_device_refuses_use_and_frees_everything(require_vulkan):
    before = live_objects()
    device = Device(validation=True)
    block = device.allocate_block(device.memory_type_for("host", 4 * KiB), 4 * KiB)
    device.close()
    device.close()  # idempotent
    assert block.freed and device.closed
    assert live_objects() == before
    assert device.validation_messages == []
    with pytest.raises(CacheClosedError, match="Fix:"):
        device.allocate_block(0, 4 * KiB)
    with pytest.raises(CacheClosedError):
        device.record()
    with pytest.raises(CacheClosedError):
        device.upload(block, 0, b"x")


def test_unclosed_device_is_released_with_a_resource_warning(require_vulkan):
    import gc
    before = live_objects()
    device = Device()
    device.allocate_block(0, 4 * KiB)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del device
        gc.collect()
    assert live_objects() == before


def test_bad_device_index_lists_the_fix(require_vulkan):
    with pytest.raises(ValueError, match="out of range.*Fix"):
        Device(index=99)
