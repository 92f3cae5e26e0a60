"""Compute-pipeline helpers, smoke-tested with a tiny shader compiled at test time."""

import shutil
import subprocess
import struct

import numpy as np
import pytest

from vyrecache.vulkan import live_objects

SHADER = """
#version 450
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer Source { uint source[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Target { uint target[]; };
layout(push_constant) uniform Constants { uint count; uint add; } constants;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < constants.count) target[i] = source[i] * 2u + constants.add;
}
"""


@pytest.fixture(scope="module")
def spirv(tmp_path_factory):
    compiler = shutil.which("glslangValidator")
    if compiler is None:
        pytest.skip("glslangValidator not installed (apt-get install glslang-tools)")
    directory = tmp_path_factory.mktemp("shader")
    source = directory / "double.comp"
    source.write_text(SHADER)
    target = directory / "double.spv"
    subprocess.run([compiler, "-V", "--target-env", "vulkan1.1", "-o", str(target), str(source)],
                   check=True, stdout=subprocess.DEVNULL)
    return target.read_bytes()


def test_dispatch_runs_a_shader_over_storage_buffer_windows(vulkan_device, spirv):
    device = vulkan_device
    before = live_objects()
    pipeline = device.create_compute_pipeline(spirv, storage_buffers=2, push_constant_size=8)
    pool = device.create_descriptor_pool(max_sets=2, storage_buffers_per_set=2)
    count = 1000
    block = device.allocate_block(device.memory_type_for("device", 64 * 1024), 64 * 1024)
    values = np.arange(count, dtype=np.uint32)
    device.upload(block, 0, values)
    # The output window starts at an aligned offset inside the same block.
    out_offset = 16 * 1024
    (descriptor_set,) = pool.allocate(pipeline)
    pool.update(descriptor_set, [(block, 0, count * 4), (block, out_offset, count * 4)])
    with device.record() as recorder:
        recorder.dispatch(pipeline, None, [descriptor_set], struct.pack("<II", count, 5), (count + 63) // 64)
    result = device.download(block, out_offset, count * 4).view(np.uint32)
    assert np.array_equal(result, values * 2 + 5)

    # Copy, then compute on the copy, then copy back: the barrier helpers order them.
    pool.reset()
    (second,) = pool.allocate(pipeline)
    pool.update(second, [(block, 32 * 1024, count * 4), (block, 48 * 1024, count * 4)])
    with device.record() as recorder:
        recorder.copy_region(block, out_offset, block, 32 * 1024, count * 4)
        recorder.transfer_to_compute()
        recorder.dispatch(pipeline.pipeline, pipeline.layout, [second], struct.pack("<II", count, 1),
                          (count + 63) // 64)
        recorder.compute_to_transfer()
        recorder.copy_region(block, 48 * 1024, block, 0, count * 4)
    assert np.array_equal(device.download(block, 0, count * 4).view(np.uint32), (values * 2 + 5) * 2 + 1)

    pool.destroy()
    pipeline.destroy()
    pipeline.destroy()  # idempotent
    device.free_block(block)
    assert live_objects() == before


def test_windows_outside_the_limits_are_refused(vulkan_device, spirv):
    device = vulkan_device
    pipeline = device.create_compute_pipeline(spirv, storage_buffers=2, push_constant_size=8)
    pool = device.create_descriptor_pool(max_sets=1, storage_buffers_per_set=2)
    block = device.allocate_block(device.memory_type_for("device", 4096), 4096)
    (descriptor_set,) = pool.allocate(pipeline)
    with pytest.raises(ValueError, match="maxStorageBufferRange"):
        pool.update(descriptor_set, [(block, 8, 64), (block, 0, 64)])  # misaligned offset
    with pytest.raises(ValueError, match="Fix"):
        pool.update(descriptor_set, [(block, 0, 8192), (block, 0, 64)])  # past the block
    with pytest.raises(ValueError, match="SPIR-V"):
        device.create_compute_pipeline(b"not spirv", storage_buffers=1)
    pool.destroy()
    pipeline.destroy()
    device.free_block(block)


def test_pipelines_left_open_are_destroyed_with_their_device(require_vulkan, spirv):
    from vyrecache.vulkan import Device
    before = live_objects()
    device = Device(validation=True)
    pipeline = device.create_compute_pipeline(spirv, storage_buffers=2, push_constant_size=8)
    pool = device.create_descriptor_pool(max_sets=4, storage_buffers_per_set=2)
    pool.allocate(pipeline, count=4)
    device.close()
    assert live_objects() == before
    assert device.validation_messages == []
