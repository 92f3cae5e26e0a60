"""The compaction kernel: runs a :class:`~vyrecache._core.compaction.CompactionPlan` on the GPU.

The shader (``shaders/compact_copy.comp``, shipped as ``vyrecache/shaders/compact_copy.spv``)
copies one chunk of at most 64 KiB per workgroup.  Its set 0 binds three storage buffers:

    binding 0   source window        (a window of the chunk's source block)
    binding 1   destination window   (a window of the chunk's destination block; may be the same)
    binding 2   chunk table          (uvec4 per chunk: source element, destination element, count, 0)

Windows.  A block may be larger than ``maxStorageBufferRange`` (128 MiB on lavapipe, blocks are up
to 1 GiB), so the kernel binds windows: ``window_size`` is that limit rounded down to a power of
two and window ``k`` starts at ``k * window_size / 2``.  A chunk starting at ``offset`` lies
wholly in window ``offset // (window_size / 2)`` because it is at most 64 KiB long, far less than
half a window.  A block no larger than one window is bound whole.

Order.  Waves are recorded in order with a compute-to-compute barrier between consecutive waves;
within a wave, chunks are grouped by (source block, source window, destination block,
destination window), one dispatch per group (split at ``maxComputeWorkGroupCount[0]``).  A
barrier before the first wave orders the kernel after earlier copies and dispatches, and one
after the last makes its writes visible to later copies, dispatches and (through the recorder's
final barrier) the host.
"""

from __future__ import annotations

import struct
from importlib import resources
from typing import Any

import numpy as np

from .._core.compaction import MAX_CHUNK_BYTES
from ..copytable import COPY_DTYPE
from ..errors import DeviceError

__all__ = ["CompactionKernel", "SPLIT_BYTES", "load_compaction_spirv"]

_SPIRV_NAME = "compact_copy.spv"
_TABLE_ENTRY_BYTES = 16  # uvec4 per chunk
_ELEMENT_BYTES = 16
_MIN_TABLE_ROWS = 1024
_SETS_PER_POOL = 64
SPLIT_BYTES = 4096      # one round of the shader: 256 invocations x 16 bytes


def load_compaction_spirv() -> bytes:
    """The packaged SPIR-V of the compaction copy shader.

    Raises:
        DeviceError: the package was installed without its compiled shaders.
    """
    try:
        return resources.files("vyrecache").joinpath("shaders", _SPIRV_NAME).read_bytes()
    except FileNotFoundError:
        raise DeviceError(f"vyrecache/shaders/{_SPIRV_NAME} is missing from the installed package. "
                          "Fix: reinstall vyrecache, or run `make shaders` in a source checkout.") from None


def _merge_contiguous(rows: np.ndarray) -> np.ndarray:
    """Join copy rows that continue each other in both source and destination (one wave's rows).

    The chunks of one long entry, or of neighbouring entries that slide by the same distance,
    become one region: a memcpy-backed copy then runs at contiguous speed.
    """
    rows = rows[np.lexsort((rows["src_offset"], rows["dst_block"], rows["src_block"]))]
    ends_src = rows["src_offset"][:-1] + rows["size"][:-1]
    ends_dst = rows["dst_offset"][:-1] + rows["size"][:-1]
    continues = ((rows["src_block"][1:] == rows["src_block"][:-1])
                 & (rows["dst_block"][1:] == rows["dst_block"][:-1])
                 & (rows["src_offset"][1:] == ends_src) & (rows["dst_offset"][1:] == ends_dst))
    heads = np.flatnonzero(np.concatenate(([True], ~continues)))
    merged = rows[heads].copy()
    merged["size"] = np.add.reduceat(rows["size"], heads)
    return merged


def _overlaps_itself(chunks: np.ndarray) -> np.ndarray:
    return ((chunks["src_block"] == chunks["dst_block"])
            & (chunks["dst_offset"] < chunks["src_offset"] + chunks["size"])
            & (chunks["src_offset"] < chunks["dst_offset"] + chunks["size"]))


def _split_disjoint(chunks: np.ndarray) -> np.ndarray:
    """Cut every chunk that does not overlap itself into pieces of SPLIT_BYTES (the last one
    shorter), in place of the chunk and in its wave; self-overlapping chunks stay whole."""
    pieces = np.where(_overlaps_itself(chunks), 1,
                      (chunks["size"].astype(np.int64) + SPLIT_BYTES - 1) // SPLIT_BYTES)
    if np.all(pieces == 1):
        return chunks
    split = np.repeat(chunks, pieces)
    # Index of each piece within its chunk: 0, 1, ... per run of repeats.
    firsts = np.repeat(np.cumsum(pieces) - pieces, pieces)
    within = (np.arange(len(split)) - firsts).astype(np.uint64)
    shift = within * np.uint64(SPLIT_BYTES)     # 0 for a chunk left whole
    split["src_offset"] += shift
    split["dst_offset"] += shift
    whole = np.repeat(pieces == 1, pieces)
    split["size"] = np.where(whole, split["size"],
                             np.minimum(split["size"].astype(np.uint64) - shift, SPLIT_BYTES))
    return split


class CompactionKernel:
    """Records compaction plans into a device's command buffer.

    One kernel per device; it owns a compute pipeline, descriptor pools (sets cached per
    source/destination window pair) and a host-visible chunk-table buffer grown on demand.
    Not thread-safe, like the device.

    *max_groups_per_dispatch* caps the workgroups of one dispatch (default and upper bound:
    ``maxComputeWorkGroupCount[0]``); tests lower it to exercise the split.

    *transfer_disjoint*: chunks whose destination does not overlap their own source are recorded
    as ``vkCmdCopyBuffer`` regions of their wave (one command per block pair and wave) and only
    self-overlapping chunks go through the shader.  Off by default: every chunk runs in the
    shader.  On lavapipe the transfer path is about 5x faster, because lavapipe compiles every
    storage-buffer access into a per-lane scalar loop while a buffer copy is a memcpy.

    *split_disjoint*: chunks that do not overlap themselves run as several workgroups of
    ``SPLIT_BYTES`` each instead of one workgroup of up to 64 KiB (a self-overlapping chunk
    needs all its loads before its stores, so it stays whole).  A wave of a few hundred 64 KiB
    chunks occupies a few hundred workgroups, less than a large GPU runs at once; split, the same
    wave is sixteen times as many.  The table then holds up to ``MAX_CHUNK_BYTES / SPLIT_BYTES``
    rows per chunk (see ``rows_per_chunk``).

    Raises:
        DeviceError: the shader is missing or the driver rejected the pipeline.
    """

    def __init__(self, device, max_groups_per_dispatch: int | None = None,
                 transfer_disjoint: bool = False, split_disjoint: bool = False) -> None:
        if transfer_disjoint and split_disjoint:
            raise ValueError("transfer_disjoint and split_disjoint both decide how disjoint chunks "
                             "run. Fix: pass at most one of them.")
        self.device = device
        self.transfer_disjoint = bool(transfer_disjoint)
        self.split_disjoint = bool(split_disjoint)
        #: Table rows one plan chunk may take (what a caller reserving the table plans for).
        self.rows_per_chunk = (MAX_CHUNK_BYTES // SPLIT_BYTES) if self.split_disjoint else 1
        info = device.info
        limit = info.max_compute_work_group_count[0]
        self.max_groups_per_dispatch = limit if max_groups_per_dispatch is None else max(
            1, min(int(max_groups_per_dispatch), limit))
        # A power of two so that half of it is a multiple of minStorageBufferOffsetAlignment.
        self.window_size = 1 << (int(info.max_storage_buffer_range).bit_length() - 1)
        self.window_step = self.window_size // 2
        self.pipeline = device.create_compute_pipeline(load_compaction_spirv(), storage_buffers=3,
                                                       push_constant_size=4)
        self._pools: list = []
        self._sets_free = 0
        self._sets: dict[tuple, tuple] = {}
        self._table = None
        self._table_rows_used = 0
        self._retired_tables: list = []
        self._recorder = None
        self._sets_handed_out = False  # whether the current recording binds any cached set

    # -- windows -----------------------------------------------------------------------------------

    def window_of(self, block, offset: int) -> tuple[int, int, int]:
        """(index, start, size) of the window of *block* a chunk starting at *offset* uses."""
        if block.size <= self.window_size:
            return 0, 0, block.size
        index = offset // self.window_step
        start = index * self.window_step
        return index, start, min(self.window_size, block.size - start)

    # -- resources ---------------------------------------------------------------------------------

    def _new_recording(self, recorder) -> bool:
        """Note *recorder*; True when it starts a new recording (every earlier one has finished)."""
        if recorder is self._recorder:
            return False
        self._recorder = recorder
        self._table_rows_used = 0
        self._sets_handed_out = False
        # The previous recording was submitted and waited for: retired tables are idle now.
        for table in self._retired_tables:
            if not table.freed:
                self.device.free_block(table)
        self._retired_tables.clear()
        return True

    def reserve_table(self, rows: int) -> None:
        """Allocate the chunk table for *rows* rows now, so that recording a plan of up to that many
        chunks allocates nothing.

        Raises:
            DeviceOutOfMemoryError: the table could not be allocated.
        """
        if self._table is None or self._table.freed or self._table.size < rows * _TABLE_ENTRY_BYTES:
            size = max(_MIN_TABLE_ROWS, rows) * _TABLE_ENTRY_BYTES
            table = self.device.allocate_block(self.device.memory_type_for("host", size), size)
            if self._table is not None and not self._table.freed:
                self.device.free_block(self._table)
            self._table = table

    @property
    def table_rows(self) -> int:
        """Rows the current chunk table holds (0 before the first plan or reservation)."""
        return 0 if self._table is None or self._table.freed else self._table.size // _TABLE_ENTRY_BYTES

    def _table_rows(self, count: int) -> tuple[Any, int]:
        """Room for *count* table rows in this recording: (table block, first row)."""
        first = self._table_rows_used
        needed = first + count
        table = self._table
        if table is None or table.freed or needed * _TABLE_ENTRY_BYTES > table.size:
            rows = max(_MIN_TABLE_ROWS, 1 << (max(needed, count) - 1).bit_length())
            size = rows * _TABLE_ENTRY_BYTES
            grown = self.device.allocate_block(self.device.memory_type_for("host", size), size)
            if table is not None and not table.freed:
                # Commands recorded earlier in this recording may still read it.
                self._retired_tables.append(table)
            self._table = table = grown
            # Rows used earlier in this recording live in the old table; start afresh.
            first = 0
        self._table_rows_used = first + count
        return table, first

    def _descriptor_set(self, source, source_window, destination, destination_window, table):
        key = (source.id, source_window[0], destination.id, destination_window[0], table.id)
        cached = self._sets.get(key)
        bound_already = self._sets_handed_out
        self._sets_handed_out = True
        if cached is not None and cached[1] is source and cached[2] is destination and cached[3] is table:
            return cached[0]
        if self._sets_free == 0:
            if self._pools and not bound_already:
                # No set is bound in this recording yet: every pool can be recycled.
                for pool in self._pools:
                    pool.reset()
                self._sets.clear()
                self._sets_free = len(self._pools) * _SETS_PER_POOL
            else:
                self._pools.append(self.device.create_descriptor_pool(_SETS_PER_POOL, 3))
                self._sets_free = _SETS_PER_POOL
        pool_index = len(self._pools) - 1 - (self._sets_free - 1) // _SETS_PER_POOL
        (descriptor_set,) = self._pools[pool_index].allocate(self.pipeline)
        self._sets_free -= 1
        self._pools[pool_index].update(descriptor_set, [
            (source, source_window[1], source_window[2]),
            (destination, destination_window[1], destination_window[2]),
            (table, 0, table.size),
        ])
        self._sets[key] = (descriptor_set, source, destination, table)
        return descriptor_set

    # -- recording ---------------------------------------------------------------------------------

    def record(self, recorder, blocks, plan) -> int:
        """Record *plan* into *recorder*, wave by wave; returns the number of dispatches.

        *blocks* is one :class:`~vyrecache.vulkan.device.Block` per planned block, indexed like
        the planner's blocks (a single Block is accepted for a one-block plan).  The table is
        written now; the copies happen when the recorder submits.  Several plans may be recorded
        into one recorder.  With ``transfer_disjoint`` (see the class), chunks that do not
        overlap themselves are recorded as ``vkCmdCopyBuffer`` regions of their wave instead.

        Raises:
            ValueError: wrong number of blocks, a freed block, or a block smaller than planned.
            DeviceOutOfMemoryError: the chunk table could not be grown.
        """
        if not isinstance(blocks, (list, tuple)):
            blocks = [blocks]
        planned = plan.block_sizes
        if len(blocks) != len(planned):
            raise ValueError(f"the plan covers {len(planned)} blocks, got {len(blocks)}. "
                             "Fix: pass one Block per planned block, in the planner's order.")
        for index, (block, size) in enumerate(zip(blocks, planned)):
            if block.freed or block.size < size:
                raise ValueError(f"planned block {index} ({size} bytes) is {block!r}. "
                                 "Fix: pass the live blocks the plan was made for.")
        chunks = plan.chunks
        if len(chunks) == 0:
            return 0
        self._new_recording(recorder)

        if self.transfer_disjoint:
            overlaps_itself = _overlaps_itself(chunks)
            copies, chunks = chunks[~overlaps_itself], chunks[overlaps_itself]
        else:
            copies = chunks[:0]
            if self.split_disjoint:
                chunks = _split_disjoint(chunks)
        copy_table = np.empty(len(copies), dtype=COPY_DTYPE)
        block_ids = np.array([block.id for block in blocks], dtype=np.uint32)
        copy_table["src_block"] = block_ids[copies["src_block"]]
        copy_table["dst_block"] = block_ids[copies["dst_block"]]
        copy_table["src_offset"] = copies["src_offset"]
        copy_table["dst_offset"] = copies["dst_offset"]
        copy_table["size"] = copies["size"]
        copy_waves = copies["wave"]

        count = len(chunks)
        starts, ends, waves, group_keys, first_row, table = [], [], [], [], 0, None
        if count:
            # Window of every chunk's source and destination (vectorised: plans hold 10**5 chunks).
            src_block = chunks["src_block"].astype(np.int64)
            dst_block = chunks["dst_block"].astype(np.int64)
            sizes = np.array([block.size for block in blocks], dtype=np.uint64)
            step = np.uint64(self.window_step)
            windowed = sizes > self.window_size
            src_window = np.where(windowed[src_block], chunks["src_offset"] // step, 0).astype(np.int64)
            dst_window = np.where(windowed[dst_block], chunks["dst_offset"] // step, 0).astype(np.int64)
            order = np.lexsort((dst_window, dst_block, src_window, src_block, chunks["wave"]))
            chunks = chunks[order]
            src_block, dst_block = src_block[order], dst_block[order]
            src_window, dst_window = src_window[order], dst_window[order]

            table, first_row = self._table_rows(count)
            rows = table.array[first_row * _TABLE_ENTRY_BYTES:(first_row + count) * _TABLE_ENTRY_BYTES]
            rows = rows.view(np.uint32).reshape(count, 4)
            src_base = src_window.astype(np.uint64) * step * windowed[src_block]
            dst_base = dst_window.astype(np.uint64) * step * windowed[dst_block]
            rows[:, 0] = (chunks["src_offset"] - src_base) // _ELEMENT_BYTES
            rows[:, 1] = (chunks["dst_offset"] - dst_base) // _ELEMENT_BYTES
            rows[:, 2] = chunks["size"] // _ELEMENT_BYTES
            rows[:, 3] = 0

            # Dispatch groups: runs of equal (wave, source window, destination window).
            keys = np.stack([chunks["wave"].astype(np.int64), src_block, src_window, dst_block, dst_window])
            breaks = np.flatnonzero(np.any(keys[:, 1:] != keys[:, :-1], axis=0)) + 1
            starts = [0, *breaks.tolist()]
            ends = [*breaks.tolist(), count]
            waves = chunks["wave"][starts].tolist()
            group_keys = keys[1:, starts].T.tolist()

        recorder.barrier()
        dispatches = 0
        limit = self.max_groups_per_dispatch
        group = 0
        copy_bounds = np.searchsorted(copy_waves, np.arange(plan.waves + 1))
        for wave in range(plan.waves):
            if wave:
                # Copies of the previous wave, if any, are transfers: order those as well.
                had_copies = copy_bounds[wave] > copy_bounds[wave - 1]
                recorder.barrier() if had_copies else recorder.compute_barrier()
            if copy_bounds[wave + 1] > copy_bounds[wave]:
                recorder.copy(_merge_contiguous(copy_table[copy_bounds[wave]:copy_bounds[wave + 1]]))
            while group < len(starts) and waves[group] == wave:
                source, s_window, destination, d_window = group_keys[group]
                source_block, destination_block = blocks[source], blocks[destination]
                descriptor_set = self._descriptor_set(
                    source_block, self.window_of(source_block, s_window * self.window_step),
                    destination_block, self.window_of(destination_block, d_window * self.window_step),
                    table)
                for first in range(starts[group], ends[group], limit):
                    groups = min(limit, ends[group] - first)
                    recorder.dispatch(self.pipeline, None, [descriptor_set],
                                      struct.pack("<I", first_row + first), groups)
                    dispatches += 1
                group += 1
        recorder.barrier()
        return dispatches

    def run(self, blocks, plan) -> int:
        """Record *plan* into a fresh recording of the device, submit it and wait; see :meth:`record`."""
        with self.device.record() as recorder:
            return self.record(recorder, blocks, plan)

    # -- release -----------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Destroy the pipeline, pools and table; calling it again does nothing."""
        pools, self._pools = self._pools, []
        self._sets.clear()
        self._sets_free = 0
        for pool in pools:
            pool.destroy()
        tables = [*self._retired_tables, self._table]
        self._retired_tables, self._table = [], None
        if not self.device.closed:
            for table in tables:
                if table is not None and not table.freed:
                    self.device.free_block(table)
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            pipeline.destroy()
