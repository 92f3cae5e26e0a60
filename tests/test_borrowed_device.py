"""A Vulkan instance and device that the user's own code made, given to the cache.

Everything the "user" does here goes through the ``vulkan`` binding directly, as an application
would: it creates the instance (with the validation layer and its own messenger), the device with
the extensions ``VulkanBackend.required_device_extensions`` lists, runs its own compute shader
over a leased entry, imports exported memory into a second device, and destroys its objects after
the cache is closed.  vyrecache must leave the borrowed handles alone and free all of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import vyrecache as vc
from vyrecache.vulkan import live_objects

vk = pytest.importorskip("vulkan")

pytestmark = pytest.mark.usefixtures("require_vulkan")

INVERT_SHADER = """
#version 450
layout(local_size_x = 64) in;
layout(set = 0, binding = 0) buffer Words { uint words[]; };
layout(push_constant) uniform Count { uint count; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < count) words[i] = ~words[i];
}
"""


class UserVulkan:
    """What an application owns: an instance with validation, a device, its queue family."""

    def __init__(self, extensions=None, validation=True):
        self.messages: list[str] = []
        layers, instance_extensions = [], []
        available = {p.layerName for p in vk.vkEnumerateInstanceLayerProperties()}
        self.validation = validation and "VK_LAYER_KHRONOS_validation" in available
        if os.environ.get("VYRECACHE_REQUIRE_VULKAN") == "1" and validation:
            assert self.validation, "the validation layer is not installed"
        if self.validation:
            layers, instance_extensions = ["VK_LAYER_KHRONOS_validation"], ["VK_EXT_debug_utils"]
        app = vk.VkApplicationInfo(sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO, pApplicationName="user",
                                   apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, pApplicationInfo=app,
            enabledLayerCount=len(layers), ppEnabledLayerNames=layers,
            enabledExtensionCount=len(instance_extensions), ppEnabledExtensionNames=instance_extensions), None)
        self.messenger = None
        if self.validation:
            def on_message(severity, types, data, user_data):
                self.messages.append(vk.ffi.string(data.pMessage).decode(errors="replace"))
                return 0
            create = vk.vkGetInstanceProcAddr(self.instance, "vkCreateDebugUtilsMessengerEXT")
            self.messenger = create(self.instance, vk.VkDebugUtilsMessengerCreateInfoEXT(
                sType=vk.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
                messageSeverity=(vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT
                                 | vk.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT),
                messageType=(vk.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
                             | vk.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT),
                pfnUserCallback=on_message), None)
        self.physical = vk.vkEnumeratePhysicalDevices(self.instance)[0]
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        if extensions is None:
            extensions = vc.VulkanBackend.required_device_extensions(self.physical)
        self.extensions = list(extensions)
        queue = vk.VkDeviceQueueCreateInfo(sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                           queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0])
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, queueCreateInfoCount=1, pQueueCreateInfos=[queue],
            enabledExtensionCount=len(self.extensions), ppEnabledExtensionNames=self.extensions), None)
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)

    def backend(self, **kwargs):
        return vc.VulkanBackend.from_handles(self.instance, self.physical, self.device, self.family,
                                             enabled_extensions=self.extensions, **kwargs)

    def use_device(self):
        """The device still works after the cache is gone: a buffer, memory, a wait."""
        buffer = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, size=4096, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
            sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        requirements = vk.vkGetBufferMemoryRequirements(self.device, buffer)
        memory = vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, allocationSize=requirements.size,
            memoryTypeIndex=(requirements.memoryTypeBits & -requirements.memoryTypeBits).bit_length() - 1), None)
        vk.vkBindBufferMemory(self.device, buffer, memory, 0)
        vk.vkQueueWaitIdle(self.queue)
        vk.vkDestroyBuffer(self.device, buffer, None)
        vk.vkFreeMemory(self.device, memory, None)

    def destroy(self):
        vk.vkDeviceWaitIdle(self.device)
        vk.vkDestroyDevice(self.device, None)
        if self.messenger is not None:
            vk.vkGetInstanceProcAddr(self.instance, "vkDestroyDebugUtilsMessengerEXT")(
                self.instance, self.messenger, None)
        vk.vkDestroyInstance(self.instance, None)
        assert self.messages == [], "\n".join(self.messages)


@pytest.fixture
def user():
    before = live_objects()
    owner = UserVulkan()
    yield owner
    owner.destroy()
    assert live_objects() == before      # the cache freed everything it created, and only that


def _address(handle) -> int:
    return int(vk.ffi.cast("uintptr_t", handle))


def _payload(key: int, size: int) -> np.ndarray:
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8)


@pytest.mark.parametrize("as_int", [False, True], ids=["cffi-handles", "int-handles"])
def test_a_borrowed_device_round_trips_bytes_through_both_tiers(user, as_int):
    handles = [user.instance, user.physical, user.device]
    if as_int:
        handles = [_address(handle) for handle in handles]
    backend = vc.VulkanBackend.from_handles(*handles, user.family, enabled_extensions=user.extensions)
    cache = vc.BufferCache([("host", 1 << 20), ("device", 256 << 10)], backend=backend, spill=True)
    expected = {}
    for key in range(40):
        data = _payload(key, 4096 + 97 * key)
        cache.put(key, data)
        expected[key] = data
        cache.check()
    hot = np.arange(0, 40, 3, dtype=np.uint64)
    for _ in range(8):                            # accesses promote them at the policy's threshold
        tiers = cache.access_many(hot)
    assert list(tiers) == [1] * len(hot)
    assert list(cache.demote_many(hot[::2])) == [0] * len(hot[::2])
    cache.check()
    tiers = {cache.get(key).tier for key in expected if key in cache}
    assert tiers == {0, 1}
    for key, data in expected.items():
        if key in cache:
            assert np.array_equal(cache.read(key), data), key
    cache.close()
    user.use_device()


def test_closing_the_cache_leaves_the_borrowed_handles_alone(user):
    cache = vc.BufferCache([("device", 1 << 20)], backend=user.backend())
    cache.put(1, b"x" * 1000)
    cache.close()
    # A second cache on the same device after the first one closed: the handles still work.
    cache = vc.BufferCache([("device", 1 << 20)], backend=user.backend())
    cache.put(1, b"y" * 1000)
    assert bytes(cache.read(1)) == b"y" * 1000
    cache.close()
    user.use_device()


def test_bad_handles_are_refused_with_the_value_named(user):
    with pytest.raises(TypeError, match="'nope'"):
        vc.VulkanBackend.from_handles("nope", user.physical, user.device, user.family)
    with pytest.raises(TypeError, match="NULL"):
        vc.VulkanBackend.from_handles(user.instance, vk.ffi.NULL, user.device, user.family)
    with pytest.raises(ValueError, match="is not one of the instance"):
        vc.VulkanBackend.from_handles(user.instance, 0x1234, user.device, user.family)
    with pytest.raises(ValueError, match="queue_family_index 99"):
        vc.VulkanBackend.from_handles(user.instance, user.physical, user.device, 99)
    with pytest.raises(ValueError, match="queue_index 5"):
        vc.VulkanBackend.from_handles(user.instance, user.physical, user.device, user.family, 5)
    with pytest.raises(TypeError, match="enabled_extensions"):
        vc.VulkanBackend.from_handles(user.instance, user.physical, user.device, user.family,
                                      enabled_extensions="VK_KHR_external_memory_fd")
    user.use_device()


def test_required_device_extensions_lists_what_the_device_offers(user):
    everything = vc.VulkanBackend.required_device_extensions()
    assert "VK_KHR_external_memory_fd" in everything
    offered = {p.extensionName for p in vk.vkEnumerateDeviceExtensionProperties(user.physical, None)}
    assert vc.VulkanBackend.required_device_extensions(user.physical) == [
        name for name in everything if name in offered]


def test_without_the_extensions_the_cache_works_and_export_says_why():
    owner = UserVulkan(extensions=[])
    try:
        cache = vc.BufferCache([("device", 1 << 20)], backend=owner.backend())
        cache.put(7, _payload(7, 3000))
        with cache.lease(7) as lease:
            with pytest.raises(BufferError, match="VK_KHR_external_memory_fd"):
                lease.export_fd()
        assert np.array_equal(cache.read(7), _payload(7, 3000))
        cache.close()
    finally:
        owner.destroy()


def _compile(source: str, tmp_path) -> bytes:
    compiler = shutil.which("glslangValidator")
    if compiler is None:
        pytest.fail("glslangValidator is missing: run scripts/install-system-deps.sh")
    path = tmp_path / "invert.comp"
    path.write_text(source)
    out = tmp_path / "invert.spv"
    subprocess.run([compiler, "-V", "--target-env", "vulkan1.1", "-o", str(out), str(path)],
                   check=True, capture_output=True)
    return out.read_bytes()


def test_the_users_compute_shader_runs_over_a_leased_entry(user, tmp_path):
    """The user's own pipeline binds location().buffer at location().offset and rewrites the entry."""
    spirv = _compile(INVERT_SHADER, tmp_path)
    cache = vc.BufferCache([("device", 1 << 20), ("host", 1 << 20)], backend=user.backend())
    device = user.device
    objects = []
    try:
        for key in range(5):
            cache.put(key, _payload(key, 8192))
        data = _payload(3, 8192)
        module = vk.vkCreateShaderModule(device, vk.VkShaderModuleCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, codeSize=len(spirv), pCode=spirv), None)
        binding = vk.VkDescriptorSetLayoutBinding(binding=0, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                                  descriptorCount=1, stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
        set_layout = vk.vkCreateDescriptorSetLayout(device, vk.VkDescriptorSetLayoutCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, bindingCount=1, pBindings=[binding]), None)
        push = vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT, offset=0, size=4)
        layout = vk.vkCreatePipelineLayout(device, vk.VkPipelineLayoutCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, setLayoutCount=1, pSetLayouts=[set_layout],
            pushConstantRangeCount=1, pPushConstantRanges=[push]), None)
        stage = vk.VkPipelineShaderStageCreateInfo(sType=vk.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                                                   stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main")
        pipeline = vk.vkCreateComputePipelines(device, None, 1, [vk.VkComputePipelineCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO, stage=stage, layout=layout)], None)[0]
        pool = vk.vkCreateDescriptorPool(device, vk.VkDescriptorPoolCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, maxSets=1, poolSizeCount=1,
            pPoolSizes=[vk.VkDescriptorPoolSize(type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount=1)]), None)
        command_pool = vk.vkCreateCommandPool(device, vk.VkCommandPoolCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, queueFamilyIndex=user.family), None)
        fence = vk.vkCreateFence(device, vk.VkFenceCreateInfo(sType=vk.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO), None)
        objects = [(vk.vkDestroyShaderModule, module), (vk.vkDestroyDescriptorSetLayout, set_layout),
                   (vk.vkDestroyPipelineLayout, layout), (vk.vkDestroyPipeline, pipeline),
                   (vk.vkDestroyDescriptorPool, pool), (vk.vkDestroyCommandPool, command_pool),
                   (vk.vkDestroyFence, fence)]
        descriptor = vk.vkAllocateDescriptorSets(device, vk.VkDescriptorSetAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, descriptorPool=pool, descriptorSetCount=1,
            pSetLayouts=[set_layout]))[0]
        commands = vk.vkAllocateCommandBuffers(device, vk.VkCommandBufferAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, commandPool=command_pool,
            level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))[0]
        with cache.lease(3, writable=True) as lease:
            where = lease.location
            assert where.size == 8192 and where.buffer != 0
            buffer_info = vk.VkDescriptorBufferInfo(buffer=vk.ffi.cast("VkBuffer", where.buffer),
                                                    offset=where.offset, range=where.size)
            vk.vkUpdateDescriptorSets(device, 1, [vk.VkWriteDescriptorSet(
                sType=vk.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, dstSet=descriptor, dstBinding=0,
                descriptorCount=1, descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                pBufferInfo=[buffer_info])], 0, None)
            vk.vkBeginCommandBuffer(commands, vk.VkCommandBufferBeginInfo(
                sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                flags=vk.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT))
            vk.vkCmdBindPipeline(commands, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipeline)
            vk.vkCmdBindDescriptorSets(commands, vk.VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, [descriptor],
                                       0, None)
            count = vk.ffi.new("uint32_t*", where.size // 4)
            vk.vkCmdPushConstants(commands, layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, 4, count)
            vk.vkCmdDispatch(commands, (where.size // 4 + 63) // 64, 1, 1)
            barrier = vk.VkMemoryBarrier(sType=vk.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                                         srcAccessMask=vk.VK_ACCESS_SHADER_WRITE_BIT,
                                         dstAccessMask=vk.VK_ACCESS_HOST_READ_BIT | vk.VK_ACCESS_TRANSFER_READ_BIT)
            vk.vkCmdPipelineBarrier(commands, vk.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                                    vk.VK_PIPELINE_STAGE_HOST_BIT | vk.VK_PIPELINE_STAGE_TRANSFER_BIT, 0,
                                    1, [barrier], 0, None, 0, None)
            vk.vkEndCommandBuffer(commands)
            vk.vkQueueSubmit(user.queue, 1, [vk.VkSubmitInfo(sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                                             commandBufferCount=1, pCommandBuffers=[commands])],
                             fence)
            vk.vkWaitForFences(device, 1, [fence], vk.VK_TRUE, 10 ** 10)
        assert np.array_equal(cache.read(3), ~data)
        for key in (0, 1, 2, 4):           # the neighbours in the same memory are untouched
            assert np.array_equal(cache.read(key), _payload(key, 8192)), key
        cache.check()
    finally:
        for destroy, handle in reversed(objects):
            destroy(device, handle, None)
        cache.close()


def _import_and_read(exported: vc.ExportedMemory) -> bytes:
    """A second device (its own instance) imports the fd and reads the entry through a mapping."""
    other = UserVulkan()
    try:
        properties = vk.vkGetPhysicalDeviceProperties(other.physical)
        assert exported.device_uuid and len(exported.device_uuid) == 16
        flags = vk.vkGetPhysicalDeviceMemoryProperties(other.physical).memoryTypes[
            exported.memory_type_index].propertyFlags
        assert properties is not None and flags & vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT
        imported = vk.VkImportMemoryFdInfoKHR(sType=vk.VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR,
                                              handleType=vk.VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT,
                                              fd=exported.take_fd())
        memory = vk.vkAllocateMemory(other.device, vk.VkMemoryAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, pNext=imported,
            allocationSize=exported.allocation_size, memoryTypeIndex=exported.memory_type_index), None)
        try:
            pointer = vk.vkMapMemory(other.device, memory, 0, exported.allocation_size, 0)
            data = bytes(pointer[exported.offset:exported.offset + exported.size])
            vk.vkUnmapMemory(other.device, memory)
        finally:
            vk.vkFreeMemory(other.device, memory, None)
        return data
    finally:
        other.destroy()


@pytest.mark.parametrize("borrowed", [False, True], ids=["own-device", "borrowed-device"])
def test_an_exported_fd_imported_by_a_second_device_reads_the_same_bytes(user, borrowed):
    backend = user.backend() if borrowed else vc.VulkanBackend(validation=True)
    cache = vc.BufferCache([("device", 1 << 20), ("host", 1 << 20)], backend=backend)
    try:
        for key in range(6):
            cache.put(key, _payload(key, 5000 + key))
        with cache.lease(4) as lease:
            with lease.export_fd() as exported:
                assert exported.size == 5004 and exported.offset == lease.location.offset
                assert exported.device_uuid == cache.device.device_uuid
                assert _import_and_read(exported) == _payload(4, 5004).tobytes()
    finally:
        cache.close()


def test_an_open_export_keeps_the_lease_and_the_cache_from_ending(user):
    cache = vc.BufferCache([("device", 1 << 20)], backend=user.backend())
    cache.put(1, _payload(1, 2000))
    lease = cache.lease(1)
    exported = lease.export_fd()
    fd = exported.fd
    os.fstat(fd)                                       # a real open fd
    with pytest.raises(BufferError, match="still has 1 view"):
        lease.release()
    with pytest.raises(BufferError):
        cache.close()
    with pytest.raises(vc.PinnedError):
        cache.remove(1)                                # still leased: the bytes cannot go
    exported.close()
    with pytest.raises(OSError):
        os.fstat(fd)                                   # an fd nobody took is closed with the export
    exported.close()                                   # idempotent
    with pytest.raises(BufferError, match="taken"):
        exported.take_fd()
    lease.release()
    with pytest.raises(BufferError, match="has ended"):
        lease.export_fd()
    cache.remove(1)
    cache.check()
    cache.close()


def test_zero_size_entries_and_the_host_backend_have_nothing_to_export():
    host = vc.BufferCache([("host", 1 << 20)], backend="host")
    host.put(1, b"abc")
    host.put(2, b"")
    with host.lease(1) as lease, pytest.raises(BufferError, match="host backend"):
        lease.export_fd()
    with host.lease(2) as lease, pytest.raises(BufferError, match="0 bytes"):
        lease.export_fd()
    host.close()
