"""What a Vulkan physical device offers: :class:`DeviceInfo` and :func:`devices`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .check import check
from .instance import Instance
from .loader import load
from .memory import MemoryHeap, MemoryType

__all__ = ["DeviceInfo", "devices", "describe_physical_device", "device_extensions", "MAX_BLOCK_SIZE"]

# Blocks larger than this gain nothing and fail on many drivers even below maxMemoryAllocationSize.
MAX_BLOCK_SIZE = 1 << 30

_DEVICE_TYPES = {0: "other", 1: "integrated-gpu", 2: "discrete-gpu", 3: "virtual-gpu", 4: "cpu"}


@dataclass(frozen=True)
class DeviceInfo:
    """Properties of one physical device that the cache's choices depend on.

    ``heap_budgets``/``heap_usage`` come from ``VK_EXT_memory_budget`` and are None when the
    device does not offer it.  ``max_memory_allocation_size`` comes from
    ``VkPhysicalDeviceMaintenance3Properties`` (None on a 1.0 driver without it).
    """

    index: int
    name: str
    device_type: str
    api_version: tuple[int, int, int]
    driver_version: int
    vendor_id: int
    device_id: int
    memory_heaps: tuple[MemoryHeap, ...]
    memory_types: tuple[MemoryType, ...]
    max_memory_allocation_size: int | None
    max_storage_buffer_range: int
    min_storage_buffer_offset_alignment: int
    max_compute_work_group_count: tuple[int, int, int]
    heap_budgets: tuple[int, ...] | None = None
    heap_usage: tuple[int, ...] | None = None
    extensions: tuple[str, ...] = field(default=(), repr=False)
    backend: str = "vulkan"
    #: ``VkPhysicalDeviceIDProperties.deviceUUID``: what an importer (another Vulkan device,
    #: CUDA) compares to know that exported memory is its own (empty where unknown).
    device_uuid: bytes = field(default=b"", repr=False)

    @property
    def max_block_size(self) -> int:
        """The largest block the wrapper allocates: 1 GiB, or less when the driver says so."""
        limit = self.max_memory_allocation_size
        return MAX_BLOCK_SIZE if limit is None else min(limit, MAX_BLOCK_SIZE)

    def available_budgets(self) -> tuple[int, ...] | None:
        """Per heap, the bytes this process may still allocate (budget - usage), or None if unknown."""
        if self.heap_budgets is None or self.heap_usage is None:
            return None
        return tuple(max(0, budget - usage) for budget, usage in zip(self.heap_budgets, self.heap_usage))

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of every field (for the ``info`` command)."""
        return {
            "index": self.index, "name": self.name, "device_type": self.device_type,
            "api_version": ".".join(map(str, self.api_version)), "driver_version": self.driver_version,
            "vendor_id": self.vendor_id, "device_id": self.device_id, "backend": self.backend,
            "memory_heaps": [heap.to_dict() for heap in self.memory_heaps],
            "memory_types": [memory_type.to_dict() for memory_type in self.memory_types],
            "max_memory_allocation_size": self.max_memory_allocation_size,
            "max_storage_buffer_range": self.max_storage_buffer_range,
            "min_storage_buffer_offset_alignment": self.min_storage_buffer_offset_alignment,
            "max_compute_work_group_count": list(self.max_compute_work_group_count),
            "heap_budgets": None if self.heap_budgets is None else list(self.heap_budgets),
            "heap_usage": None if self.heap_usage is None else list(self.heap_usage),
            "device_uuid": self.device_uuid.hex(),
        }

    def __str__(self) -> str:
        lines = [f"[{self.index}] {self.name} ({self.device_type}, Vulkan "
                 f"{'.'.join(map(str, self.api_version))})"]
        for i, heap in enumerate(self.memory_heaps):
            budget = "" if self.heap_budgets is None else f", budget {self.heap_budgets[i]}"
            lines.append(f"    heap {i}: {heap!r}{budget}")
        for i, memory_type in enumerate(self.memory_types):
            lines.append(f"    type {i}: {memory_type!r}")
        lines.append(f"    maxMemoryAllocationSize={self.max_memory_allocation_size} "
                     f"maxStorageBufferRange={self.max_storage_buffer_range} "
                     f"minStorageBufferOffsetAlignment={self.min_storage_buffer_offset_alignment}")
        return "\n".join(lines)


def _version(packed: int) -> tuple[int, int, int]:
    return (packed >> 22 & 0x7F, packed >> 12 & 0x3FF, packed & 0xFFF)


def device_extensions(vk, physical_device) -> tuple[str, ...]:
    ffi, lib = vk.ffi, vk.lib
    count = ffi.new("uint32_t*")
    call = "vkEnumerateDeviceExtensionProperties"
    check(call, lib.vkEnumerateDeviceExtensionProperties(physical_device, ffi.NULL, count, ffi.NULL))
    array = ffi.new("VkExtensionProperties[]", count[0])
    check(call, lib.vkEnumerateDeviceExtensionProperties(physical_device, ffi.NULL, count, array))
    return tuple(sorted(ffi.string(array[i].extensionName).decode() for i in range(count[0])))


def describe_physical_device(instance: Instance, physical_device, index: int) -> DeviceInfo:
    """Read every property :class:`DeviceInfo` holds from *physical_device* of *instance*."""
    vk = load()
    ffi, lib = vk.ffi, vk.lib
    extensions = device_extensions(vk, physical_device)
    properties = ffi.new("VkPhysicalDeviceProperties2*")
    properties.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
    maintenance3 = ffi.new("VkPhysicalDeviceMaintenance3Properties*")
    maintenance3.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES
    identity = ffi.new("VkPhysicalDeviceIDProperties*")
    identity.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES
    max_allocation = None
    device_uuid = b""
    if instance._properties2 is not None:
        properties.pNext = maintenance3
        maintenance3.pNext = identity
        instance._properties2(physical_device, properties)
        max_allocation = int(maintenance3.maxMemoryAllocationSize) or None
        device_uuid = bytes(ffi.buffer(identity.deviceUUID, 16))
    else:
        lib.vkGetPhysicalDeviceProperties(physical_device, ffi.addressof(properties.properties))
    # Copy every field out now: nested structs are views into `properties`.
    base = properties.properties
    limits = base.limits
    name = ffi.string(base.deviceName).decode(errors="replace")

    memory = ffi.new("VkPhysicalDeviceMemoryProperties2*")
    memory.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2
    budget = ffi.new("VkPhysicalDeviceMemoryBudgetPropertiesEXT*")
    budget.sType = 1000237000  # VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT
    has_budget = "VK_EXT_memory_budget" in extensions and instance._memory_properties2 is not None
    if instance._memory_properties2 is not None:
        if has_budget:
            memory.pNext = budget
        instance._memory_properties2(physical_device, memory)
    else:
        lib.vkGetPhysicalDeviceMemoryProperties(physical_device, ffi.addressof(memory.memoryProperties))
    table = memory.memoryProperties
    heaps = tuple(MemoryHeap(int(table.memoryHeaps[i].size), int(table.memoryHeaps[i].flags))
                  for i in range(table.memoryHeapCount))
    types = tuple(MemoryType(int(table.memoryTypes[i].propertyFlags), int(table.memoryTypes[i].heapIndex))
                  for i in range(table.memoryTypeCount))
    heap_budgets = heap_usage = None
    if has_budget:
        heap_budgets = tuple(int(budget.heapBudget[i]) for i in range(len(heaps)))
        heap_usage = tuple(int(budget.heapUsage[i]) for i in range(len(heaps)))
    return DeviceInfo(
        index=index, name=name, device_type=_DEVICE_TYPES.get(int(base.deviceType), "other"),
        api_version=_version(int(base.apiVersion)), driver_version=int(base.driverVersion),
        vendor_id=int(base.vendorID), device_id=int(base.deviceID),
        memory_heaps=heaps, memory_types=types, max_memory_allocation_size=max_allocation,
        max_storage_buffer_range=int(limits.maxStorageBufferRange),
        min_storage_buffer_offset_alignment=int(limits.minStorageBufferOffsetAlignment),
        max_compute_work_group_count=(int(limits.maxComputeWorkGroupCount[0]), int(limits.maxComputeWorkGroupCount[1]),
                                      int(limits.maxComputeWorkGroupCount[2])),
        heap_budgets=heap_budgets, heap_usage=heap_usage, extensions=extensions,
        device_uuid=device_uuid,
    )


def devices() -> list[DeviceInfo]:
    """List every Vulkan physical device with its memory tables and limits.

    Returns an empty list when a loader and driver exist but expose no device.

    Raises:
        VulkanUnavailableError: no Vulkan loader or no driver is installed.
    """
    instance = Instance()
    try:
        return [describe_physical_device(instance, handle, index)
                for index, handle in enumerate(instance.physical_devices())]
    finally:
        instance.destroy()
