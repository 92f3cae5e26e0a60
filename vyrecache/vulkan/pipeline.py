"""Generic compute-pipeline helpers: pipelines over N storage buffers and descriptor pools.

A :class:`ComputePipeline` bundles the shader module, the descriptor set layout (bindings
``0..N-1``, all storage buffers, set 0), the pipeline layout (one push-constant range for the
compute stage) and the pipeline.  A :class:`DescriptorPool` hands out descriptor sets for such
layouts; :meth:`DescriptorPool.update` points a set's bindings at ``(block, offset, range)``
windows.  Both are created by a :class:`~vyrecache.vulkan.device.Device` and destroyed by it at
close at the latest.
"""

from __future__ import annotations

from collections.abc import Sequence

from .check import check
from .lifetime import DeviceResource, destroy_each
from .objects import created

__all__ = ["ComputePipeline", "DescriptorPool"]


class ComputePipeline(DeviceResource):
    """A compute pipeline whose set 0 has *storage_buffers* storage-buffer bindings.

    Attributes ``pipeline``, ``layout`` and ``set_layout`` are the raw Vulkan handles (cffi), for
    :meth:`CommandRecorder.dispatch <vyrecache.vulkan.commands.CommandRecorder.dispatch>` and
    :meth:`DescriptorPool.allocate`.

    Raises:
        ValueError: *spirv* is not a whole number of 32-bit words with the SPIR-V magic number.
        DeviceError: the driver rejected the module or pipeline.
    """

    def __init__(self, device, spirv: bytes, storage_buffers: int, push_constant_size: int = 0,
                 entry_point: str = "main") -> None:
        spirv = bytes(spirv)
        if len(spirv) % 4 or len(spirv) < 20 or spirv[:4] != b"\x03\x02\x23\x07":
            raise ValueError(f"not SPIR-V: {len(spirv)} bytes starting {spirv[:4].hex()}. "
                             "Fix: pass the bytes of a .spv file compiled with glslangValidator -V.")
        if push_constant_size % 4 or push_constant_size > 128:
            raise ValueError(f"push_constant_size must be a multiple of 4 and at most 128 (the "
                             f"guaranteed minimum), got {push_constant_size}. Fix: pack fewer constants.")
        self.device = device
        self.storage_buffers = storage_buffers
        self.push_constant_size = push_constant_size
        self.shader_module = self.set_layout = self.layout = self.pipeline = None
        vk = device._vk
        ffi, lib, handle = vk.ffi, vk.lib, device._handle
        try:
            code = ffi.new("char[]", spirv)
            module_info = ffi.new("VkShaderModuleCreateInfo*")
            module_info.sType = vk.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO
            module_info.codeSize = len(spirv)
            module_info.pCode = ffi.cast("uint32_t*", code)
            out = ffi.new("VkShaderModule*")
            check("vkCreateShaderModule", lib.vkCreateShaderModule(handle, module_info, ffi.NULL, out))
            self.shader_module = out[0]
            created("shader_modules")

            bindings = ffi.new("VkDescriptorSetLayoutBinding[]", max(storage_buffers, 1))
            for i in range(storage_buffers):
                bindings[i].binding = i
                bindings[i].descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                bindings[i].descriptorCount = 1
                bindings[i].stageFlags = vk.VK_SHADER_STAGE_COMPUTE_BIT
            set_info = ffi.new("VkDescriptorSetLayoutCreateInfo*")
            set_info.sType = vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO
            set_info.bindingCount = storage_buffers
            set_info.pBindings = bindings
            out = ffi.new("VkDescriptorSetLayout*")
            check("vkCreateDescriptorSetLayout", lib.vkCreateDescriptorSetLayout(handle, set_info, ffi.NULL, out))
            self.set_layout = out[0]
            created("descriptor_set_layouts")

            layout_info = ffi.new("VkPipelineLayoutCreateInfo*")
            layout_info.sType = vk.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO
            set_layouts = ffi.new("VkDescriptorSetLayout[]", [self.set_layout])
            layout_info.setLayoutCount = 1
            layout_info.pSetLayouts = set_layouts
            push_range = ffi.new("VkPushConstantRange*")
            if push_constant_size:
                push_range.stageFlags = vk.VK_SHADER_STAGE_COMPUTE_BIT
                push_range.size = push_constant_size
                layout_info.pushConstantRangeCount = 1
                layout_info.pPushConstantRanges = push_range
            out = ffi.new("VkPipelineLayout*")
            check("vkCreatePipelineLayout", lib.vkCreatePipelineLayout(handle, layout_info, ffi.NULL, out))
            self.layout = out[0]
            created("pipeline_layouts")

            name = ffi.new("char[]", entry_point.encode())
            pipeline_info = ffi.new("VkComputePipelineCreateInfo*")
            pipeline_info.sType = vk.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO
            pipeline_info.stage.sType = vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO
            pipeline_info.stage.stage = vk.VK_SHADER_STAGE_COMPUTE_BIT
            pipeline_info.stage.module = self.shader_module
            pipeline_info.stage.pName = name
            pipeline_info.layout = self.layout
            pipeline_info.basePipelineIndex = -1
            out = ffi.new("VkPipeline*")
            check("vkCreateComputePipelines",
                  lib.vkCreateComputePipelines(handle, ffi.NULL, 1, pipeline_info, ffi.NULL, out))
            self.pipeline = out[0]
            created("pipelines")
        except BaseException:
            self._release()
            raise
        self._register()

    def _release(self) -> None:
        device = self.device
        if device._handle is None:
            return
        pipeline, self.pipeline = self.pipeline, None
        layout, self.layout = self.layout, None
        set_layout, self.set_layout = self.set_layout, None
        module, self.shader_module = self.shader_module, None
        destroy_each(device, [("pipelines", pipeline), ("pipeline_layouts", layout),
                              ("descriptor_set_layouts", set_layout), ("shader_modules", module)])


class DescriptorPool(DeviceResource):
    """A descriptor pool for up to *max_sets* sets of up to *storage_buffers_per_set* storage buffers.

    Sets are freed all at once by :meth:`reset` (or with the pool), never one by one.
    """

    def __init__(self, device, max_sets: int, storage_buffers_per_set: int) -> None:
        if max_sets < 1 or storage_buffers_per_set < 1:
            raise ValueError(f"max_sets and storage_buffers_per_set must be >= 1, got {max_sets} and "
                             f"{storage_buffers_per_set}. Fix: size the pool for the sets you need.")
        vk = device._vk
        ffi, lib = vk.ffi, vk.lib
        self.device = device
        self.max_sets = max_sets
        self.handle = None
        size = ffi.new("VkDescriptorPoolSize*")
        size.type = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
        size.descriptorCount = max_sets * storage_buffers_per_set
        info = ffi.new("VkDescriptorPoolCreateInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO
        info.maxSets = max_sets
        info.poolSizeCount = 1
        info.pPoolSizes = size
        out = ffi.new("VkDescriptorPool*")
        check("vkCreateDescriptorPool", lib.vkCreateDescriptorPool(device._handle, info, ffi.NULL, out))
        self.handle = out[0]
        created("descriptor_pools")
        self._register()

    def allocate(self, layout, count: int = 1) -> list:
        """Allocate *count* descriptor sets of *layout* (a ``ComputePipeline`` or a raw set layout).

        Raises:
            DeviceError: the pool is exhausted (``VK_ERROR_OUT_OF_POOL_MEMORY``); reset it first.
        """
        self.device._require_open()
        vk = self.device._vk
        ffi, lib = vk.ffi, vk.lib
        set_layout = getattr(layout, "set_layout", layout)
        layouts = ffi.new("VkDescriptorSetLayout[]", [set_layout] * count)
        info = ffi.new("VkDescriptorSetAllocateInfo*")
        info.sType = vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO
        info.descriptorPool = self.handle
        info.descriptorSetCount = count
        info.pSetLayouts = layouts
        out = ffi.new("VkDescriptorSet[]", count)
        check("vkAllocateDescriptorSets", lib.vkAllocateDescriptorSets(self.device._handle, info, out))
        return [out[i] for i in range(count)]

    def update(self, descriptor_set, windows: Sequence[tuple]) -> None:
        """Point binding *i* of *descriptor_set* at ``windows[i] = (block, offset, range)``.

        Raises:
            ValueError: a window leaves its block, exceeds ``maxStorageBufferRange``, or its
                offset is not a multiple of ``minStorageBufferOffsetAlignment``.
        """
        device = self.device
        device._require_open()
        vk = device._vk
        ffi, lib = vk.ffi, vk.lib
        limit = device.info.max_storage_buffer_range
        alignment = device.info.min_storage_buffer_offset_alignment
        infos = ffi.new("VkDescriptorBufferInfo[]", max(len(windows), 1))
        writes = ffi.new("VkWriteDescriptorSet[]", max(len(windows), 1))
        for i, (block, offset, size) in enumerate(windows):
            if offset < 0 or size <= 0 or offset + size > block.size or size > limit or offset % alignment:
                raise ValueError(
                    f"storage-buffer window {i} (offset {offset}, range {size}) is invalid for block "
                    f"{block.id} of {block.size} bytes (maxStorageBufferRange {limit}, offset alignment "
                    f"{alignment}). Fix: bind windows inside the block, at most {limit} bytes, at "
                    f"aligned offsets.")
            infos[i].buffer = block._buffer
            infos[i].offset = offset
            infos[i].range = size  # a real size: the binding turns VK_WHOLE_SIZE into -1
            writes[i].sType = vk.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET
            writes[i].dstSet = descriptor_set
            writes[i].dstBinding = i
            writes[i].descriptorCount = 1
            writes[i].descriptorType = vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
            writes[i].pBufferInfo = infos + i
        lib.vkUpdateDescriptorSets(device._handle, len(windows), writes, 0, ffi.NULL)

    def reset(self) -> None:
        """Free every set allocated from this pool (the GPU must no longer use them)."""
        self.device._require_open()
        lib = self.device._vk.lib
        check("vkResetDescriptorPool", lib.vkResetDescriptorPool(self.device._handle, self.handle, 0))

    def _release(self) -> None:
        device = self.device
        handle, self.handle = self.handle, None
        if device._handle is not None:
            destroy_each(device, [("descriptor_pools", handle)])
