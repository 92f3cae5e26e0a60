"""A command pool, command buffers and fences of its own for one cache's copy tables, as raw handles.

The storage layer records and submits its copy tables from C (``_core/vkcopy.h``), so that no
Python code runs inside an operation.  This object creates what that needs on a Device and gives
it out as integers: the device, queue, command buffer and fence handles, and the entry points from
``vkGetDeviceProcAddr`` (through the validation layer when it is on).  Each cache has its own, so
two caches on one Device never share a command buffer; submits happen with the GIL held, which
serialises them on the shared queue as Vulkan requires.

Asynchronous transfers (``promote_many(keys, wait=False)``) each take one command buffer of a
small pool (``slot(i)``), and signal the queue's timeline semaphore with their own value; on a
device without timeline semaphores each slot has a fence instead.
"""

from __future__ import annotations

from typing import Any

from ..errors import DeviceError
from .check import check
from .lifetime import (DeviceResource, allocate_command_buffer, create_command_pool, create_fence, destroy_each,
                       free_command_buffers)
from .objects import created

__all__ = ["TransferQueue", "ENTRY_POINTS"]

#: Entry points of the C executor, in the order of its struct's function pointers.
ENTRY_POINTS = ("vkBeginCommandBuffer", "vkEndCommandBuffer", "vkResetCommandBuffer", "vkCmdCopyBuffer",
                "vkCmdPipelineBarrier", "vkQueueSubmit", "vkWaitForFences", "vkResetFences",
                "vkGetFenceStatus")
#: Those of timeline semaphores (VK_KHR_timeline_semaphore, core in Vulkan 1.2).
TIMELINE_ENTRY_POINTS = ("vkGetSemaphoreCounterValueKHR", "vkWaitSemaphoresKHR")
#: Asynchronous transfers in flight at once per cache; one more waits for the oldest.
MAX_SLOTS = 32


class TransferQueue(DeviceResource):
    """One command pool with one command buffer and one fence on a Device's queue, and the pool
    of command buffers (and timeline semaphore, or fences) of asynchronous transfers."""

    def __init__(self, device) -> None:
        vk = device._vk
        ffi, lib = vk.ffi, vk.lib
        self.device = device
        self._pool = self._fence = self._semaphore = None
        self._buffer_slot: Any = None
        self._slots: list[tuple] = []       # (VkCommandBuffer[1], VkFence or None) per slot
        self.timeline = bool(getattr(device, "timeline_semaphores", False))
        handle = device._handle
        try:
            self._pool = create_command_pool(device)
            self._buffer_slot = allocate_command_buffer(device, self._pool)
            self._fence = create_fence(device)[0]
            if self.timeline:
                type_info = ffi.new("VkSemaphoreTypeCreateInfo*")
                type_info.sType = vk.VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO
                type_info.semaphoreType = vk.VK_SEMAPHORE_TYPE_TIMELINE
                type_info.initialValue = 0
                semaphore_info = ffi.new("VkSemaphoreCreateInfo*")
                semaphore_info.sType = vk.VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO
                semaphore_info.pNext = type_info
                semaphore = ffi.new("VkSemaphore*")
                check("vkCreateSemaphore",
                      lib.vkCreateSemaphore(handle, semaphore_info, ffi.NULL, semaphore))
                self._semaphore = semaphore[0]
                created("semaphores")
            pointers = []
            for name in ENTRY_POINTS + (TIMELINE_ENTRY_POINTS if self.timeline else ()):
                pointer = lib.vkGetDeviceProcAddr(handle, name.encode())
                if pointer == ffi.NULL:
                    raise DeviceError(f"the driver gives no {name}. Fix: update the Vulkan driver.")
                pointers.append(int(ffi.cast("uintptr_t", pointer)))
            self.entry_points = tuple(pointers)
        except BaseException:
            self._release()
            raise
        self._register()

    def handles(self) -> tuple[int, int, int, int]:
        """(VkDevice, VkQueue, VkCommandBuffer, VkFence) as integers."""
        ffi = self.device._vk.ffi
        return (int(ffi.cast("uintptr_t", self.device._handle)), int(ffi.cast("uintptr_t", self.device._queue)),
                int(ffi.cast("uintptr_t", self._buffer_slot[0])), int(ffi.cast("uintptr_t", self._fence)))

    @property
    def semaphore(self) -> int:
        """The timeline semaphore's handle as an integer (0 without one)."""
        if self._semaphore is None:
            return 0
        return int(self.device._vk.ffi.cast("uintptr_t", self._semaphore))

    def slot(self, index: int) -> tuple[int, int]:
        """(VkCommandBuffer, VkFence or 0) of asynchronous slot *index*, made on first use."""
        device = self.device
        ffi = device._vk.ffi
        while len(self._slots) <= index:
            buffer = allocate_command_buffer(device, self._pool)
            fence = None
            if not self.timeline:
                try:
                    fence = create_fence(device)[0]
                except BaseException:
                    free_command_buffers(device, self._pool, [buffer])
                    raise
            self._slots.append((buffer, fence))
        buffer, fence = self._slots[index]
        return (int(ffi.cast("uintptr_t", buffer[0])),
                0 if fence is None else int(ffi.cast("uintptr_t", fence)))

    def _release(self) -> None:
        device = self.device
        if device._handle is None:
            return
        slot, self._buffer_slot = self._buffer_slot, None
        pool, self._pool = self._pool, None
        fence, self._fence = self._fence, None
        slots, self._slots = self._slots, []
        semaphore, self._semaphore = self._semaphore, None
        free_command_buffers(device, pool, [buffer for buffer, _ in slots] + ([slot] if slot is not None else []))
        destroy_each(device, [("fences", slot_fence) for _, slot_fence in slots]
                     + [("semaphores", semaphore), ("command_pools", pool), ("fences", fence)])
