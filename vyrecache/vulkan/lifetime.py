"""Making and destroying the Vulkan objects a Device owns, each one counted (``objects.py``).

Command pools, command buffers and fences are made by the Device itself and by every cache's
TransferQueue; pipelines and descriptor pools by the compute helpers.  They are made and
destroyed here, so that each kind is created, checked and counted one way, and every owner
releases its objects in one call.
"""

from __future__ import annotations

from typing import Any

from .check import check
from .objects import created, destroyed

__all__ = ["DeviceResource", "create_command_pool", "allocate_command_buffer", "create_fence", "destroy_each",
           "free_command_buffers"]

# The destroy function of each counted kind a resource may hold.
_DESTROY = {
    "pipelines": "vkDestroyPipeline",
    "pipeline_layouts": "vkDestroyPipelineLayout",
    "descriptor_set_layouts": "vkDestroyDescriptorSetLayout",
    "shader_modules": "vkDestroyShaderModule",
    "descriptor_pools": "vkDestroyDescriptorPool",
    "command_pools": "vkDestroyCommandPool",
    "fences": "vkDestroyFence",
    "semaphores": "vkDestroySemaphore",
}


def create_command_pool(device) -> Any:
    """A command pool on the device's queue family whose buffers can be reset one by one."""
    vk = device._vk
    ffi, lib = vk.ffi, vk.lib
    info = ffi.new("VkCommandPoolCreateInfo*")
    info.sType = vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO
    info.flags = vk.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT
    info.queueFamilyIndex = device.queue_family_index
    out = ffi.new("VkCommandPool*")
    check("vkCreateCommandPool", lib.vkCreateCommandPool(device._handle, info, ffi.NULL, out))
    created("command_pools")
    return out[0]


def allocate_command_buffer(device, pool) -> Any:
    """One primary command buffer of *pool*, as the ``VkCommandBuffer[1]`` that submits point at."""
    vk = device._vk
    ffi, lib = vk.ffi, vk.lib
    info = ffi.new("VkCommandBufferAllocateInfo*")
    info.sType = vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO
    info.commandPool = pool
    info.level = vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY
    info.commandBufferCount = 1
    slot = ffi.new("VkCommandBuffer[1]")
    check("vkAllocateCommandBuffers", lib.vkAllocateCommandBuffers(device._handle, info, slot))
    created("command_buffers")
    return slot


def create_fence(device) -> Any:
    """An unsignalled fence, as the ``VkFence[1]`` that waits and resets point at."""
    vk = device._vk
    ffi, lib = vk.ffi, vk.lib
    info = ffi.new("VkFenceCreateInfo*")
    info.sType = vk.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO
    slot = ffi.new("VkFence[1]")
    check("vkCreateFence", lib.vkCreateFence(device._handle, info, ffi.NULL, slot))
    created("fences")
    return slot


def free_command_buffers(device, pool, slots) -> None:
    """Free each ``VkCommandBuffer[1]`` of *slots* back to *pool*."""
    lib = device._vk.lib
    for slot in slots:
        lib.vkFreeCommandBuffers(device._handle, pool, 1, slot)
        destroyed("command_buffers")


def destroy_each(device, objects) -> None:
    """Destroy every ``(kind, handle)`` of *objects* in order, skipping None handles."""
    ffi, lib = device._vk.ffi, device._vk.lib
    for kind, handle in objects:
        if handle is not None:
            getattr(lib, _DESTROY[kind])(device._handle, handle, ffi.NULL)
            destroyed(kind)


class DeviceResource:
    """An object made on a Device that the Device releases when it closes, unless destroyed first.

    Subclasses set ``self.device``, call :meth:`_register` once made, and implement
    :meth:`_release` (idempotent; the Device may already be closing).
    """

    device: Any

    def _register(self) -> None:
        self.device._resources.add(self)

    def destroy(self) -> None:
        """Destroy what the object holds on the device; calling it again does nothing."""
        self._release()
        self.device._resources.discard(self)

    def _release(self) -> None:
        raise NotImplementedError
