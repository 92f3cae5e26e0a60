"""The compaction planner and its host executor.

Properties pinned here: final ranges never overlap, pinned entries never move, alignment is kept,
entries only move down, ``max_bytes`` is respected, the wave rule holds, and the host executor
leaves every entry's bytes at its new offset exactly as a plain copy of each entry would.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import round_up
from vyrecache._core.compaction import (CHUNK_DTYPE, FREE_RANGE_DTYPE, MAX_CHUNK_BYTES,
                                        CompactionPlan, execute_on_host, plan_block, plan_tier)


@st.composite
def layouts(draw, max_entries=40, max_size=200_000):
    """A block after fills and evictions: (offsets, sizes, pinned, block_size, alignment)."""
    alignment = draw(st.sampled_from([16, 64, 256]))
    count = draw(st.integers(0, max_entries))
    offsets, sizes, pinned = [], [], []
    cursor = 0
    for _ in range(count):
        cursor += draw(st.integers(0, 3)) * alignment * draw(st.sampled_from([1, 7, 300]))
        size = draw(st.one_of(st.integers(1, 64), st.integers(1, max_size)))
        offsets.append(cursor)
        sizes.append(size)
        pinned.append(draw(st.integers(0, 9)) == 0)
        cursor += round_up(size, alignment)
    block_size = round_up(cursor, alignment) + draw(st.integers(0, 4)) * alignment
    return (np.array(offsets, np.uint64), np.array(sizes, np.uint64), np.array(pinned, bool),
            max(block_size, alignment), alignment)


def check_waves(plan):
    """Every dependency goes to an earlier wave; chunks of a wave are disjoint."""
    chunks = plan.chunks
    assert np.all(np.diff(chunks["wave"].astype(np.int64)) >= 0)
    src_key = (chunks["src_block"].astype(np.uint64) << np.uint64(40)) + chunks["src_offset"]
    dst_key = (chunks["dst_block"].astype(np.uint64) << np.uint64(40)) + chunks["dst_offset"]
    size = chunks["size"].astype(np.uint64)
    for index in range(len(chunks)):
        dst_hits_src = (dst_key[index] < src_key + size) & (src_key < dst_key[index] + size[index])
        dst_hits_src[index] = False
        assert np.all(chunks["wave"][dst_hits_src] < chunks["wave"][index])
        same_wave = chunks["wave"] == chunks["wave"][index]
        same_wave[index] = False
        src_hits_dst = (src_key[index] < dst_key + size) & (dst_key < src_key[index] + size[index])
        dst_hits_dst = (dst_key[index] < dst_key + size) & (dst_key < dst_key[index] + size[index])
        assert not np.any(same_wave & (dst_hits_src | src_hits_dst | dst_hits_dst))
    for wave in range(plan.waves):
        assert np.all(plan.wave(wave)["wave"] == wave)


def check_layout(plan, blocks, alignment, max_bytes=None):
    """Shared properties of any plan over ``blocks`` = [(offsets, sizes, pinned)]."""
    final = {b: [] for b in range(len(blocks))}
    moved_bytes = 0
    moves = 0
    for b, (offsets, sizes, pinned) in enumerate(blocks):
        new_offsets, new_blocks = plan.new_offsets[b], plan.new_blocks[b]
        assert len(new_offsets) == len(offsets)
        for i in range(len(offsets)):
            moved = new_blocks[i] != b or new_offsets[i] != offsets[i]
            if pinned[i]:
                assert not moved
            if moved:
                assert sizes[i] > 0
                moves += 1
                moved_bytes += int(sizes[i])
                if new_blocks[i] == b:
                    assert new_offsets[i] < offsets[i], "entries move only downward"
            assert new_offsets[i] % alignment == 0
            if sizes[i]:
                final[int(new_blocks[i])].append((int(new_offsets[i]),
                                                  int(new_offsets[i]) + round_up(int(sizes[i]), alignment)))
    for b, ranges in final.items():
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            assert end <= start, "final ranges overlap"
        if ranges:
            assert ranges[-1][1] <= plan.block_sizes[b]
        # Free ranges are exactly the complement.
        free = plan.free_ranges[b]
        assert free.dtype == FREE_RANGE_DTYPE
        covered = sorted(ranges + [(int(r["offset"]), int(r["offset"] + r["size"])) for r in free])
        position = 0
        for start, end in covered:
            assert start == position
            position = end
        assert position == plan.block_sizes[b]
        assert np.all(free["size"] > 0) and np.all(free["offset"] % alignment == 0)
        assert np.all(free["offset"][1:] > free["offset"][:-1] + free["size"][:-1]), "adjacent"
    assert plan.moves == moves
    assert plan.bytes_moved == moved_bytes
    if max_bytes is not None:
        assert plan.bytes_moved <= max_bytes
    # The chunks cover exactly the moved entries, each rounded up to 16 bytes.
    assert plan.chunks.dtype == CHUNK_DTYPE
    assert np.all(plan.chunks["size"] <= MAX_CHUNK_BYTES)
    assert np.all(plan.chunks["size"] % 16 == 0) and np.all(plan.chunks["size"] > 0)
    expected = sum(round_up(int(sizes[i]), 16)
                   for b, (offsets, sizes, pinned) in enumerate(blocks) for i in range(len(sizes))
                   if plan.new_blocks[b][i] != b or plan.new_offsets[b][i] != offsets[i])
    assert plan.chunk_bytes == expected
    check_waves(plan)


def fill_blocks(plan, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8) for size in plan.block_sizes]


def check_bytes_after_execution(plan, blocks, arrays):
    """Each entry's bytes sit at its new place exactly as before the plan ran; the streaming
    executor leaves every byte of every block exactly as the memmove one does."""
    before = [array.copy() for array in arrays]
    streamed = [array.copy() for array in arrays]
    execute_on_host(plan, arrays)
    execute_on_host(plan, streamed, streaming=True, threads=3)
    for plain, stream in zip(arrays, streamed):
        assert np.array_equal(plain, stream)
    for b, (offsets, sizes, _) in enumerate(blocks):
        for i in range(len(offsets)):
            size = int(sizes[i])
            old, new = int(offsets[i]), int(plan.new_offsets[b][i])
            target = arrays[int(plan.new_blocks[b][i])]
            assert np.array_equal(target[new:new + size], before[b][old:old + size]), (b, i)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), st.one_of(st.none(), st.integers(0, 400_000)))
def test_single_block_plan_keeps_every_invariant(layout, max_bytes):
    offsets, sizes, pinned, block_size, alignment = layout
    plan = plan_block(offsets, sizes, pinned, block_size, alignment, max_bytes)
    check_layout(plan, [(offsets, sizes, pinned)], alignment, max_bytes)
    check_bytes_after_execution(plan, [(offsets, sizes, pinned)], fill_blocks(plan))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(layouts(max_entries=12, max_size=20_000), min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(0, 100_000)), st.booleans())
def test_tier_plan_keeps_every_invariant(layouts_, max_bytes, evacuate):
    alignment = 256  # one alignment per tier
    blocks, sizes_of_blocks = [], []
    for offsets, sizes, pinned, _block_size, _ in layouts_:
        offsets = offsets // 16 * 0  # re-lay out at the tier's alignment
        cursor = 0
        for i in range(len(sizes)):
            offsets[i] = cursor
            cursor += round_up(int(sizes[i]), alignment) * (1 + i % 2)
        blocks.append((offsets, sizes, pinned))
        sizes_of_blocks.append(round_up(max(cursor, 1), alignment))
    plan = plan_tier(blocks, sizes_of_blocks, alignment, max_bytes, evacuate)
    check_layout(plan, blocks, alignment, max_bytes)
    for b in plan.emptied_blocks:
        assert not blocks[b][2].any()
        assert np.all(plan.new_blocks[b][blocks[b][1] > 0] != b)
        assert len(plan.free_ranges[b]) == 1 and plan.free_ranges[b]["size"][0] == sizes_of_blocks[b]
    if not evacuate:
        assert plan.emptied_blocks == ()
    check_bytes_after_execution(plan, blocks, fill_blocks(plan))


def test_full_pass_without_pins_leaves_one_free_range():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5000, 300).astype(np.uint64)
    offsets = np.cumsum(np.concatenate(([0], (sizes[:-1] + 63) // 64 * 64 * 2))).astype(np.uint64)
    block_size = int(offsets[-1]) + 8192
    keep = rng.random(300) < 0.5
    plan = plan_block(offsets[keep], sizes[keep], np.zeros(keep.sum(), bool), block_size, 64)
    assert len(plan.free_ranges[0]) == 1
    assert plan.free_ranges[0]["size"][0] == block_size - int(((sizes[keep] + 63) // 64 * 64).sum())
    assert plan.complete


def test_pinned_entry_stays_and_later_small_entries_fill_the_gap_before_it():
    #       [a 32][gap 32][b 100][gap][P 16 pinned @256][gap][c 70000 @512][d 16 @71000]
    plan = plan_block([0, 64, 256, 512, 70528], [32, 100, 16, 70000, 16], [0, 0, 1, 0, 0],
                      1 << 20)
    assert list(plan.new_offsets[0]) == [0, 32, 256, 272, 144]
    check_layout(plan, [(np.array([0, 64, 256, 512, 70528], np.uint64),
                         np.array([32, 100, 16, 70000, 16], np.uint64),
                         np.array([0, 0, 1, 0, 0], bool))], 16)


def test_slide_by_sixteen_bytes_of_a_one_mebibyte_entry_runs_one_chunk_per_wave():
    plan = plan_block([16], [1 << 20], [False], 2 << 20)
    assert plan.new_offsets[0][0] == 0
    assert len(plan.chunks) == 16 and plan.waves == 16
    block = np.random.default_rng(2).integers(0, 256, 2 << 20, dtype=np.uint8)
    expected = block.copy()
    expected[0:1 << 20] = block[16:16 + (1 << 20)]
    streamed = block.copy()
    execute_on_host(plan, [block])
    execute_on_host(plan, [streamed], streaming=True)
    assert np.array_equal(block[:1 << 20], expected[:1 << 20])
    assert np.array_equal(streamed, block)


@pytest.mark.parametrize("entry", [4096, 64 << 10, 1 << 20])
def test_threads_split_large_waves_and_give_the_memmove_result(entry):
    # 48 MiB with half the entries evicted: every wave is over the 1 MiB split threshold.
    rng = np.random.default_rng(entry)
    count = (48 << 20) // entry
    keep = np.sort(rng.permutation(count)[:count // 2])
    plan = plan_block(keep.astype(np.uint64) * entry, np.full(len(keep), entry, np.uint64),
                      np.zeros(len(keep), bool), 48 << 20)
    block = rng.integers(0, 256, 48 << 20, dtype=np.uint8)
    expected = block.copy()
    execute_on_host(plan, [expected])
    for threads in (2, 3, 8):
        streamed = block.copy()
        execute_on_host(plan, [streamed], streaming=True, threads=threads)
        assert np.array_equal(streamed, expected), threads


def test_thread_count_outside_its_range_is_refused_with_a_fix():
    plan = plan_block([64], [64], [False], 256)
    for threads in (0, 9):
        with pytest.raises(ValueError, match="Fix:"):
            execute_on_host(plan, [np.zeros(256, np.uint8)], streaming=True, threads=threads)


def test_streaming_merges_neighbours_only_while_source_and_destination_stay_apart():
    # 64 entries of 4 KiB, every other one evicted: runs of neighbours slide by the same
    # distance, and the last runs slide by less than their length (overlapping merged ranges).
    rng = np.random.default_rng(5)
    keep = np.sort(rng.permutation(64)[:40])
    offsets = keep.astype(np.uint64) * 4096
    plan = plan_block(offsets, np.full(len(keep), 4096, np.uint64), np.zeros(len(keep), bool),
                      64 * 4096)
    block = rng.integers(0, 256, 64 * 4096, dtype=np.uint8)
    plain, streamed = block.copy(), block.copy()
    execute_on_host(plan, [plain])
    execute_on_host(plan, [streamed], streaming=True)
    assert np.array_equal(plain, streamed)
    for i, old in enumerate(offsets):
        new = int(plan.new_offsets[0][i])
        assert np.array_equal(streamed[new:new + 4096], block[int(old):int(old) + 4096])


def test_max_bytes_stops_before_the_first_move_that_would_exceed_it():
    offsets, sizes = np.array([100 * 16, 200 * 16, 300 * 16], np.uint64), np.array([160] * 3, np.uint64)
    plan = plan_block(offsets, sizes, [0, 0, 0], 8192, max_bytes=330)
    assert plan.bytes_moved == 320 and plan.moves == 2 and not plan.complete
    assert list(plan.new_offsets[0]) == [0, 160, 4800]
    assert plan_block(offsets, sizes, [0, 0, 0], 8192, max_bytes=0).moves == 0


def test_evacuation_empties_the_emptiest_block_into_the_others():
    a = (np.array([0, 4096], np.uint64), np.array([1000, 1000], np.uint64), np.zeros(2, bool))
    b = (np.array([8192], np.uint64), np.array([1500], np.uint64), np.zeros(1, bool))
    plan = plan_tier([a, b], 16384, 256)
    assert plan.emptied_blocks == (1,)
    assert plan.new_blocks[1][0] == 0 and plan.new_offsets[1][0] == 2048
    check_layout(plan, [a, b], 256)
    check_bytes_after_execution(plan, [a, b], fill_blocks(plan))


def test_a_block_with_a_pin_is_never_emptied():
    a = (np.array([0], np.uint64), np.array([100], np.uint64), np.zeros(1, bool))
    b = (np.array([512], np.uint64), np.array([100], np.uint64), np.ones(1, bool))
    plan = plan_tier([a, b], 4096, 256)
    assert plan.emptied_blocks == (0,)
    assert plan.new_blocks[0][0] == 1 and plan.new_offsets[0][0] == 0


def test_an_evacuation_over_the_budget_is_skipped():
    a = (np.array([0], np.uint64), np.array([1000], np.uint64), np.zeros(1, bool))
    b = (np.array([0], np.uint64), np.array([2000], np.uint64), np.zeros(1, bool))
    assert plan_tier([a, b], 8192, 16, max_bytes=999).emptied_blocks == ()
    assert plan_tier([a, b], 8192, 16, max_bytes=1000).emptied_blocks == (0,)


def test_zero_byte_entries_never_move():
    plan = plan_block([0, 64, 64], [0, 0, 32], [0, 0, 0], 4096)
    assert list(plan.new_offsets[0]) == [0, 64, 0]


@pytest.mark.parametrize("offsets, sizes, block_size, alignment, message", [
    ([8], [16], 4096, 16, "not a multiple of the alignment"),
    ([0, 16], [32, 16], 4096, 16, "not sorted by offset or overlap"),
    ([4080], [32], 4096, 16, "ends past the block size"),
    ([0], [16], 4096, 24, "power of two"),
    ([0], [16], 4100, 16, "not a multiple of the alignment 16 or is 1 TiB"),
])
def test_bad_input_is_refused_with_a_fix(offsets, sizes, block_size, alignment, message):
    with pytest.raises(ValueError, match=message) as caught:
        plan_block(offsets, sizes, [0] * len(offsets), block_size, alignment)
    assert "Fix:" in str(caught.value)


def test_executor_refuses_arrays_that_do_not_match_the_plan():
    plan = plan_block([16], [16], [0], 4096)
    with pytest.raises(ValueError, match="one array per planned block"):
        execute_on_host(plan, [])
    with pytest.raises(ValueError, match="at least 4096 bytes"):
        execute_on_host(plan, [np.zeros(100, np.uint8)])
    with pytest.raises(TypeError):
        CompactionPlan()


def test_plan_arrays_are_read_only():
    plan = plan_block([16], [16], [0], 4096)
    with pytest.raises(ValueError):
        plan.chunks["size"][0] = 0
    with pytest.raises(ValueError):
        plan.new_offsets[0][0] = 0


def test_random_evictions_of_64_kib_entries_take_few_waves():
    rng = np.random.default_rng(3)
    count = 4096
    keep = np.sort(rng.permutation(count)[:count // 2])
    offsets = keep.astype(np.uint64) * 65536
    plan = plan_block(offsets, np.full(len(keep), 65536, np.uint64), np.zeros(len(keep), bool),
                      count * 65536)
    assert plan.waves <= 24
    assert len(plan.free_ranges[0]) == 1
