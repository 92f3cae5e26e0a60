"""The buffer cache's storage contract on a Vulkan device.

Tiers get blocks of the memory type their kind resolves to (by property flags: see
``memory.py``).  Host-visible blocks are read and written through their persistent mapping, and
the storage layer copies between them on the CPU; device-only ones go through the device's
staging buffer, and every copy an operation makes there runs as one copy table on the backend's
executor (``vyrecache.compaction``): copy commands recorded from C on the cache's own queue, or
the compute shader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend import StorageBackend, StorageBlock, TierMemory
from ..compaction import CopyCommands, CopyExecutor, executor_for
from ..compaction.executors import MODES
from .device import EXTERNAL_MEMORY_FD, TIMELINE_EXTENSION, Device
from .info import device_extensions
from .instance import as_handle
from .loader import load
from .memory import HOST_VISIBLE

__all__ = ["COMPACTION_MODES", "VulkanBackend"]

#: What ``VulkanBackend(compaction=...)`` accepts (see vyrecache.compaction).
COMPACTION_MODES = MODES


class VulkanBackend(StorageBackend):
    """Storage on a Vulkan device.

    ``device_index`` picks the physical device (default: the first);
    ``device`` shares an existing :class:`Device` instead, which ``close()`` then
    leaves open (the caller owns it).

    Raises:
        VulkanUnavailableError: no loader, driver or device.
    """

    name = "vulkan"

    def __init__(self, device_index: int | None = None, device: Device | None = None,
                 validation: bool | None = None, compaction: str = "auto") -> None:
        if compaction not in COMPACTION_MODES:
            raise ValueError("compaction must be one of %s, got %r. Fix: pass one of those "
                             "('auto' measures the others once per driver and keeps the fastest)."
                             % (", ".join(repr(mode) for mode in COMPACTION_MODES), compaction))
        #: The requested mode of the copies on device-only memory (see vyrecache.compaction).
        self.compaction = compaction
        self._owns_device = device is None
        self._device = Device(device_index, validation) if device is None else device
        info = self._device.info
        alignment = 16
        while alignment < info.min_storage_buffer_offset_alignment:
            alignment *= 2
        self.alignment = alignment
        self.max_block_size = info.max_block_size // alignment * alignment
        self._blocks: dict[int, StorageBlock] = {}
        #: Runs the copy tables; "auto" decides when a tier first needs device-only memory
        #: (measuring on a UMA device, whose tiers are all mapped, would be wasted).
        self._executor: CopyExecutor | None = None
        try:
            if compaction != "auto":
                self._executor = executor_for(self._device, compaction)
        except BaseException:
            if self._owns_device:
                self._device.close()
            raise

    @property
    def executor(self) -> CopyExecutor:
        """The executor of this backend's copy tables (made now when still undecided)."""
        if self._executor is None:
            # Every tier is mapped: the storage layer copies by CPU, and the copy commands it
            # records itself are what "auto" would measure against.
            self._executor = CopyCommands(self._device)
        return self._executor

    @classmethod
    def from_handles(cls, instance: Any, physical_device: Any, device: Any, queue_family_index: int,
                     queue_index: int = 0, *, enabled_extensions: Iterable[str] = (),
                     compaction: str = "auto") -> "VulkanBackend":
        """A backend on a Vulkan instance and device that the caller's own code created.

        The handles are cffi handles of the ``vulkan`` binding (what ``vkCreateInstance`` and
        friends returned) or their addresses as ints.  vyrecache never destroys them: closing the
        cache frees its own memory, buffers and command objects on the device, and the caller
        destroys the device and instance afterwards.  *enabled_extensions* are the device
        extensions the caller enabled; those of :meth:`required_device_extensions` turn on the
        optional features (``Lease.export_fd``).  The caller must not submit to the given queue
        from another thread during a cache operation (or gives the cache a queue of its own).

        Raises:
            TypeError, ValueError: a handle, the queue family or queue index is not valid.
        """
        borrowed = Device.from_handles(instance, physical_device, device, queue_family_index, queue_index,
                                       enabled_extensions=enabled_extensions)
        try:
            backend = cls(device=borrowed, compaction=compaction)
        except BaseException:
            borrowed.close()
            raise
        backend._owns_device = True   # the wrapper, not the borrowed handles
        return backend

    @staticmethod
    def required_device_extensions(physical_device: Any = None) -> list[str]:
        """The device extensions to enable at ``vkCreateDevice`` for vyrecache's optional features.

        ``VK_KHR_external_memory_fd``: exportable memory (``Lease.export_fd``);
        ``VK_KHR_timeline_semaphore`` (with ``VkPhysicalDeviceTimelineSemaphoreFeatures.
        timelineSemaphore`` enabled): asynchronous transfers signal a timeline semaphore instead
        of one fence each.  Without any of them the cache works fully; only those features are off.  With *physical_device* (a
        ``VkPhysicalDevice`` handle) only the extensions it offers are listed, ready to pass to
        ``ppEnabledExtensionNames``.
        """
        wanted = [EXTERNAL_MEMORY_FD, TIMELINE_EXTENSION]
        if physical_device is None:
            return wanted
        vk = load()
        offered = device_extensions(vk, as_handle(vk, "VkPhysicalDevice", physical_device))
        return [name for name in wanted if name in offered]

    def export_fd(self, block: StorageBlock) -> int:
        """A new opaque fd of the memory behind *block* (see :meth:`Device.export_fd`)."""
        return self._device.export_fd(block.native)

    @property
    def device(self) -> Any:
        return self._device.info

    @property
    def vulkan_device(self) -> Device:
        """The wrapper's Device (for benchmarks and tests)."""
        return self._device

    def resolve_memory(self, kind: str, capacity: int) -> TierMemory:
        # A tier is made of blocks; the heap must hold the whole tier.
        index = self._device.memory_type_for(kind, max(capacity, 1))
        flags = self._device.info.memory_types[index].property_flags
        if not flags & HOST_VISIBLE and self._executor is None:
            # Copies will run on the device: choose how now, before any operation.
            self._executor = executor_for(self._device, self.compaction)
        return TierMemory(memory_type_index=index, host_visible=bool(flags & HOST_VISIBLE))

    def allocate_block(self, memory: TierMemory, size: int) -> StorageBlock:
        native = self._device.allocate_block(memory.memory_type_index, size)
        block = StorageBlock(native.id, native.address if native.host_visible else 0,
                             native.buffer_handle, size, native.memory_type_index, native.host_visible,
                             native.array if native.host_visible else None, native)
        self._blocks[block.id] = block
        return block

    def free_block(self, block: StorageBlock) -> None:
        if self._blocks.pop(block.id, None) is None:
            return
        native, block.native = block.native, None
        block.array = None
        block.address = 0
        if native is not None and not native.freed and not self._device.closed:
            self._device.free_block(native)

    def transfer_queue(self) -> Any:
        """A TransferQueue of this device for one cache's copy tables, recorded from C (destroyed
        with the device); None when the executor is the shader, which runs them through run_copies."""
        if not isinstance(self.executor, CopyCommands):
            return None
        from .transfer import TransferQueue
        return TransferQueue(self._device)

    def run_copies(self, table: np.ndarray, wave_starts: list[int]) -> None:
        self.executor.run(table, wave_starts)

    def write(self, block: StorageBlock, offset: int, data: memoryview) -> None:
        self._device.upload(block.native, offset, data)

    def read_into(self, block: StorageBlock, offset: int, out: memoryview) -> None:
        self._device.download(block.native, offset, out.nbytes, out)

    def prepare_write(self, nbytes: int) -> None:
        # Grow the staging buffer before the engine changes anything, so an
        # out-of-memory error leaves the cache as it was.
        if nbytes:
            self._device._staging_block(nbytes)

    def close(self) -> None:
        for block in list(self._blocks.values()):
            self.free_block(block)
        executor, self._executor = self._executor, None
        if executor is not None and not self._device.closed:
            executor.close()
        if self._owns_device:
            self._device.close()
