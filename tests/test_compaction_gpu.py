"""The compaction kernel on Vulkan against the host executor, byte for byte, validation layer on.

The host executor applies the same chunk table with memmove, wave by wave; the GPU result must be
identical over the whole block (free space included, since both copy the same chunks).
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vyrecache._core.compaction import execute_on_host, plan_block, plan_tier
from vyrecache.vulkan.compute import CompactionKernel, load_compaction_spirv

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture(params=["shader", "shader+transfer", "shader-split"])
def kernel(vulkan_device, request):
    """Every chunk in the shader; only the self-overlapping ones (the rest as buffer copies); or
    every chunk in the shader with disjoint ones cut into 4 KiB workgroups."""
    kernel = CompactionKernel(vulkan_device, transfer_disjoint=request.param == "shader+transfer",
                              split_disjoint=request.param == "shader-split")
    yield kernel
    kernel.destroy()


def random_layout(rng, block_size, alignment, sizes, evict=0.5, pin=0.0):
    """Fill a block with entries of the given size choices, evict some at random, pin a few."""
    offsets, lengths = [], []
    cursor = 0
    while True:
        size = int(rng.choice(sizes)) - int(rng.integers(0, 16))
        if cursor + size > block_size:
            break
        offsets.append(cursor)
        lengths.append(size)
        cursor += (size + alignment - 1) // alignment * alignment
    keep = rng.random(len(offsets)) >= evict
    offsets = np.array(offsets, np.uint64)[keep]
    lengths = np.array(lengths, np.uint64)[keep]
    pinned = rng.random(len(offsets)) < pin
    return offsets, lengths, pinned


def allocate_with(device, data, kind="device"):
    block = device.allocate_block(device.memory_type_for(kind, data.size), data.size)
    device.upload(block, 0, data)
    return block


def gpu_matches_host(device, kernel, plan, arrays, kind="device"):
    blocks = [allocate_with(device, array, kind) for array in arrays]
    expected = [array.copy() for array in arrays]
    execute_on_host(plan, expected)
    dispatches = kernel.run(blocks, plan)
    for block, want in zip(blocks, expected):
        got = device.download(block, 0, block.size)
        mismatches = np.flatnonzero(got != want)
        assert mismatches.size == 0, f"block {block.id}: first bad byte at {mismatches[:4]}"
        device.free_block(block)
    return dispatches


def entries_intact(plan, layout, before, after):
    offsets, sizes, _ = layout
    for i in range(len(offsets)):
        old, new, size = int(offsets[i]), int(plan.new_offsets[0][i]), int(sizes[i])
        assert np.array_equal(after[new:new + size], before[old:old + size])


@pytest.mark.vulkan
@pytest.mark.parametrize("seed, sizes, pin, kind", [
    (1, [4096, 300, 10_000], 0.0, "device"),
    (2, [65536, 20_000, 1 << 17], 0.1, "device"),
    (3, [100, 5000, 70_000], 0.2, "host"),
])
def test_random_layouts_compact_identically_on_gpu_and_host(vulkan_device, kernel, seed, sizes, pin, kind):
    rng = np.random.default_rng(seed)
    block_size = 8 * MIB
    layout = random_layout(rng, block_size, 256, sizes, evict=0.5, pin=pin)
    plan = plan_block(*layout, block_size, 256)
    assert plan.moves > 0
    data = rng.integers(0, 256, block_size, dtype=np.uint8)
    gpu_matches_host(vulkan_device, kernel, plan, [data], kind)
    # And the host result itself keeps every entry's bytes (the reference is trustworthy).
    after = data.copy()
    execute_on_host(plan, [after])
    entries_intact(plan, layout, data, after)


@pytest.mark.vulkan
def test_sixteen_byte_slide_of_a_one_mebibyte_entry(vulkan_device, kernel):
    rng = np.random.default_rng(4)
    plan = plan_block([16, 16 + MIB + 32], [MIB, MIB - 5], [False, False], 4 * MIB)
    assert plan.waves >= 16
    gpu_matches_host(vulkan_device, kernel, plan, [rng.integers(0, 256, 4 * MIB, dtype=np.uint8)])


@pytest.mark.vulkan
def test_many_waves_and_split_dispatches(vulkan_device):
    # Adjacent 80 KiB entries all slid by 48 bytes: one dependency chain through every chunk.
    rng = np.random.default_rng(5)
    count = 40
    offsets = 48 + np.arange(count, dtype=np.uint64) * 81920
    plan = plan_block(offsets, np.full(count, 81920, np.uint64), np.zeros(count, bool), 4 * MIB)
    assert plan.waves == 2 * count
    kernel = CompactionKernel(vulkan_device, max_groups_per_dispatch=3)
    assert kernel.max_groups_per_dispatch == 3
    try:
        gpu_matches_host(vulkan_device, kernel, plan, [rng.integers(0, 256, 4 * MIB, dtype=np.uint8)])
        # Many independent chunks in one wave: dispatches of at most 3 workgroups.
        layout = random_layout(rng, 4 * MIB, 16, [20_000], evict=0.5)
        plan = plan_block(*layout, 4 * MIB)
        dispatches = gpu_matches_host(vulkan_device, kernel, plan,
                                      [rng.integers(0, 256, 4 * MIB, dtype=np.uint8)])
        assert dispatches >= len(plan.chunks) / 3
    finally:
        kernel.destroy()


@pytest.mark.vulkan
def test_evacuation_across_blocks(vulkan_device, kernel):
    rng = np.random.default_rng(6)
    layouts = [random_layout(rng, 2 * MIB, 256, [30_000, 4000], evict=evict)
               for evict in (0.6, 0.95, 0.5)]
    plan = plan_tier(layouts, 2 * MIB, 256)
    assert plan.emptied_blocks
    gpu_matches_host(vulkan_device, kernel, plan,
                     [rng.integers(0, 256, 2 * MIB, dtype=np.uint8) for _ in layouts])


@pytest.mark.vulkan
def test_two_plans_in_one_recording(vulkan_device, kernel):
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, MIB, dtype=np.uint8) for _ in range(2)]
    plans = [plan_block(*random_layout(rng, MIB, 16, [3000, 9000]), MIB) for _ in range(2)]
    blocks = [allocate_with(vulkan_device, array) for array in arrays]
    with vulkan_device.record() as recorder:
        for block, plan in zip(blocks, plans):
            kernel.record(recorder, block, plan)
    for block, plan, array in zip(blocks, plans, arrays):
        execute_on_host(plan, [array])
        assert np.array_equal(vulkan_device.download(block, 0, MIB), array)
        vulkan_device.free_block(block)


@pytest.mark.vulkan
@pytest.mark.slow
def test_block_larger_than_a_storage_buffer_window(vulkan_device, kernel):
    """Entries near the top of a 192 MiB block slide to its bottom: windows far apart."""
    size = 192 * MIB
    assert size > vulkan_device.info.max_storage_buffer_range or pytest.skip("windows not needed")
    rng = np.random.default_rng(8)
    # A pinned entry at the bottom, a hole, a few entries straddling window starts and the top.
    offsets = np.array([0, 63 * MIB, 64 * MIB - 4096, 128 * MIB - 8192, 191 * MIB], np.uint64)
    sizes = np.array([4096, 4096, 3 * 65536 + 48, 3 * MIB + 16, MIB], np.uint64)
    pinned = np.array([True, False, False, False, False])
    plan = plan_block(offsets, sizes, pinned, size)
    assert int(plan.chunks["src_offset"].max()) > 128 * MIB
    data = np.empty(size, np.uint8)
    data[:] = rng.integers(0, 256, size // 8, dtype=np.uint8).repeat(8)
    block = allocate_with(vulkan_device, data)
    try:
        kernel.run(block, plan)
        expected = data
        execute_on_host(plan, [expected])
        got = vulkan_device.download(block, 0, size)
        assert np.array_equal(got, expected)
    finally:
        vulkan_device.free_block(block)


@pytest.mark.vulkan
def test_record_refuses_blocks_that_do_not_match_the_plan(vulkan_device, kernel):
    plan = plan_block([4096], [100], [False], MIB)
    small = vulkan_device.allocate_block(vulkan_device.memory_type_for("device", 4096), 4096)
    try:
        with pytest.raises(ValueError, match="Fix:"):
            kernel.run([small, small], plan)
        with pytest.raises(ValueError, match="smaller than planned|Fix:"):
            kernel.run(small, plan)
    finally:
        vulkan_device.free_block(small)


def test_window_of_keeps_every_chunk_inside_one_window():
    class FakeBlock:
        size = 1 << 30

    kernel = CompactionKernel.__new__(CompactionKernel)
    kernel.window_size = 128 * MIB
    kernel.window_step = 64 * MIB
    for offset in (0, 64 * MIB - 16, 64 * MIB, 200 * MIB + 12345 * 16, (1 << 30) - 65536):
        _, start, size = kernel.window_of(FakeBlock, offset)
        assert start <= offset and offset + 65536 <= start + size <= FakeBlock.size
        assert start % (64 * MIB) == 0 and size <= 128 * MIB


def test_shipped_spirv_matches_a_fresh_compile(tmp_path):
    compiler = shutil.which("glslangValidator")
    if compiler is None:
        pytest.skip("glslangValidator not installed (apt-get install glslang-tools)")
    target = tmp_path / "compact_copy.spv"
    subprocess.run([compiler, "-V", "--target-env", "vulkan1.1", "-o", str(target),
                    str(ROOT / "shaders" / "compact_copy.comp")], check=True, stdout=subprocess.DEVNULL)
    assert target.read_bytes() == load_compaction_spirv(), "run `make shaders` and commit the .spv"


def test_shader_loops_are_bounded():
    """No loop may run long enough for lavapipe to cut it short (65,535 iterations)."""
    source = (ROOT / "shaders" / "compact_copy.comp").read_text()
    assert source.count("for (") == 2
    assert source.count("i < ELEMENTS_PER_INVOCATION") == 2
    assert "const uint ELEMENTS_PER_INVOCATION = 16u;" in source
    assert "while" not in source


def test_split_cuts_disjoint_chunks_into_workgroup_pieces_and_keeps_overlapping_ones_whole():
    from vyrecache.vulkan.compute import SPLIT_BYTES, _split_disjoint
    # Entry A (40,000 bytes) slides by 16 bytes onto itself: one whole chunk.  Entry B (64 KiB)
    # moves down by more than its size: disjoint, 16 pieces.  Entry C (4 KiB + 16): two pieces.
    plan = plan_block([16, 131072, 262144], [40000, 65536, SPLIT_BYTES + 16],
                      [False, False, False], 1 << 20)
    split = _split_disjoint(plan.chunks)
    assert split["size"].sum() == plan.chunks["size"].sum()
    assert len(split) == 16 + 1 + 2
    for chunk in plan.chunks:
        pieces = split[(split["src_offset"] >= chunk["src_offset"])
                       & (split["src_offset"] < chunk["src_offset"] + chunk["size"])]
        assert np.all(pieces["wave"] == chunk["wave"])
        assert np.all(pieces["src_offset"] - pieces["dst_offset"]
                      == chunk["src_offset"] - chunk["dst_offset"])      # entries move down
        overlapping = chunk["dst_offset"] + chunk["size"] > chunk["src_offset"]
        assert len(pieces) == (1 if overlapping else -(-int(chunk["size"]) // SPLIT_BYTES))


def test_a_kernel_takes_at_most_one_way_of_running_disjoint_chunks(vulkan_device):
    with pytest.raises(ValueError, match="Fix:"):
        CompactionKernel(vulkan_device, transfer_disjoint=True, split_disjoint=True)
