"""Compaction of one tier: plan with the Cython planner, move bytes on the backend, rebuild allocators.

The planner (``vyrecache/_core/compaction.pyx``) decides where every live entry
goes; the backend runs the plan (a compute shader on Vulkan, memmove on the
host); this module glues the two to the storage layer's bookkeeping and builds
the report.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass

import numpy as np

from ._core import compaction
from .errors import DeviceOutOfMemoryError

__all__ = ["CompactionReport", "compact_tier", "make_hole", "compact_for_room", "check_max_bytes"]


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction of one tier did.

    ``largest_free_before/after`` are the largest contiguous free ranges of the
    tier; after a full pass without pins, the largest free range of each block is
    all its free bytes.
    """

    tier: int
    moves: int
    bytes_moved: int
    seconds: float
    free_bytes: int
    largest_free_before: int
    largest_free_after: int
    blocks_released: int = 0
    complete: bool = True


def check_max_bytes(max_bytes: object) -> int | None:
    """``max_bytes`` as a Python int in [0, 2**64), or None; anything else raises, naming it.

    Any integer type is accepted (numpy's included); bools, floats and strings are not.
    """
    if max_bytes is None:
        return None
    if isinstance(max_bytes, (bool, np.bool_)) or not hasattr(type(max_bytes), "__index__"):
        raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__} "
                        f"{max_bytes!r}. Fix: pass a byte count such as 64 << 20, or None for no "
                        f"limit.")
    value = operator.index(max_bytes)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"max_bytes must be in [0, 2**64), got {max_bytes!r}. Fix: pass a byte "
                         f"count such as 64 << 20, or None for no limit.")
    return value


def compact_tier(storage, backend, tier: int, max_bytes: int | None = None,
                 region: tuple[int, int, int] | None = None, release: bool = False) -> CompactionReport:
    """Slide the live, unpinned entries of ``tier`` together; pinned ones stay where they are.

    ``region=(block, first, last)`` moves only the entries ``first..last-1`` (by
    offset) of that one block, everything else holding still as if pinned.  With
    ``release``, blocks of a several-block tier that end up empty (keeping one)
    are given back to the backend; the cache takes them back before
    its next operation that stores bytes.
    """
    max_bytes = check_max_bytes(max_bytes)
    started = time.perf_counter()
    block_ids = [gb for gb in storage.tier_blocks(tier) if not storage.is_released(gb)]
    largest_before = storage.largest_free(tier)
    lives = [storage.live_in_block(gb) for gb in block_ids]
    blocks = [storage.block(gb) for gb in block_ids]
    layouts = []
    for gb, (_, offsets, sizes, pinned) in zip(block_ids, lives):
        if region is not None:
            still = np.ones(len(offsets), dtype=bool)
            if gb == region[0]:
                still[region[1]:region[2]] = False
            pinned = pinned | still
        layouts.append((offsets, sizes, pinned))
    plan = compaction.plan_tier(layouts, [block.size for block in blocks], storage.alignment, max_bytes,
                                evacuate=len(blocks) > 1 and region is None)
    if plan.moves:
        backend.compact(blocks, plan)
        for index, (slots, _, _, _) in enumerate(lives):
            new_blocks = np.asarray(block_ids, dtype=np.int64)[np.asarray(plan.new_blocks[index], dtype=np.int64)]
            storage.set_locations(slots, new_blocks, plan.new_offsets[index])
    for index, gb in enumerate(block_ids):
        ranges = plan.free_ranges[index]
        storage.allocator(gb).reset(zip(ranges["offset"].tolist(), ranges["size"].tolist()))
    released = 0
    if release:
        # Keep one block of the tier: an empty tier still answers without taking memory back.
        kept = len(block_ids)
        for gb in block_ids:
            if kept > 1 and storage.allocator(gb).free_bytes == storage.block(gb).size:
                storage.release_block(gb)
                released += 1
                kept -= 1
    storage.add_counter(tier, "compactions", 1)
    storage.add_counter(tier, "compaction_bytes", plan.bytes_moved)
    return CompactionReport(
        tier=tier, moves=plan.moves, bytes_moved=plan.bytes_moved,
        seconds=time.perf_counter() - started, free_bytes=storage.free_bytes(tier),
        largest_free_before=largest_before, largest_free_after=storage.largest_free(tier),
        blocks_released=released, complete=plan.complete)


def make_hole(storage, backend, tier: int, size: int) -> CompactionReport | None:
    """Gather ``size`` free bytes of ``tier`` into one range by compacting the cheapest region only.

    A region runs from the end of one entry to the start of a later one; its free
    bytes are the holes it spans.  With prefix sums over a block's entries (sorted
    by offset) and one binary search per start, the region with at least ``size``
    free bytes and the fewest live bytes is found in O(n log n); compacting only
    its entries (the others count as pinned) merges its holes into one range at
    its end.  So a put moves about as many bytes as the region holds, not the
    whole tier.  Returns None when no block holds ``size`` free bytes in a region
    without pins (the caller then compacts the tier across blocks).
    """
    alignment = np.uint64(storage.alignment)
    best = None
    for gb in storage.tier_blocks(tier):
        if storage.is_released(gb):
            continue
        slots, offsets, sizes, pinned = storage.live_in_block(gb)
        charged = (sizes + alignment - np.uint64(1)) // alignment * alignment
        ends = offsets + charged
        # gaps[k]: free bytes in front of entry k; the last gap is the block's tail.
        starts_next = np.concatenate((offsets, [np.uint64(storage.block(gb).size)]))
        ends_prev = np.concatenate(([np.uint64(0)], ends))
        gaps = (starts_next - ends_prev).astype(np.int64)
        free_before = np.concatenate(([0], np.cumsum(gaps)))          # free in gaps[:k]
        live_before = np.concatenate(([0], np.cumsum(charged.astype(np.int64))))
        pins_before = np.concatenate(([0], np.cumsum(pinned.astype(np.int64))))
        # Region (i, j): gaps i..j and entries i..j-1; smallest j with enough free bytes.
        first = np.arange(len(offsets) + 1)
        after_last_gap = np.searchsorted(free_before, free_before[first] + size, side="left")
        last = after_last_gap - 1
        ok = after_last_gap <= len(gaps)
        if not ok.any():
            continue
        first, last = first[ok], last[ok]
        live = live_before[last] - live_before[first]
        live[(pins_before[last] - pins_before[first]) > 0] = np.iinfo(np.int64).max
        pick = int(np.argmin(live))
        if live[pick] == np.iinfo(np.int64).max:
            continue
        if best is None or live[pick] < best[0]:
            best = (int(live[pick]), gb, int(first[pick]), int(last[pick]))
    if best is None:
        return None
    _, gb, first, last = best
    return compact_tier(storage, backend, tier, region=(gb, first, last))




def compact_for_room(storage, tier: int, size: int, backend) -> None:
    """The storage layer's hook: make a hole of ``size`` bytes in ``tier`` before anything is evicted.

    First the cheap way, :func:`make_hole`; else slides with budgets growing 4x (compaction packs
    entries from the block start, so the holes it passes merge into one range above the last
    entry moved), so the bytes moved stay within a small factor of what was needed.  When the
    device cannot grow the kernel's chunk table the placement falls back to eviction: the
    operation still completes and loses no bytes.
    """
    try:
        if make_hole(storage, backend, tier, size) is not None and storage.largest_free(tier) >= size:
            return
        budget = max(4 * size, 1 << 20)
        while True:
            report = compact_tier(storage, backend, tier, budget)
            if report.complete or storage.largest_free(tier) >= size:
                return
            budget *= 4
    except DeviceOutOfMemoryError:
        return
