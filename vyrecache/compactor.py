"""Compaction of one tier: plan with the Cython planner, move bytes on the backend, rebuild allocators.

The planner (``vyrecache/_core/compaction.pyx``) decides where every live entry
goes; the backend runs the plan (a compute shader on Vulkan, memmove on the
host); this module glues the two to the storage layer's bookkeeping and builds
the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ._core import compaction

__all__ = ["CompactionReport", "compact_tier"]


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


def compact_tier(storage, backend, tier: int, max_bytes: int | None = None) -> CompactionReport:
    """Slide the live, unpinned entries of ``tier`` together; pinned ones stay where they are."""
    started = time.perf_counter()
    block_ids = list(storage.tier_blocks(tier))
    largest_before = storage.largest_free(tier)
    lives = [storage.live_in_block(gb) for gb in block_ids]
    blocks = [storage.block(gb) for gb in block_ids]
    plan = compaction.plan_tier([(offsets, sizes, pinned) for _, offsets, sizes, pinned in lives],
                                [block.size for block in blocks], storage.alignment, max_bytes,
                                evacuate=len(blocks) > 1)
    if plan.moves:
        backend.compact(blocks, plan)
        for index, (slots, _, _, _) in enumerate(lives):
            new_blocks = np.asarray(block_ids, dtype=np.int64)[np.asarray(plan.new_blocks[index], dtype=np.int64)]
            storage.set_locations(slots, new_blocks, plan.new_offsets[index])
    for index, gb in enumerate(block_ids):
        ranges = plan.free_ranges[index]
        storage.allocator(gb).reset(zip(ranges["offset"].tolist(), ranges["size"].tolist()))
    storage.add_counter(tier, "compactions", 1)
    storage.add_counter(tier, "compaction_bytes", plan.bytes_moved)
    return CompactionReport(
        tier=tier, moves=plan.moves, bytes_moved=plan.bytes_moved,
        seconds=time.perf_counter() - started, free_bytes=storage.free_bytes(tier),
        largest_free_before=largest_before, largest_free_after=storage.largest_free(tier),
        complete=plan.complete)
