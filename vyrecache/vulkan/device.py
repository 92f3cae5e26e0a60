"""The Vulkan device: :class:`Device` and the memory :class:`Block` it hands out.

One ``Device`` owns, in creation order: an instance (with the validation layer and a debug
messenger when asked), the chosen physical device, a logical device with one queue of a family
that supports compute (and therefore transfer), a command pool with one reusable primary
command buffer, a fence, and every block, staging buffer, pipeline and descriptor pool created
through it.  ``close()`` destroys all of it in reverse order.

A ``Block`` is one ``VkDeviceMemory`` with one ``VkBuffer`` (storage, transfer source and
destination) bound over all of it; host-visible blocks stay mapped for their whole life.
Neither class is thread-safe: the cache above serialises calls under its own lock.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
import weakref
from collections.abc import Iterable
from types import MappingProxyType

import numpy as np

from . import faults
from .check import check
from .commands import CommandRecorder
from .info import DeviceInfo, describe_physical_device
from .instance import Instance, as_handle
from .lifetime import allocate_command_buffer, create_command_pool, create_fence, destroy_each, free_command_buffers
from .loader import load, unavailable_error
from .memory import HOST_VISIBLE, choose_memory_type
from .objects import created, destroyed
from .pipeline import ComputePipeline, DescriptorPool
from ..errors import CacheClosedError, DeviceError

__all__ = ["Device", "Block", "EXTERNAL_MEMORY_FD", "TIMELINE_EXTENSION"]

_BUFFER_USAGE = 0x20 | 0x1 | 0x2  # STORAGE_BUFFER | TRANSFER_SRC | TRANSFER_DST
_FENCE_TIMEOUT_NS = 120 * 1_000_000_000
#: The device extension of timeline semaphores (core in Vulkan 1.2; the instance asks for 1.1).
TIMELINE_EXTENSION = "VK_KHR_timeline_semaphore"
_STAGING_MIN = 1 << 20
_STAGING_MAX = 64 << 20
_VK_TIMEOUT = 2
_COPY_CAPABLE = 0x1 | 0x2 | 0x4  # GRAPHICS | COMPUTE | TRANSFER: each can record vkCmdCopyBuffer
_OPAQUE_FD = 0x1                 # VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT
_EXPORTABLE = 0x2                # VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT

#: The device extension behind exportable memory (``Lease.export_fd``).
EXTERNAL_MEMORY_FD = "VK_KHR_external_memory_fd"

# Devices still open at interpreter exit are closed while the interpreter is intact, before
# module teardown could leave driver threads touching freed Python objects.
_open_devices: "weakref.WeakSet[Device]" = weakref.WeakSet()


@atexit.register
def _close_open_devices() -> None:
    for device in list(_open_devices):
        try:
            device.close()
        except Exception:
            pass


def _address(ffi, handle) -> int:
    return int(ffi.cast("uintptr_t", handle))


class Block:
    """One ``VkDeviceMemory`` with one storage/transfer ``VkBuffer`` bound at offset 0 over all of it.

    Attributes:
        id: small device-global integer naming the block in copy tables (reused after free).
        size: bytes usable through the buffer (the size asked for).
        allocation_size: bytes of the ``VkDeviceMemory`` (what an importer of an exported fd
            allocates).
        memory_type_index: the Vulkan memory type the memory came from.
        host_visible: whether the memory is mapped; then ``array`` is a writable numpy uint8
            view of the whole block and ``address`` the address of the mapping (0 when not mapped).
        buffer_handle: the ``VkBuffer`` handle as an int.

    Views of ``array`` must not be used after the block is freed: the mapping is gone.
    """

    __slots__ = ("id", "size", "allocation_size", "memory_type_index", "host_visible", "buffer_handle",
                 "address", "array", "_device", "_memory", "_buffer", "__weakref__")

    def __init__(self, device: "Device", block_id: int, size: int, memory_type_index: int,
                 host_visible: bool, memory, buffer, address: int, array) -> None:
        self._device = device
        self.id = block_id
        self.size = size
        self.allocation_size = size  # the VkDeviceMemory's size (>= size), set once allocated
        self.memory_type_index = memory_type_index
        self.host_visible = host_visible
        self._memory = memory
        self._buffer = buffer
        self.buffer_handle = _address(device._vk.ffi, buffer)
        self.address = address
        self.array = array

    @property
    def freed(self) -> bool:
        """Whether the block was freed (explicitly or by closing its device)."""
        return self._buffer is None

    def __repr__(self) -> str:
        state = "freed" if self.freed else ("mapped" if self.host_visible else "device-only")
        return f"<Block id={self.id} size={self.size} type={self.memory_type_index} {state}>"


class Device:
    """A Vulkan logical device with one compute queue, ready for the cache's transfers.

    *index* picks the physical device (as listed by ``devices()``; default: the first).
    *validation* enables ``VK_LAYER_KHRONOS_validation``; every warning or error it reports is
    appended to :attr:`validation_messages`.  It defaults to on when the environment has
    ``VYRECACHE_VALIDATION=1``.

    Raises:
        VulkanUnavailableError: no loader, no driver, or no physical device.
        ValueError: *index* does not name a device.
        DeviceError: the validation layer is missing, or device creation failed.
    """

    _instance: Instance | None

    def __init__(self, index: int | None = None, validation: bool | None = None) -> None:
        self._init_state()
        if validation is None:
            validation = os.environ.get("VYRECACHE_VALIDATION") == "1"
        self.validation = validation
        try:
            instance = self._instance = Instance(validation, self.validation_messages)
            physical_devices = instance.physical_devices()
            if not physical_devices:
                raise unavailable_error("the Vulkan loader found no physical device")
            if index is None:
                index = 0
            if not 0 <= index < len(physical_devices):
                raise ValueError(f"device index {index} is out of range: {len(physical_devices)} device(s) "
                                 "found. Fix: pick an index listed by `python -m vyrecache info`.")
            self._physical_device = physical_devices[index]
            self.info: DeviceInfo = describe_physical_device(instance, self._physical_device, index)
            self.queue_family_index = self._compute_queue_family()
            self._create_device()
            self._finish_setup()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_handles(cls, instance, physical_device, device, queue_family_index: int, queue_index: int = 0,
                     *, enabled_extensions: Iterable[str] = ()) -> "Device":
        """Use a Vulkan instance and device that the caller's own code created.

        The handles are cffi handles of the ``vulkan`` binding or their addresses as ints.  The
        wrapper creates its command pools, fences, buffers and memory on *device* and destroys
        them in :meth:`close`, which never destroys the borrowed device or instance: the caller
        does, after closing every cache that uses them.  Cache operations submit to queue
        *queue_index* of family *queue_family_index*: the caller must not submit to that queue
        from another thread while a cache operation runs (Vulkan requires queue access to be
        externally synchronised), or give the cache a queue of its own.  *enabled_extensions*
        names the device extensions the caller enabled at ``vkCreateDevice``; those of
        :func:`required_device_extensions` turn on the optional features (name
        ``VK_KHR_timeline_semaphore`` only with its ``timelineSemaphore`` feature enabled too).

        Raises:
            TypeError: a handle is neither a cffi handle nor an int.
            ValueError: *physical_device* is not one of *instance*'s, or the queue does not exist
                or cannot copy.
        """
        self = cls.__new__(cls)
        self._init_state()
        self.validation = False
        self._owns_handles = False
        try:
            vk = self._vk
            names = tuple(enabled_extensions) if not isinstance(enabled_extensions, str) else None
            if names is None or not all(isinstance(name, str) for name in names):
                raise TypeError(f"enabled_extensions must be an iterable of extension names, got "
                                f"{enabled_extensions!r}. Fix: pass the names given to vkCreateDevice, "
                                f"e.g. ['VK_KHR_external_memory_fd'].")
            borrowed = self._instance = Instance.borrow(instance)
            physical = as_handle(vk, "VkPhysicalDevice", physical_device)
            listed = borrowed.physical_devices()
            addresses = [_address(vk.ffi, handle) for handle in listed]
            if _address(vk.ffi, physical) not in addresses:
                raise ValueError(f"physical device {_address(vk.ffi, physical):#x} is not one of the "
                                 f"instance's {len(listed)} physical device(s). Fix: pass the "
                                 "VkPhysicalDevice the VkDevice was created from.")
            index = addresses.index(_address(vk.ffi, physical))
            self._physical_device = listed[index]
            self.info = describe_physical_device(borrowed, self._physical_device, index)
            self._check_queue(queue_family_index, queue_index)
            self.queue_family_index = queue_family_index
            self.queue_index = queue_index
            self.enabled_extensions = frozenset(names)
            # The caller names the extension only with its timelineSemaphore feature enabled.
            self.timeline_semaphores = TIMELINE_EXTENSION in self.enabled_extensions
            self._handle = as_handle(vk, "VkDevice", device)
            self._fetch_queue()
            self._finish_setup()
        except BaseException:
            self.close()
            raise
        return self

    def _init_state(self) -> None:
        self._vk = load()
        self._handle = None
        self._closed = False
        self._owns_handles = True
        self._instance = None
        self._command_pool = self._command_buffer = self._fence = None
        self._blocks: dict[int, Block] = {}
        self._buffers_by_id: list = []
        self._sizes_by_id = np.zeros(0, dtype=np.uint64)
        self._free_ids: list[int] = []
        self._resources: set = set()
        self._staging: Block | None = None
        self._recorder: CommandRecorder | None = None
        self.validation_messages: list[str] = []
        self.queue_index = 0
        self.enabled_extensions: frozenset[str] = frozenset()
        self.exportable = False
        self.timeline_semaphores = False

    def _finish_setup(self) -> None:
        self.exportable = EXTERNAL_MEMORY_FD in self.enabled_extensions and self._can_export()
        if self.exportable:
            self._get_memory_fd = self._device_proc("vkGetMemoryFdKHR", "PFN_vkGetMemoryFdKHR")
        self._create_commands()
        self._buffer_type_bits = self._probe_buffer_type_bits()
        _open_devices.add(self)         # set up: closed at exit unless its owner closes it first

    # -- construction ---------------------------------------------------------------------------

    def _compute_queue_family(self) -> int:
        for i, (flags, count) in enumerate(self._queue_families()):
            if flags & 0x2 and count > 0:  # VK_QUEUE_COMPUTE_BIT
                return i
        raise DeviceError(f"device {self.info.name!r} has no queue family with compute support. "
                          "Fix: pick another device (device_index) or use the host backend.")

    def _queue_families(self):
        ffi, lib = self._vk.ffi, self._vk.lib
        count = ffi.new("uint32_t*")
        lib.vkGetPhysicalDeviceQueueFamilyProperties(self._physical_device, count, ffi.NULL)
        families = ffi.new("VkQueueFamilyProperties[]", count[0])
        lib.vkGetPhysicalDeviceQueueFamilyProperties(self._physical_device, count, families)
        return [(int(families[i].queueFlags), int(families[i].queueCount)) for i in range(count[0])]

    def _check_queue(self, family: int, index: int) -> None:
        families = self._queue_families()
        for name, value in (("queue_family_index", family), ("queue_index", index)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
        if not 0 <= family < len(families):
            raise ValueError(f"queue_family_index {family} does not exist: {self.info.name!r} has "
                             f"{len(families)} queue families. Fix: pass the family your VkDevice's "
                             "queue was created in.")
        flags, count = families[family]
        if not flags & _COPY_CAPABLE:
            raise ValueError(f"queue family {family} of {self.info.name!r} cannot record copy commands "
                             f"(flags {flags:#x}). Fix: give a family with transfer, compute or graphics.")
        if not 0 <= index < count:
            raise ValueError(f"queue_index {index} does not exist: family {family} has {count} "
                             "queue(s). Fix: pass the index of a queue your VkDevice created.")

    def _fetch_queue(self) -> None:
        ffi, lib = self._vk.ffi, self._vk.lib
        queue = ffi.new("VkQueue*")
        lib.vkGetDeviceQueue(self._handle, self.queue_family_index, self.queue_index, queue)
        self._queue = queue[0]

    def _device_proc(self, name: str, pfn_type: str):
        ffi, lib = self._vk.ffi, self._vk.lib
        pointer = lib.vkGetDeviceProcAddr(self._handle, name.encode())
        if pointer == ffi.NULL:
            raise DeviceError(f"{name} is missing on {self.info.name!r} although its extension is "
                              "enabled. Fix: update the driver, or leave the extension out.")
        return ffi.cast(pfn_type, pointer)

    def _can_export(self) -> bool:
        """Whether buffers like the cache's can be backed by exportable opaque-fd memory."""
        vk = self._vk
        ffi = vk.ffi
        assert self._instance is not None
        query = self._instance.proc("vkGetPhysicalDeviceExternalBufferProperties",
                                    "PFN_vkGetPhysicalDeviceExternalBufferProperties",
                                    fallback="vkGetPhysicalDeviceExternalBufferPropertiesKHR")
        if query is None:
            return False
        info = ffi.new("VkPhysicalDeviceExternalBufferInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_BUFFER_INFO
        info.usage = _BUFFER_USAGE
        info.handleType = _OPAQUE_FD
        properties = ffi.new("VkExternalBufferProperties*")
        properties.sType = vk.VK_STRUCTURE_TYPE_EXTERNAL_BUFFER_PROPERTIES
        query(self._physical_device, info, properties)
        return bool(properties.externalMemoryProperties.externalMemoryFeatures & _EXPORTABLE)

    def _create_device(self) -> None:
        vk = self._vk
        ffi, lib = vk.ffi, vk.lib
        # The optional features where the driver offers them: exportable memory, and timeline
        # semaphores for asynchronous transfers (the extension: the instance asks for 1.1, where
        # the core 1.2 feature is not valid).
        timeline = self._timeline_features()
        extensions = [name for name in (EXTERNAL_MEMORY_FD,) if name in self.info.extensions]
        if timeline is not None:
            extensions.append(TIMELINE_EXTENSION)
        keep = [ffi.new("char[]", name.encode()) for name in extensions]
        extension_names = ffi.new("char*[]", keep)
        priority = ffi.new("float*", 1.0)
        queue_info = ffi.new("VkDeviceQueueCreateInfo*")
        queue_info.sType = vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO
        queue_info.queueFamilyIndex = self.queue_family_index
        queue_info.queueCount = 1
        queue_info.pQueuePriorities = priority
        info = ffi.new("VkDeviceCreateInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO
        info.queueCreateInfoCount = 1
        info.pQueueCreateInfos = queue_info
        info.enabledExtensionCount = len(extensions)
        info.ppEnabledExtensionNames = extension_names if extensions else ffi.NULL
        if timeline is not None:
            info.pNext = timeline
        #: Asynchronous transfers signal a timeline semaphore (else each waits on a fence).
        self.timeline_semaphores = timeline is not None
        out = ffi.new("VkDevice*")
        check("vkCreateDevice", lib.vkCreateDevice(self._physical_device, info, ffi.NULL, out))
        self._handle = out[0]
        created("devices")
        self.enabled_extensions = frozenset(extensions)
        self._fetch_queue()

    def _timeline_features(self):
        """The feature struct enabling timeline semaphores, or None where the device lacks them."""
        vk = self._vk
        ffi = vk.ffi
        if TIMELINE_EXTENSION not in self.info.extensions:
            return None
        assert self._instance is not None
        get_features = self._instance.proc("vkGetPhysicalDeviceFeatures2", "PFN_vkGetPhysicalDeviceFeatures2",
                                           fallback="vkGetPhysicalDeviceFeatures2KHR")
        if get_features is None:
            return None
        timeline = ffi.new("VkPhysicalDeviceTimelineSemaphoreFeatures*")
        timeline.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES
        features = ffi.new("VkPhysicalDeviceFeatures2*")
        features.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2
        features.pNext = timeline
        get_features(self._physical_device, features)
        if not timeline.timelineSemaphore:
            return None
        enable = ffi.new("VkPhysicalDeviceTimelineSemaphoreFeatures*")
        enable.sType = vk.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES
        enable.timelineSemaphore = 1
        return enable

    def _create_commands(self) -> None:
        vk = self._vk
        ffi = vk.ffi
        self._command_pool = create_command_pool(self)
        self._command_buffer_slot = allocate_command_buffer(self, self._command_pool)
        self._command_buffer = self._command_buffer_slot[0]
        self._fence_slot = create_fence(self)
        self._fence = self._fence_slot[0]
        # Built once: every submit reuses them.
        self._begin_info = ffi.new("VkCommandBufferBeginInfo*")
        self._begin_info.sType = vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO
        self._begin_info.flags = vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT
        self._submit_info = ffi.new("VkSubmitInfo*")
        self._submit_info.sType = vk.VK_STRUCTURE_TYPE_SUBMIT_INFO
        self._submit_info.commandBufferCount = 1
        self._submit_info.pCommandBuffers = self._command_buffer_slot

    def _probe_buffer_type_bits(self) -> int:
        """Memory types a storage/transfer buffer accepts (the same for every size in practice)."""
        ffi, lib = self._vk.ffi, self._vk.lib
        buffer = self._create_buffer(256)
        try:
            requirements = ffi.new("VkMemoryRequirements*")
            lib.vkGetBufferMemoryRequirements(self._handle, buffer, requirements)
            return int(requirements.memoryTypeBits)
        finally:
            lib.vkDestroyBuffer(self._handle, buffer, ffi.NULL)
            destroyed("buffers")

    def _create_buffer(self, size: int):
        vk = self._vk
        ffi, lib = vk.ffi, vk.lib
        info = ffi.new("VkBufferCreateInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO
        info.size = size
        info.usage = _BUFFER_USAGE
        info.sharingMode = vk.VK_SHARING_MODE_EXCLUSIVE
        if self.exportable:
            external = ffi.new("VkExternalMemoryBufferCreateInfo*")
            external.sType = vk.VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO
            external.handleTypes = _OPAQUE_FD
            info.pNext = external
        out = ffi.new("VkBuffer*")
        check("vkCreateBuffer", lib.vkCreateBuffer(self._handle, info, ffi.NULL, out), f"creating a {size}-byte buffer")
        created("buffers")
        return out[0]

    # -- state ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _require_open(self) -> None:
        if self._closed:
            raise CacheClosedError("the Vulkan device was closed; its memory and objects are gone. "
                                   "Fix: create a new Device (or cache) instead of reusing a closed one.")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._blocks)} blocks"
        name = getattr(getattr(self, "info", None), "name", "?")
        return f"<Device {name!r} {state}>"

    def memory_type_for(self, kind: str, size: int) -> int:
        """Return the memory type index for a tier of *kind* (``"device"``/``"host"``) and *size* bytes.

        Raises:
            ValueError, DeviceError, DeviceOutOfMemoryError: as ``choose_memory_type``.
        """
        info = self.info
        return choose_memory_type(info.memory_types, info.memory_heaps, kind, size,
                                  info.available_budgets(), self._buffer_type_bits)

    # -- blocks -----------------------------------------------------------------------------------

    @property
    def blocks(self) -> list[Block]:
        """The blocks currently allocated (the staging buffer included)."""
        return list(self._blocks.values())

    def allocate_block(self, memory_type_index: int, size: int) -> Block:
        """Allocate a block of *size* bytes from memory type *memory_type_index*, mapped when host-visible.

        Raises:
            CacheClosedError: the device is closed.
            ValueError: *size* is not in ``1..info.max_block_size`` or the type index is invalid.
            DeviceOutOfMemoryError: the driver has no memory left (or a fault was injected).
            DeviceError: any other failure; nothing is left allocated.
        """
        self._require_open()
        info = self.info
        if not 0 < size <= info.max_block_size:
            raise ValueError(f"block size must be in 1..{info.max_block_size} bytes (maxMemoryAllocationSize "
                             f"and 1 GiB), got {size}. Fix: split the tier into several blocks.")
        if not (0 <= memory_type_index < len(info.memory_types) and self._buffer_type_bits >> memory_type_index & 1):
            raise ValueError(f"memory type {memory_type_index} cannot back a storage buffer on {info.name!r} "
                             f"(allowed type bits {self._buffer_type_bits:#x}). Fix: use memory_type_for().")
        vk = self._vk
        ffi, lib = vk.ffi, vk.lib
        host_visible = bool(info.memory_types[memory_type_index].property_flags & HOST_VISIBLE)
        buffer = memory = None
        mapped = False
        try:
            buffer = self._create_buffer(size)
            requirements = ffi.new("VkMemoryRequirements*")
            lib.vkGetBufferMemoryRequirements(self._handle, buffer, requirements)
            allocation_size = int(requirements.size)
            allocate_info = ffi.new("VkMemoryAllocateInfo*")
            allocate_info.sType = vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO
            allocate_info.allocationSize = allocation_size
            allocate_info.memoryTypeIndex = memory_type_index
            if self.exportable:
                # One buffer per allocation anyway: dedicated, which some drivers require to export.
                dedicated = ffi.new("VkMemoryDedicatedAllocateInfo*")
                dedicated.sType = vk.VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO
                dedicated.buffer = buffer
                export = ffi.new("VkExportMemoryAllocateInfo*")
                export.sType = vk.VK_STRUCTURE_TYPE_EXPORT_MEMORY_ALLOCATE_INFO
                export.handleTypes = _OPAQUE_FD
                export.pNext = dedicated
                allocate_info.pNext = export
            out = ffi.new("VkDeviceMemory*")
            injected = faults.take_allocation_failure()
            result = injected if injected is not None else lib.vkAllocateMemory(self._handle, allocate_info, ffi.NULL, out)
            check("vkAllocateMemory", result, f"allocating {allocation_size} bytes of memory type {memory_type_index}")
            memory = out[0]
            created("memory")
            check("vkBindBufferMemory", lib.vkBindBufferMemory(self._handle, buffer, memory, 0))
            address = 0
            array = None
            if host_visible:
                pointer = ffi.new("void**")
                # The real size: the binding cannot pass VK_WHOLE_SIZE (it becomes -1).
                check("vkMapMemory", lib.vkMapMemory(self._handle, memory, 0, allocation_size, 0, pointer))
                mapped = True
                address = _address(ffi, pointer[0])
                array = np.frombuffer(ffi.buffer(pointer[0], size), dtype=np.uint8)
        except BaseException:
            if mapped:
                lib.vkUnmapMemory(self._handle, memory)
            if buffer is not None:
                lib.vkDestroyBuffer(self._handle, buffer, ffi.NULL)
                destroyed("buffers")
            if memory is not None:
                lib.vkFreeMemory(self._handle, memory, ffi.NULL)
                destroyed("memory")
            raise
        block_id = self._take_id()
        block = Block(self, block_id, size, memory_type_index, host_visible, memory, buffer, address, array)
        block.allocation_size = allocation_size
        self._blocks[block_id] = block
        self._buffers_by_id[block_id] = buffer
        self._sizes_by_id[block_id] = size
        return block

    def _take_id(self) -> int:
        if self._free_ids:
            self._free_ids.sort(reverse=True)  # hand out the smallest id: ids stay small
            return self._free_ids.pop()
        block_id = len(self._buffers_by_id)
        self._buffers_by_id.append(None)
        if block_id >= len(self._sizes_by_id):
            grown = np.zeros(max(16, 2 * len(self._sizes_by_id)), dtype=np.uint64)
            grown[:len(self._sizes_by_id)] = self._sizes_by_id
            self._sizes_by_id = grown
        return block_id

    def free_block(self, block: Block) -> None:
        """Unmap and free *block*; freeing a freed block does nothing.

        The GPU must no longer use it: every submit of this wrapper waits, so that holds unless a
        recording that uses the block is still open.

        Raises:
            CacheClosedError: the device is closed (its blocks are already freed).
            ValueError: *block* belongs to another device.
        """
        if block._device is not self:
            raise ValueError(f"{block!r} belongs to another device. Fix: free it with the device that made it.")
        if block.freed:
            return
        self._require_open()
        self._release_block(block)

    def _release_block(self, block: Block) -> None:
        ffi, lib = self._vk.ffi, self._vk.lib
        buffer, block._buffer = block._buffer, None
        memory, block._memory = block._memory, None
        block.array = None
        if buffer is None:
            return
        del self._blocks[block.id]
        self._buffers_by_id[block.id] = None
        self._sizes_by_id[block.id] = 0
        self._free_ids.append(block.id)
        if block.host_visible:
            lib.vkUnmapMemory(self._handle, memory)
        block.address = 0
        lib.vkDestroyBuffer(self._handle, buffer, ffi.NULL)
        destroyed("buffers")
        lib.vkFreeMemory(self._handle, memory, ffi.NULL)
        destroyed("memory")

    @property
    def blocks_by_id(self) -> "MappingProxyType[int, Block]":
        """The live blocks by ``Block.id`` (the ids copy tables name), read-only."""
        return MappingProxyType(self._blocks)

    @property
    def block_sizes(self) -> np.ndarray:
        """Each block id's size in bytes (0 for a free id), as copy tables index it; read-only."""
        view = self._sizes_by_id.view()
        view.flags.writeable = False
        return view

    def validate_copy_table(self, table: np.ndarray) -> None:
        """Raise ValueError unless every row of *table* stays inside live blocks of this device."""
        sizes = self._sizes_by_id
        src, dst = table["src_block"], table["dst_block"]
        known = len(self._buffers_by_id)
        if src.max() >= known or dst.max() >= known:
            raise ValueError(f"copy table names block {max(int(src.max()), int(dst.max()))} but only ids "
                             f"below {known} exist. Fix: use Block.id of live blocks.")
        src_sizes, dst_sizes = sizes[src], sizes[dst]
        bad = ((table["src_offset"] + table["size"] > src_sizes) | (table["dst_offset"] + table["size"] > dst_sizes)
               | (src_sizes == 0) | (dst_sizes == 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            r = table[row]
            raise ValueError(f"copy table row {row} ({int(r['size'])} bytes from block {int(r['src_block'])}"
                             f"+{int(r['src_offset'])} to block {int(r['dst_block'])}+{int(r['dst_offset'])}) "
                             "leaves a block or names a freed one. Fix: keep every range inside a live block.")

    # -- recording and submission -----------------------------------------------------------------------

    def record(self) -> CommandRecorder:
        """Begin recording into the device's command buffer; use as ``with device.record() as rec:``.

        Leaving the ``with`` block submits once and waits; an exception discards the recording.

        Raises:
            CacheClosedError: the device is closed.
            DeviceError: another recording of this device is still open.
        """
        self._require_open()
        if self._recorder is not None:
            raise DeviceError("a recording is already open on this device. Fix: finish the outer "
                              "`with device.record()` block before starting another (one at a time).")
        lib = self._vk.lib
        check("vkResetCommandBuffer", lib.vkResetCommandBuffer(self._command_buffer, 0))
        check("vkBeginCommandBuffer", lib.vkBeginCommandBuffer(self._command_buffer, self._begin_info))
        self._recorder = CommandRecorder(self)
        return self._recorder

    def _finish_recording(self, recorder: CommandRecorder, submit: bool) -> None:
        if self._recorder is not recorder:
            return
        self._recorder = None
        if self._closed:
            return
        lib = self._vk.lib
        if submit and recorder.commands:
            # Makes every device write visible to the host once the fence signals.
            recorder.memory_barrier(0x800 | 0x1000, 0x40 | 0x1000, 0x4000, 0x2000)
        check("vkEndCommandBuffer", lib.vkEndCommandBuffer(self._command_buffer))
        if submit and recorder.commands:
            self._submit_and_wait()

    def _submit_and_wait(self) -> None:
        lib = self._vk.lib
        check("vkQueueSubmit", lib.vkQueueSubmit(self._queue, 1, self._submit_info, self._fence))
        result = check("vkWaitForFences",
                       lib.vkWaitForFences(self._handle, 1, self._fence_slot, 1, _FENCE_TIMEOUT_NS))
        if result == _VK_TIMEOUT:
            raise DeviceError(f"vkWaitForFences: the GPU did not finish a submit within "
                              f"{_FENCE_TIMEOUT_NS // 10**9} s. Fix: submit less work at once; if it "
                              "persists the device is hung and the cache must be recreated.")
        check("vkResetFences", lib.vkResetFences(self._handle, 1, self._fence_slot))

    # -- staging --------------------------------------------------------------------------------------

    def _staging_block(self, size: int) -> Block:
        staging = self._staging
        if staging is not None and staging.size >= size:
            return staging
        capacity = _STAGING_MIN
        while capacity < size:
            capacity *= 2
        capacity = min(capacity, _STAGING_MAX, self.info.max_block_size)
        memory_type = self.memory_type_for("host", capacity)
        # Allocate the new one first: on failure the old staging buffer stays usable.
        grown = self.allocate_block(memory_type, capacity)
        if staging is not None:
            self._release_block(staging)
        self._staging = grown
        return grown

    @staticmethod
    def _bytes_of(data) -> np.ndarray:
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("data must be C-contiguous. Fix: pass np.ascontiguousarray(data).")
        return np.frombuffer(view.cast("B") if view.ndim != 1 or view.format != "B" else view, dtype=np.uint8)

    def upload(self, block: Block, offset: int, data) -> None:
        """Write the bytes of *data* (any C-contiguous buffer) into *block* at *offset*.

        A host-visible block is written by memcpy into its mapping, with no submit; other blocks
        go through the reusable staging buffer (one submit per staging-buffer-full).

        Raises:
            CacheClosedError: the device is closed.
            ValueError: the range leaves the block, or *data* is not contiguous.
            DeviceOutOfMemoryError: the staging buffer could not grow.
        """
        self._require_open()
        source = self._bytes_of(data)
        size = source.size
        self._check_range(block, offset, size)
        if block.host_visible:
            block.array[offset:offset + size] = source
            return
        done = 0
        while done < size:
            staging = self._staging_block(size - done)
            chunk = min(staging.size, size - done)
            staging.array[:chunk] = source[done:done + chunk]
            with self.record() as recorder:
                recorder.copy_region(staging, 0, block, offset + done, chunk)
            done += chunk

    def download(self, block: Block, offset: int, size: int, out=None) -> np.ndarray:
        """Read *size* bytes of *block* at *offset* into *out* (a writable buffer) or a new uint8 array.

        Returns the numpy uint8 array that holds the bytes (a view of *out* when given).  Host-visible
        blocks are read by memcpy from the mapping; others through the staging buffer.

        Raises:
            CacheClosedError: the device is closed.
            ValueError: the range leaves the block, or *out* has not exactly *size* bytes.
        """
        self._require_open()
        self._check_range(block, offset, size)
        if out is None:
            target = np.empty(size, dtype=np.uint8)
        else:
            target = self._bytes_of(out)
            if target.size != size:
                raise ValueError(f"out has {target.size} bytes but {size} are read. Fix: pass a buffer of "
                                 "exactly the size read.")
        if block.host_visible:
            target[:] = block.array[offset:offset + size]
            return target
        done = 0
        while done < size:
            staging = self._staging_block(size - done)
            chunk = min(staging.size, size - done)
            with self.record() as recorder:
                recorder.copy_region(block, offset + done, staging, 0, chunk)
            target[done:done + chunk] = staging.array[:chunk]
            done += chunk
        return target

    @staticmethod
    def _check_range(block: Block, offset: int, size: int) -> None:
        if block.freed:
            raise ValueError(f"{block!r} was freed. Fix: allocate a new block.")
        if offset < 0 or size < 0 or offset + size > block.size:
            raise ValueError(f"range [{offset}, {offset + size}) leaves block {block.id} of {block.size} bytes. "
                             "Fix: keep reads and writes inside the block.")

    # -- external memory ----------------------------------------------------------------------------

    def export_fd(self, block: Block) -> int:
        """A new opaque POSIX fd of *block*'s memory (``vkGetMemoryFdKHR``); the caller owns it.

        Importing the fd (``VkImportMemoryFdInfoKHR``, CUDA's ``cudaImportExternalMemory``) gives
        its ownership to the importer; an fd that is not imported must be closed.

        Raises:
            BufferError: the device was made without ``VK_KHR_external_memory_fd``.
            ValueError: *block* was freed or belongs to another device.
        """
        self._require_open()
        if not self.exportable:
            raise BufferError(f"{self.info.name!r} does not export memory here: the device was made "
                              f"without {EXTERNAL_MEMORY_FD} or the driver cannot export buffers. Fix: "
                              f"enable the extensions of VulkanBackend.required_device_extensions().")
        if block._device is not self or block.freed:
            raise ValueError(f"{block!r} is not a live block of this device. Fix: export a live block.")
        vk = self._vk
        ffi = vk.ffi
        info = ffi.new("VkMemoryGetFdInfoKHR*")
        info.sType = vk.VK_STRUCTURE_TYPE_MEMORY_GET_FD_INFO_KHR
        info.memory = block._memory
        info.handleType = _OPAQUE_FD
        fd = ffi.new("int*")
        check("vkGetMemoryFdKHR", self._get_memory_fd(self._handle, info, fd))
        return int(fd[0])

    # -- compute helpers --------------------------------------------------------------------------------

    def create_compute_pipeline(self, spirv: bytes, storage_buffers: int, push_constant_size: int = 0,
                                entry_point: str = "main") -> ComputePipeline:
        """Build a :class:`ComputePipeline` from SPIR-V whose set 0 binds *storage_buffers* storage buffers.

        Raises:
            CacheClosedError: the device is closed.
            ValueError: *spirv* is not SPIR-V or the push-constant size is invalid.
            DeviceError: the driver rejected the shader or pipeline.
        """
        self._require_open()
        return ComputePipeline(self, spirv, storage_buffers, push_constant_size, entry_point)

    def create_descriptor_pool(self, max_sets: int, storage_buffers_per_set: int) -> DescriptorPool:
        """Create a :class:`DescriptorPool` for *max_sets* sets of *storage_buffers_per_set* storage buffers.

        Raises:
            CacheClosedError: the device is closed.
            DeviceError: the driver could not create the pool.
        """
        self._require_open()
        return DescriptorPool(self, max_sets, storage_buffers_per_set)

    # -- release ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the device, then destroy every object it owns; calling it again does nothing.

        Blocks, pipelines and pools made by this device are freed too; any later use of the device
        raises :class:`~vyrecache.errors.CacheClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        _open_devices.discard(self)
        vk = self._vk
        ffi, lib = vk.ffi, vk.lib
        handle = self._handle
        if handle is not None:
            # A lost device still has to be torn down: results ignored.  A borrowed device may be
            # busy with its owner's work: only the cache's queue has to drain.
            if self._owns_handles:
                lib.vkDeviceWaitIdle(handle)
            elif getattr(self, "_queue", None) is not None:
                lib.vkQueueWaitIdle(self._queue)
            self._recorder = None
            for resource in list(self._resources):
                resource._release()
            self._resources.clear()
            for block in list(self._blocks.values()):
                self._release_block(block)
            self._staging = None
            command_buffer, self._command_buffer = self._command_buffer, None
            pool, self._command_pool = self._command_pool, None
            fence, self._fence = self._fence, None
            if command_buffer is not None:
                free_command_buffers(self, pool, [self._command_buffer_slot])
            destroy_each(self, [("command_pools", pool), ("fences", fence)])
            self._handle = None
            if self._owns_handles:
                lib.vkDestroyDevice(handle, ffi.NULL)
                destroyed("devices")
        instance, self._instance = self._instance, None
        if instance is not None:
            instance.destroy()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            if not sys.is_finalizing():
                warnings.warn(f"unclosed {self!r}; call close() or use it as a context manager",
                              ResourceWarning, stacklevel=1, source=self)
            self.close()
        except Exception:
            pass  # nothing sensible can be done with an error during garbage collection
