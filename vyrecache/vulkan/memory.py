"""Memory-type choice by property flags (pure Python, no Vulkan needed).

A tier asks for a *kind* of memory, never for a device type:

``"device"``
    Prefer ``DEVICE_LOCAL``.  When a device-local type that is *not* host-visible exists (the
    VRAM of a discrete GPU) take it, so a device tier never lands on the small
    ``DEVICE_LOCAL|HOST_VISIBLE`` BAR heap.  On UMA devices (lavapipe, integrated GPUs) every
    device-local type is host-visible and that is fine.
``"host"``
    Require ``HOST_VISIBLE|HOST_COHERENT`` (the cache memcpys into the mapping without flushes).
    Prefer types that are not ``DEVICE_LOCAL`` so a large host tier does not eat the BAR heap,
    then ``HOST_CACHED`` (fast CPU reads).

``"auto"`` is resolved by the caller: ``"device"`` for the fastest tier, ``"host"`` for the rest.

Among the types that rank equally the lowest index wins: the Vulkan spec orders memory types so
that earlier types of the same flags perform at least as well.  Types that are protected,
lazily allocated (images only) or AMD device-coherent/uncached are never chosen.

The chosen type's heap must hold *size* bytes, and the heap's remaining budget must too where
``VK_EXT_memory_budget`` reports one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DeviceError, DeviceOutOfMemoryError

__all__ = [
    "MemoryType", "MemoryHeap", "choose_memory_type", "memory_flag_names", "heap_flag_names",
    "DEVICE_LOCAL", "HOST_VISIBLE", "HOST_COHERENT", "HOST_CACHED", "LAZILY_ALLOCATED", "PROTECTED",
    "HEAP_DEVICE_LOCAL", "HEAP_MULTI_INSTANCE", "KINDS",
]

# VkMemoryPropertyFlagBits, spelled out so this module works without the binding.
DEVICE_LOCAL = 0x1
HOST_VISIBLE = 0x2
HOST_COHERENT = 0x4
HOST_CACHED = 0x8
LAZILY_ALLOCATED = 0x10
PROTECTED = 0x20
DEVICE_COHERENT_AMD = 0x40
DEVICE_UNCACHED_AMD = 0x80
RDMA_CAPABLE_NV = 0x100
# VkMemoryHeapFlagBits
HEAP_DEVICE_LOCAL = 0x1
HEAP_MULTI_INSTANCE = 0x2

KINDS = ("device", "host")

_NEVER = LAZILY_ALLOCATED | PROTECTED | DEVICE_COHERENT_AMD | DEVICE_UNCACHED_AMD
_MEMORY_FLAG_NAMES = (
    (DEVICE_LOCAL, "DEVICE_LOCAL"), (HOST_VISIBLE, "HOST_VISIBLE"), (HOST_COHERENT, "HOST_COHERENT"),
    (HOST_CACHED, "HOST_CACHED"), (LAZILY_ALLOCATED, "LAZILY_ALLOCATED"), (PROTECTED, "PROTECTED"),
    (DEVICE_COHERENT_AMD, "DEVICE_COHERENT_AMD"), (DEVICE_UNCACHED_AMD, "DEVICE_UNCACHED_AMD"),
    (RDMA_CAPABLE_NV, "RDMA_CAPABLE_NV"),
)
_HEAP_FLAG_NAMES = ((HEAP_DEVICE_LOCAL, "DEVICE_LOCAL"), (HEAP_MULTI_INSTANCE, "MULTI_INSTANCE"))


def _names(flags: int, table: tuple[tuple[int, str], ...]) -> str:
    names = [name for bit, name in table if flags & bit]
    known = 0
    for bit, _ in table:
        known |= bit
    if flags & ~known:
        names.append(hex(flags & ~known))
    return "|".join(names) or "0"


def memory_flag_names(flags: int) -> str:
    """Spell ``VkMemoryPropertyFlags`` as ``"DEVICE_LOCAL|HOST_VISIBLE"`` (``"0"`` when empty)."""
    return _names(flags, _MEMORY_FLAG_NAMES)


def heap_flag_names(flags: int) -> str:
    """Spell ``VkMemoryHeapFlags`` as ``"DEVICE_LOCAL"`` (``"0"`` when empty)."""
    return _names(flags, _HEAP_FLAG_NAMES)


@dataclass(frozen=True)
class MemoryType:
    """One entry of ``VkPhysicalDeviceMemoryProperties.memoryTypes``: property flags and heap index."""

    property_flags: int
    heap_index: int

    def __repr__(self) -> str:
        return f"MemoryType({memory_flag_names(self.property_flags)}, heap={self.heap_index})"

    def to_dict(self) -> dict:
        """Return a JSON-ready dict: flags as an int and spelled out, and the heap index."""
        return {"property_flags": self.property_flags, "flags": memory_flag_names(self.property_flags),
                "heap_index": self.heap_index}


@dataclass(frozen=True)
class MemoryHeap:
    """One entry of ``VkPhysicalDeviceMemoryProperties.memoryHeaps``: size in bytes and heap flags."""

    size: int
    flags: int

    def __repr__(self) -> str:
        return f"MemoryHeap({_human(self.size)}, {heap_flag_names(self.flags)})"

    def to_dict(self) -> dict:
        """Return a JSON-ready dict: size in bytes, flags as an int and spelled out."""
        return {"size": self.size, "flags": self.flags, "flag_names": heap_flag_names(self.flags)}


def _human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << (shift - 4)) == 0:
            return f"{size / (1 << shift):g} {unit}"
    return f"{size} B"


def _rank(kind: str, flags: int) -> tuple[int, ...] | None:
    """Sort key of a type for *kind* (lower is better), or None when it does not qualify."""
    if flags & _NEVER:
        return None
    device_local = bool(flags & DEVICE_LOCAL)
    host_visible = bool(flags & HOST_VISIBLE)
    if kind == "device":
        # 0: VRAM; 1: device-local and mappable (UMA memory or a BAR heap); 2: anything else.
        return (0 if device_local and not host_visible else 1 if device_local else 2,)
    if (flags & (HOST_VISIBLE | HOST_COHERENT)) != HOST_VISIBLE | HOST_COHERENT:
        return None
    return (1 if device_local else 0, 0 if flags & HOST_CACHED else 1)


def choose_memory_type(memory_types: Sequence[MemoryType], memory_heaps: Sequence[MemoryHeap],
                       kind: str, size: int, budgets: Sequence[int | None] | None = None,
                       allowed_types: int = 0xFFFFFFFF) -> int:
    """Return the index of the memory type a tier of *kind* and *size* bytes should use.

    *memory_types* and *memory_heaps* are the device's property tables (real or synthetic).
    *budgets*, when given, holds per heap the bytes this process may still allocate
    (``heapBudget - heapUsage`` of ``VK_EXT_memory_budget``), or None for an unknown budget.
    *allowed_types* is a bit mask of acceptable type indices (``VkMemoryRequirements.memoryTypeBits``).

    Raises:
        ValueError: *kind* is not ``"device"`` or ``"host"``, or *size* is negative.
        DeviceError: no memory type has the flags *kind* needs (``"host"`` needs
            HOST_VISIBLE|HOST_COHERENT).
        DeviceOutOfMemoryError: types qualify, but none of their heaps (or budgets) holds *size*.
    """
    if kind not in KINDS:
        raise ValueError(f"memory kind must be one of {KINDS}, got {kind!r}. "
                         "Fix: resolve \"auto\" to \"device\" for the fastest tier and \"host\" for "
                         "the others before choosing a memory type.")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}. Fix: pass the tier capacity in bytes.")
    candidates = []
    for index, memory_type in enumerate(memory_types):
        if not allowed_types >> index & 1:
            continue
        rank = _rank(kind, memory_type.property_flags)
        if rank is not None:
            candidates.append((rank, index))
    if not candidates:
        table = ", ".join(f"{i}: {memory_flag_names(t.property_flags)}" for i, t in enumerate(memory_types))
        raise DeviceError(f"no memory type is suitable for memory={kind!r} (types: {table or 'none'}). "
                          "Fix: use memory=\"device\" on this device, or another device.")
    candidates.sort()
    refusals = []
    for _, index in candidates:
        heap_index = memory_types[index].heap_index
        heap = memory_heaps[heap_index]
        budget = budgets[heap_index] if budgets is not None and heap_index < len(budgets) else None
        if size > heap.size:
            refusals.append(f"type {index} on heap {heap_index} of {heap.size} bytes")
        elif budget is not None and size > budget:
            refusals.append(f"type {index} on heap {heap_index} with {budget} bytes of budget left")
        else:
            return index
    raise DeviceOutOfMemoryError(
        f"no memory heap can hold a memory={kind!r} tier of {size} bytes ({'; '.join(refusals)}). "
        "Fix: make the tier smaller, free device memory held by other caches or processes, or use "
        "another memory kind for this tier.")
