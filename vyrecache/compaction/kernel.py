"""The compute shader that copies: a table of pieces, one workgroup per piece.

The shader (``shaders/compact_copy.comp``, shipped as ``vyrecache/shaders/compact_copy.spv``)
copies one piece of at most 64 KiB per workgroup.  Its set 0 binds three storage buffers:

    binding 0   source window        (a window of the piece's source block)
    binding 1   destination window   (a window of the piece's destination block; may be the same)
    binding 2   piece table          (uvec4 per piece: source element, destination element, count, 0)

Offsets and sizes are in 16-byte elements.  Windows: a block may be larger than
``maxStorageBufferRange`` (128 MiB on lavapipe; blocks are up to 1 GiB), so the kernel binds
windows of ``window_size`` (that limit rounded down to a power of two) starting every half
window; a piece of at most 64 KiB lies wholly inside the window of its start.  A block no larger
than one window is bound whole.  Pieces of one :meth:`ShaderKernel.record` call are one wave:
they never overlap, and run in one dispatch per (source, window, destination, window) group.
"""

from __future__ import annotations

import struct
from importlib import resources

import numpy as np

from ..errors import DeviceError

__all__ = ["ShaderKernel", "MAX_PIECE_BYTES", "SPLIT_BYTES", "ELEMENT_BYTES", "load_compaction_spirv"]

_SPIRV_NAME = "compact_copy.spv"
_TABLE_ENTRY_BYTES = 16   # uvec4 per piece
_SETS_PER_POOL = 64
ELEMENT_BYTES = 16        # the shader moves uvec4s
MAX_PIECE_BYTES = 4096 * ELEMENT_BYTES   # one workgroup: 256 invocations x 16 elements
SPLIT_BYTES = 256 * ELEMENT_BYTES        # one round of a workgroup


def load_compaction_spirv() -> bytes:
    """The packaged SPIR-V of the copy shader.

    Raises:
        DeviceError: the package was installed without its compiled shaders.
    """
    try:
        return resources.files("vyrecache").joinpath("shaders", _SPIRV_NAME).read_bytes()
    except FileNotFoundError:
        raise DeviceError(f"vyrecache/shaders/{_SPIRV_NAME} is missing from the installed package. "
                          "Fix: reinstall vyrecache, or run `make shaders` in a source checkout.") from None


class ShaderKernel:
    """The copy shader on one device: its pipeline, descriptor sets (cached per pair of windows)
    and a host-visible piece table of ``table_rows`` rows, reserved when it is made so that
    recording allocates no memory.  Not thread-safe, like the device.

    *max_groups_per_dispatch* caps the workgroups of one dispatch (default and upper bound:
    ``maxComputeWorkGroupCount[0]``); tests lower it to exercise the split of a dispatch.

    Raises:
        DeviceError: the shader is missing or the driver rejected the pipeline.
        DeviceOutOfMemoryError: the table could not be allocated.
    """

    def __init__(self, device, table_rows: int = 32768, max_groups_per_dispatch: int | None = None) -> None:
        self.device = device
        info = device.info
        limit = info.max_compute_work_group_count[0]
        self.max_groups_per_dispatch = limit if max_groups_per_dispatch is None else max(
            1, min(int(max_groups_per_dispatch), limit))
        # A power of two so that half of it is a multiple of minStorageBufferOffsetAlignment.
        self.window_size = 1 << (int(info.max_storage_buffer_range).bit_length() - 1)
        self.window_step = self.window_size // 2
        self._pools: list = []
        self._sets_free = 0
        self._sets: dict[tuple, tuple] = {}
        self._table = None
        self._recorder = None
        self._rows_used = 0
        self._sets_handed_out = False  # whether the current recording binds any cached set
        self.pipeline = device.create_compute_pipeline(load_compaction_spirv(), storage_buffers=3,
                                                       push_constant_size=4)
        try:
            size = max(1, int(table_rows)) * _TABLE_ENTRY_BYTES
            self._table = device.allocate_block(device.memory_type_for("host", size), size)
        except BaseException:
            self.destroy()
            raise
        #: Pieces one recording can hold (what the executor cuts its submits by).
        self.table_rows = self._table.size // _TABLE_ENTRY_BYTES

    # -- windows -----------------------------------------------------------------------------------

    def window_of(self, block, offset: int) -> tuple[int, int, int]:
        """(index, start, size) of the window of *block* a piece starting at *offset* uses."""
        if block.size <= self.window_size:
            return 0, 0, block.size
        index = offset // self.window_step
        start = index * self.window_step
        return index, start, min(self.window_size, block.size - start)

    def rows_left(self, recorder) -> int:
        """Table rows still free in *recorder*'s recording."""
        return self.table_rows - (self._rows_used if recorder is self._recorder else 0)

    # -- descriptor sets ---------------------------------------------------------------------------

    def _descriptor_set(self, source, source_window, destination, destination_window):
        table = self._table
        key = (source.id, source_window[0], destination.id, destination_window[0])
        cached = self._sets.get(key)
        bound_already = self._sets_handed_out
        self._sets_handed_out = True
        if cached is not None and cached[1] is source and cached[2] is destination:
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
        self._sets[key] = (descriptor_set, source, destination)
        return descriptor_set

    # -- recording ---------------------------------------------------------------------------------

    def record(self, recorder, blocks: dict, pieces: np.ndarray) -> int:
        """Record one wave of *pieces* (``COPY_DTYPE`` rows: offsets and sizes multiples of 16,
        sizes at most MAX_PIECE_BYTES, none overlapping another) into *recorder*; *blocks* maps a
        block id to its Block.  Returns the number of dispatches.  The caller orders waves with
        barriers (see :class:`~vyrecache.compaction.ShaderCopies`).

        Raises:
            ValueError: more pieces than :meth:`rows_left`, or a piece the shader cannot copy.
        """
        count = len(pieces)
        if count == 0:
            return 0
        if recorder is not self._recorder:
            self._recorder = recorder
            self._rows_used = 0
            self._sets_handed_out = False
        if count > self.table_rows - self._rows_used:
            raise ValueError(f"{count} pieces do not fit the {self.table_rows - self._rows_used} "
                             "free rows of the piece table. Fix: submit in portions of rows_left().")
        sizes = pieces["size"]
        if ((pieces["src_offset"] | pieces["dst_offset"] | sizes) % ELEMENT_BYTES).any() or (
                sizes > MAX_PIECE_BYTES).any():
            raise ValueError("the shader copies pieces of 16-byte elements of at most 64 KiB. "
                             "Fix: cut and align the rows first (ShaderCopies does).")
        src = pieces["src_block"].astype(np.int64)
        dst = pieces["dst_block"].astype(np.int64)
        ids = np.unique(np.concatenate((src, dst)))
        block_sizes = np.zeros(int(ids.max()) + 1, dtype=np.uint64)
        for block_id in ids.tolist():
            block_sizes[block_id] = blocks[block_id].size
        step = np.uint64(self.window_step)
        src_windowed = block_sizes[src] > self.window_size
        dst_windowed = block_sizes[dst] > self.window_size
        src_window = np.where(src_windowed, pieces["src_offset"] // step, 0).astype(np.int64)
        dst_window = np.where(dst_windowed, pieces["dst_offset"] // step, 0).astype(np.int64)
        order = np.lexsort((dst_window, dst, src_window, src))
        pieces, src, dst = pieces[order], src[order], dst[order]
        src_window, dst_window = src_window[order], dst_window[order]

        first_row = self._rows_used
        self._rows_used += count
        assert self._table is not None and self._table.array is not None  # host-visible, until destroy()
        raw = self._table.array[first_row * _TABLE_ENTRY_BYTES:(first_row + count) * _TABLE_ENTRY_BYTES]
        rows = raw.view(np.uint32).reshape(count, 4)
        rows[:, 0] = (pieces["src_offset"] - src_window.astype(np.uint64) * step) // ELEMENT_BYTES
        rows[:, 1] = (pieces["dst_offset"] - dst_window.astype(np.uint64) * step) // ELEMENT_BYTES
        rows[:, 2] = pieces["size"] // ELEMENT_BYTES
        rows[:, 3] = 0

        keys = np.stack([src, src_window, dst, dst_window])
        breaks = np.flatnonzero(np.any(keys[:, 1:] != keys[:, :-1], axis=0)) + 1
        starts = [0, *breaks.tolist()]
        ends = [*breaks.tolist(), count]
        dispatches = 0
        limit = self.max_groups_per_dispatch
        for start, end in zip(starts, ends):
            source, destination = blocks[int(src[start])], blocks[int(dst[start])]
            descriptor_set = self._descriptor_set(
                source, self.window_of(source, int(src_window[start]) * self.window_step),
                destination, self.window_of(destination, int(dst_window[start]) * self.window_step))
            for first in range(start, end, limit):
                groups = min(limit, end - first)
                recorder.dispatch(self.pipeline, None, [descriptor_set],
                                  struct.pack("<I", first_row + first), groups)
                dispatches += 1
        return dispatches

    # -- release -----------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Destroy the pipeline, pools and table; calling it again does nothing."""
        pools, self._pools = self._pools, []
        self._sets.clear()
        self._sets_free = 0
        for pool in pools:
            pool.destroy()
        table, self._table = self._table, None
        if table is not None and not table.freed and not self.device.closed:
            self.device.free_block(table)
        pipeline, self.pipeline = getattr(self, "pipeline", None), None
        if pipeline is not None:
            pipeline.destroy()
