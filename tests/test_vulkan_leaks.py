"""Faults and leaks: injected allocation failures, and many create/close cycles."""

import gc

import numpy as np
import pytest

from vyrecache.errors import DeviceOutOfMemoryError
from vyrecache.vulkan import Device, faults, live_objects
from device_only import device_only


def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.fixture(autouse=True)
def no_leftover_faults():
    yield
    faults.reset()


def test_injected_allocation_failure_raises_out_of_memory_and_leaks_nothing(vulkan_device):
    device = vulkan_device
    before = live_objects()
    blocks_before = len(device.blocks)
    faults.fail_next_allocation()
    with pytest.raises(DeviceOutOfMemoryError, match="vkAllocateMemory.*OUT_OF_DEVICE_MEMORY.*Fix") as info:
        device.allocate_block(device.memory_type_for("device", 1 << 20), 1 << 20)
    assert isinstance(info.value, MemoryError)
    assert live_objects() == before and len(device.blocks) == blocks_before
    assert faults.pending_allocation_failures() == 0
    block = device.allocate_block(device.memory_type_for("device", 1 << 20), 1 << 20)  # the next one works
    device.free_block(block)


def test_failure_to_grow_staging_keeps_the_device_usable(require_vulkan):
    # A fresh device: its staging buffer starts at the minimum size.
    device = Device(validation=True)
    block = device_only(device.allocate_block(device.memory_type_for("device", 8 << 20), 8 << 20))
    device.upload(block, 0, b"abc")  # makes a small staging buffer
    staging = device._staging
    before = live_objects()
    faults.fail_next_allocation()
    with pytest.raises(DeviceOutOfMemoryError):
        device.upload(block, 0, np.ones(4 << 20, dtype=np.uint8))
    assert live_objects() == before and device._staging is staging
    assert bytes(device.download(block, 0, 3)) == b"abc"
    device.close()
    assert device.validation_messages == []


def test_fault_hook_validates_its_arguments():
    with pytest.raises(ValueError, match="Fix"):
        faults.fail_next_allocation(-1)
    with pytest.raises(ValueError, match="negative"):
        faults.fail_next_allocation(1, result=0)
    faults.fail_next_allocation(3)
    assert faults.pending_allocation_failures() == 3


def test_two_hundred_blocks_allocated_and_freed_leave_nothing(vulkan_device):
    device = vulkan_device
    before = live_objects()
    memory_type = device.memory_type_for("host", 1 << 20)
    for _ in range(200):
        block = device.allocate_block(memory_type, 1 << 20)
        block.array[::4096] = 1
        device.free_block(block)
    assert live_objects() == before


def test_two_hundred_devices_leave_no_objects_and_flat_memory(require_vulkan):
    baseline_objects = live_objects()

    def cycle():
        with Device() as device:
            block = device.allocate_block(device.memory_type_for("host", 1 << 20), 1 << 20)
            block.array[:] = 3
            with device.record() as recorder:
                recorder.copy_region(block, 0, block, 1 << 19, 1 << 19)

    for _ in range(20):  # warm up driver caches and allocator arenas
        cycle()
    gc.collect()
    start = resident_bytes()
    for _ in range(200):
        cycle()
    gc.collect()
    grown = resident_bytes() - start
    assert live_objects() == baseline_objects
    assert grown < 8 << 20, f"resident memory grew by {grown} bytes over 200 devices"
