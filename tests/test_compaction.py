"""The copy executors against a plain model, byte for byte, validation layer on.

A copy table's rows are applied by numpy one wave after another (rows of a wave never overlap);
every executor must leave every byte of every block as the model does.  The shader executors are
also driven into the cases their design has to get right: tables larger than the piece table,
dispatches larger than the workgroup limit, rows the shader cannot take (unaligned), sizes that
are not multiples of 16, and blocks larger than one storage-buffer window.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vyrecache.compaction import (CopyCommands, ShaderCopies, SPLIT_BYTES, ShaderKernel, executor_for,
                                  load_compaction_spirv, measured_modes)
from vyrecache.copytable import COPY_DTYPE

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

pytestmark = pytest.mark.vulkan


@pytest.fixture(params=["commands", "shader", "split"])
def executor(vulkan_device, request):
    made = executor_for(vulkan_device, request.param)
    yield made
    made.close()


def fill(device, blocks, rng):
    contents = []
    for block in blocks:
        data = rng.integers(0, 256, block.size, dtype=np.uint8)
        device.upload(block, 0, data)
        contents.append(data)
    return contents


def model(contents, ids, table, wave_starts):
    """Apply the rows wave by wave: a wave reads what the waves before it wrote."""
    by_id = dict(zip(ids, contents))
    bounds = sorted({0, len(table), *wave_starts})
    for first, end in zip(bounds[:-1], bounds[1:]):
        reads = [by_id[int(r["src_block"])][int(r["src_offset"]):int(r["src_offset"]) + int(r["size"])].copy()
                 for r in table[first:end]]
        for row, data in zip(table[first:end], reads):
            by_id[int(row["dst_block"])][int(row["dst_offset"]):int(row["dst_offset"]) + int(row["size"])] = data


def random_table(rng, blocks, rows, waves, aligned=True, max_size=200_000):
    """Rows with disjoint destinations and sources within each wave (a cleaning-like pattern)."""
    table = np.zeros(rows, dtype=COPY_DTYPE)
    used: dict[int, list] = {}
    starts, row = [], 0
    per_wave = max(1, rows // waves)
    while row < rows:
        if row and row % per_wave == 0:
            starts.append(row)
            used = {}
        for _ in range(50):
            src, dst = rng.choice(len(blocks), 2)
            size = int(rng.integers(0, max_size))
            if aligned:
                size -= size % 16 if rng.random() < 0.5 else 0       # many sizes not multiples of 16
            src_offset = int(rng.integers(0, blocks[src].size - size + 1))
            dst_offset = int(rng.integers(0, blocks[dst].size - size + 1))
            if aligned:
                src_offset -= src_offset % 16
                dst_offset -= dst_offset % 16
            # Kept apart by the 16-byte padding too: the shader copies whole elements.
            padded = size + 16
            spans = [(src, src_offset, padded), (dst, dst_offset, padded)]
            if all(not (o < e + s2 and e < o + s) for b, o, s in spans
                   for e, s2 in used.get(b, [])) and not (src == dst and abs(src_offset - dst_offset) < padded):
                for b, o, s in spans:
                    used.setdefault(b, []).append((o, s))
                table[row] = (blocks[src].id, blocks[dst].id, src_offset, dst_offset, size)
                break
        else:
            table[row] = (blocks[0].id, blocks[1].id, 0, 0, 0)
        row += 1
    return table, starts


def padded_sizes(table, device):
    """Sizes rounded up to 16 where the shader copies the row (the tail belongs to the entry)."""
    padded = table.copy()
    taken = ShaderCopies.shader_can_copy(table, device.block_sizes)
    padded["size"] = np.where(taken, (padded["size"] + 15) // 16 * 16, padded["size"])
    return padded


@pytest.mark.parametrize("seed, kind", [(1, "device"), (2, "host"), (3, "device")])
def test_random_tables_give_the_models_bytes(vulkan_device, executor, seed, kind):
    rng = np.random.default_rng(seed)
    memory_type = vulkan_device.memory_type_for(kind, 4 * MIB)
    blocks = [vulkan_device.allocate_block(memory_type, size) for size in (MIB, 2 * MIB, MIB + 4096)]
    try:
        contents = fill(vulkan_device, blocks, rng)
        table, starts = random_table(rng, blocks, 300, 5, aligned=seed != 3)
        expected = padded_sizes(table, vulkan_device) if executor.name != "commands" else table
        model(contents, [block.id for block in blocks], expected, starts)
        executor.run(table, starts)
        for block, want in zip(blocks, contents):
            got = vulkan_device.download(block, 0, block.size)
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, f"block {block.id}: first bad bytes at {bad[:4]}"
    finally:
        for block in blocks:
            vulkan_device.free_block(block)


def test_tables_larger_than_the_piece_table_and_the_dispatch_limit(vulkan_device):
    rng = np.random.default_rng(4)
    shader = ShaderCopies(vulkan_device, SPLIT_BYTES, table_rows=7, max_groups_per_dispatch=3)
    memory_type = vulkan_device.memory_type_for("device", 2 * MIB)
    blocks = [vulkan_device.allocate_block(memory_type, MIB) for _ in range(2)]
    try:
        contents = fill(vulkan_device, blocks, rng)
        table, starts = random_table(rng, blocks, 40, 3, max_size=40_000)
        model(contents, [block.id for block in blocks], padded_sizes(table, vulkan_device), starts)
        shader.run(table, starts)
        for block, want in zip(blocks, contents):
            assert np.array_equal(vulkan_device.download(block, 0, block.size), want)
    finally:
        shader.close()
        for block in blocks:
            vulkan_device.free_block(block)


@pytest.mark.slow
def test_blocks_larger_than_a_storage_buffer_window(vulkan_device):
    """Pieces near the top of a 192 MiB block move to its bottom: windows far apart."""
    size = 192 * MIB
    assert size > vulkan_device.info.max_storage_buffer_range or pytest.skip("windows not needed")
    rng = np.random.default_rng(8)
    memory_type = vulkan_device.memory_type_for("device", size)
    block = vulkan_device.allocate_block(memory_type, size)
    other = vulkan_device.allocate_block(memory_type, MIB)
    shader = ShaderCopies(vulkan_device)
    try:
        contents = fill(vulkan_device, [block, other], rng)
        table = np.array([(block.id, block.id, 191 * MIB, 16, MIB),
                          (block.id, other.id, 4096, MIB - 1000, 1000),   # padding would leave `other`
                          (block.id, block.id, 128 * MIB - 8192, 64 * MIB - 4096, 3 * 65536 + 48),
                          (other.id, block.id, 4096, 160 * MIB + 32, 100_000),
                          (block.id, other.id, 96 * MIB, 0, 4096)], dtype=COPY_DTYPE)
        model(contents, [block.id, other.id], padded_sizes(table, vulkan_device), [])
        shader.run(table)
        assert np.array_equal(vulkan_device.download(block, 0, size), contents[0])
        assert np.array_equal(vulkan_device.download(other, 0, MIB), contents[1])
    finally:
        shader.close()
        vulkan_device.free_block(block)
        vulkan_device.free_block(other)


def test_bad_tables_and_modes_are_refused(vulkan_device):
    block = vulkan_device.allocate_block(vulkan_device.memory_type_for("device", 4096), 4096)
    shader = ShaderCopies(vulkan_device)
    try:
        for executor in (shader, CopyCommands(vulkan_device)):
            with pytest.raises(ValueError, match="Fix:"):
                executor.run(np.array([(block.id, block.id, 0, 4000, 200)], dtype=COPY_DTYPE))
            with pytest.raises(TypeError, match="COPY_DTYPE"):
                executor.run(np.zeros(3, dtype=np.uint64))
        with pytest.raises(ValueError, match="'fastest'"):
            executor_for(vulkan_device, "fastest")
        with pytest.raises(ValueError, match="piece_bytes"):
            ShaderCopies(vulkan_device, 1000)
        with pytest.raises(ValueError, match="16-byte elements"):
            shader.kernel.record(None, vulkan_device.blocks_by_id,
                                 np.array([(block.id, block.id, 8, 64, 16)], dtype=COPY_DTYPE))
    finally:
        shader.close()
        vulkan_device.free_block(block)


def test_auto_measures_every_mode_once_per_driver(vulkan_device):
    timings = measured_modes(vulkan_device)
    assert set(timings) == {"commands", "shader", "split"} and all(t > 0 for t in timings.values())
    assert measured_modes(vulkan_device) is timings
    chosen = executor_for(vulkan_device, "auto")
    try:
        assert chosen.name == min(timings, key=timings.__getitem__)
    finally:
        chosen.close()


def test_window_of_keeps_every_piece_inside_one_window():
    class FakeBlock:
        size = 1 << 30

    kernel = ShaderKernel.__new__(ShaderKernel)
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
