"""Memory-type choice on synthetic property tables: by flags, never by device type."""

import pytest

from vyrecache.errors import DeviceError, DeviceOutOfMemoryError
from vyrecache.vulkan.memory import (DEVICE_LOCAL as DL, HEAP_DEVICE_LOCAL, HOST_CACHED as HCA,
                                     HOST_COHERENT as HC, HOST_VISIBLE as HV, LAZILY_ALLOCATED, PROTECTED,
                                     MemoryHeap, MemoryType, choose_memory_type)

GiB = 1 << 30
MiB = 1 << 20

LAVAPIPE = ([MemoryType(DL | HV | HC | HCA, 0)], [MemoryHeap(2 * GiB, HEAP_DEVICE_LOCAL)])

# Shaped like an NVIDIA/AMD desktop card with resizable BAR off: VRAM, system RAM, and the BAR.
DISCRETE = (
    [MemoryType(0, 1),                     # 0: plain host memory the GPU can read
     MemoryType(DL, 0),                    # 1: VRAM
     MemoryType(HV | HC, 1),               # 2: write-combined system memory
     MemoryType(HV | HC | HCA, 1),         # 3: cached system memory
     MemoryType(DL | HV | HC, 2),          # 4: the 256 MiB BAR window
     MemoryType(DL | PROTECTED, 0)],       # 5: protected: never chosen
    [MemoryHeap(24 * GiB, HEAP_DEVICE_LOCAL), MemoryHeap(64 * GiB, 0), MemoryHeap(256 * MiB, HEAP_DEVICE_LOCAL)],
)

INTEGRATED = (
    [MemoryType(DL, 0), MemoryType(DL | HV | HC, 0), MemoryType(DL | HV | HC | HCA, 0),
     MemoryType(DL | LAZILY_ALLOCATED, 0)],
    [MemoryHeap(8 * GiB, HEAP_DEVICE_LOCAL)],
)


def test_lavapipe_single_type_serves_every_kind():
    assert choose_memory_type(*LAVAPIPE, "device", 64 * MiB) == 0
    assert choose_memory_type(*LAVAPIPE, "host", 256 * MiB) == 0


def test_discrete_device_kind_takes_vram_not_the_bar():
    assert choose_memory_type(*DISCRETE, "device", 4 * GiB) == 1


def test_discrete_host_kind_prefers_cached_system_memory_over_the_bar():
    assert choose_memory_type(*DISCRETE, "host", 16 * GiB) == 3


def test_discrete_host_kind_falls_back_to_the_bar_only_when_nothing_else_is_host_visible():
    types, heaps = DISCRETE
    only_bar = [t if t.property_flags & DL else MemoryType(0, t.heap_index) for t in types]
    assert choose_memory_type(only_bar, heaps, "host", 128 * MiB) == 4


def test_device_kind_moves_to_next_type_when_the_vram_budget_is_spent():
    # VRAM has 1 GiB of budget left and the BAR is too small: system memory the GPU reads (type 0).
    assert choose_memory_type(*DISCRETE, "device", 2 * GiB, budgets=[1 * GiB, 60 * GiB, 256 * MiB]) == 0
    assert choose_memory_type(*DISCRETE, "device", 128 * MiB, budgets=[0, 60 * GiB, 256 * MiB]) == 4


def test_integrated_device_kind_takes_non_host_visible_and_skips_lazy_memory():
    assert choose_memory_type(*INTEGRATED, "device", GiB) == 0
    assert choose_memory_type(*INTEGRATED, "host", GiB) == 2


def test_allowed_types_mask_is_respected():
    assert choose_memory_type(*DISCRETE, "device", 128 * MiB, allowed_types=~(1 << 1) & 0xFF) == 4


def test_tier_larger_than_every_heap_names_sizes_and_fix():
    with pytest.raises(DeviceOutOfMemoryError) as info:
        choose_memory_type(*LAVAPIPE, "device", 3 * GiB)
    message = str(info.value)
    assert str(3 * GiB) in message and str(2 * GiB) in message and "Fix:" in message
    assert isinstance(info.value, MemoryError)


def test_budget_smaller_than_tier_is_refused():
    with pytest.raises(DeviceOutOfMemoryError, match="budget"):
        choose_memory_type(*LAVAPIPE, "host", GiB, budgets=[GiB - 1])
    assert choose_memory_type(*LAVAPIPE, "host", GiB, budgets=[None]) == 0


def test_host_kind_without_host_coherent_memory_is_a_clear_error():
    types = [MemoryType(DL, 0), MemoryType(HV, 0)]
    with pytest.raises(DeviceError, match="HOST_VISIBLE") as info:
        choose_memory_type(types, [MemoryHeap(GiB, HEAP_DEVICE_LOCAL)], "host", MiB)
    assert "Fix:" in str(info.value)


def test_unknown_kind_is_rejected_with_a_fix():
    with pytest.raises(ValueError, match="auto"):
        choose_memory_type(*LAVAPIPE, "auto", MiB)
