"""Recording work into the device's one command buffer: :class:`CommandRecorder`.

``with device.record() as rec:`` begins the command buffer; ``rec.copy(table)``,
``rec.barrier()``, ``rec.dispatch(...)`` record into it; leaving the block without an exception
ends it, submits it once and waits for the fence.  Leaving with an exception submits nothing.
A final barrier makes every transfer and shader write visible to the host before the fence
signals, so the caller can read mapped memory as soon as the block exits.
"""

from __future__ import annotations

import numpy as np

from ..copytable import COPY_DTYPE
from ..errors import DeviceError

__all__ = ["CommandRecorder", "COPY_DTYPE"]

# VkPipelineStageFlagBits / VkAccessFlagBits used below.
STAGE_COMPUTE = 0x800
STAGE_TRANSFER = 0x1000
STAGE_HOST = 0x4000
ACCESS_SHADER_READ = 0x20
ACCESS_SHADER_WRITE = 0x40
ACCESS_TRANSFER_READ = 0x800
ACCESS_TRANSFER_WRITE = 0x1000
ACCESS_HOST_READ = 0x2000
ACCESS_HOST_WRITE = 0x4000

_ALL_STAGES = STAGE_COMPUTE | STAGE_TRANSFER
_ALL_WRITES = ACCESS_SHADER_WRITE | ACCESS_TRANSFER_WRITE
_ALL_ACCESS = ACCESS_SHADER_READ | ACCESS_SHADER_WRITE | ACCESS_TRANSFER_READ | ACCESS_TRANSFER_WRITE

# VkBufferCopy as numpy sees it, so thousands of regions are filled without a Python loop.
_REGION_DTYPE = np.dtype([("srcOffset", "<u8"), ("dstOffset", "<u8"), ("size", "<u8")])


class CommandRecorder:
    """Records copies, barriers and dispatches for one submit; made by ``Device.record()``.

    Not thread-safe, and only one recorder per device may be open at a time.
    """

    def __init__(self, device) -> None:
        self._device = device
        self._vk = device._vk
        self._command_buffer = device._command_buffer
        self.commands = 0  # commands recorded so far; an empty recording is never submitted

    # -- copies -------------------------------------------------------------------------------

    def copy(self, table: np.ndarray, wave_starts=None) -> None:
        """Record the copies of a copy table (dtype ``COPY_DTYPE``), wave by wave.

        *wave_starts* lists the row indices where a new wave begins (row 0 always does); a
        transfer barrier separates consecutive waves.  Within a wave, rows are grouped by
        ``(src_block, dst_block)`` so that each pair costs one ``vkCmdCopyBuffer``.  Rows of size 0
        are skipped.

        Raises:
            TypeError: *table* is not a ``COPY_DTYPE`` array.
            ValueError: a row names an unknown block or reaches past a block's end, or
                *wave_starts* is out of range.
        """
        table = np.asarray(table)
        if table.dtype != COPY_DTYPE:
            raise TypeError(f"copy table has dtype {table.dtype}, expected COPY_DTYPE. "
                            "Fix: build it with vyrecache.copytable.empty_copy_table(n).")
        rows = len(table)
        if rows == 0:
            return
        self._device.validate_copy_table(table)
        if wave_starts is None:
            boundaries = np.array([0, rows], dtype=np.int64)
        else:
            starts = np.asarray(wave_starts, dtype=np.int64).ravel()
            if starts.size and (starts.min() < 0 or starts.max() > rows):
                raise ValueError(f"wave_starts must lie in [0, {rows}], got {starts.min()}..{starts.max()}. "
                                 "Fix: pass the first row index of each wave.")
            boundaries = np.unique(np.concatenate(([0, rows], starts)))
        for wave, (first, end) in enumerate(zip(boundaries[:-1], boundaries[1:])):
            if wave:
                self.transfer_barrier()
            self._copy_wave(table[first:end])

    def _copy_wave(self, rows: np.ndarray) -> None:
        rows = rows[rows["size"] != 0]
        count = len(rows)
        if count == 0:
            return
        keys = rows["src_block"].astype(np.uint64) << np.uint64(32) | rows["dst_block"].astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        rows = rows[order]
        ffi, lib = self._vk.ffi, self._vk.lib
        regions = ffi.new("VkBufferCopy[]", count)
        view = np.frombuffer(ffi.buffer(regions), dtype=_REGION_DTYPE)
        view["srcOffset"] = rows["src_offset"]
        view["dstOffset"] = rows["dst_offset"]
        view["size"] = rows["size"]
        group_starts = np.flatnonzero(np.diff(keys)) + 1
        starts = [0, *group_starts.tolist()]
        ends = [*group_starts.tolist(), count]
        buffers = self._device._buffers_by_id
        command_buffer = self._command_buffer
        src_ids = rows["src_block"][starts].tolist()
        dst_ids = rows["dst_block"][starts].tolist()
        for start, end, src, dst in zip(starts, ends, src_ids, dst_ids):
            lib.vkCmdCopyBuffer(command_buffer, buffers[src], buffers[dst], end - start, regions + start)
        self.commands += len(starts)

    def copy_region(self, src_block, src_offset: int, dst_block, dst_offset: int, size: int) -> None:
        """Record one copy of *size* bytes between two blocks (or within one, without overlap).

        Raises:
            ValueError: the range leaves either block.
        """
        for name, block, offset in (("source", src_block, src_offset), ("destination", dst_block, dst_offset)):
            if offset < 0 or size < 0 or offset + size > block.size:
                raise ValueError(f"copy {name} range [{offset}, {offset + size}) leaves block {block.id} "
                                 f"of {block.size} bytes. Fix: copy inside the block.")
        if size == 0:
            return
        ffi, lib = self._vk.ffi, self._vk.lib
        region = ffi.new("VkBufferCopy*")
        region.srcOffset = src_offset
        region.dstOffset = dst_offset
        region.size = size
        lib.vkCmdCopyBuffer(self._command_buffer, src_block._buffer, dst_block._buffer, 1, region)
        self.commands += 1

    # -- barriers -----------------------------------------------------------------------------

    def memory_barrier(self, src_stages: int, src_access: int, dst_stages: int, dst_access: int) -> None:
        """Record one global ``VkMemoryBarrier`` between the given stages and access masks."""
        ffi, lib = self._vk.ffi, self._vk.lib
        barrier = ffi.new("VkMemoryBarrier*")
        barrier.sType = 46  # VK_STRUCTURE_TYPE_MEMORY_BARRIER
        barrier.srcAccessMask = src_access
        barrier.dstAccessMask = dst_access
        lib.vkCmdPipelineBarrier(self._command_buffer, src_stages, dst_stages, 0, 1, barrier,
                                 0, ffi.NULL, 0, ffi.NULL)
        self.commands += 1

    def barrier(self) -> None:
        """Make every earlier transfer and compute write visible to every later transfer and compute access."""
        self.memory_barrier(_ALL_STAGES, _ALL_WRITES, _ALL_STAGES, _ALL_ACCESS)

    def transfer_barrier(self) -> None:
        """Order earlier copies before later copies (the barrier between copy waves)."""
        self.memory_barrier(STAGE_TRANSFER, ACCESS_TRANSFER_WRITE, STAGE_TRANSFER,
                            ACCESS_TRANSFER_READ | ACCESS_TRANSFER_WRITE)

    def transfer_to_compute(self) -> None:
        """Make earlier copies visible to later compute shaders."""
        self.memory_barrier(STAGE_TRANSFER, ACCESS_TRANSFER_WRITE, STAGE_COMPUTE,
                            ACCESS_SHADER_READ | ACCESS_SHADER_WRITE)

    def compute_to_transfer(self) -> None:
        """Make earlier compute-shader writes visible to later copies."""
        self.memory_barrier(STAGE_COMPUTE, ACCESS_SHADER_WRITE, STAGE_TRANSFER,
                            ACCESS_TRANSFER_READ | ACCESS_TRANSFER_WRITE)

    def compute_barrier(self) -> None:
        """Order earlier compute-shader writes before later compute-shader accesses (between waves)."""
        self.memory_barrier(STAGE_COMPUTE, ACCESS_SHADER_WRITE, STAGE_COMPUTE,
                            ACCESS_SHADER_READ | ACCESS_SHADER_WRITE)

    # -- compute ------------------------------------------------------------------------------

    def dispatch(self, pipeline, pipeline_layout=None, descriptor_sets=(), push_constants_bytes: bytes = b"",
                 group_count_x: int = 1, group_count_y: int = 1) -> None:
        """Record one compute dispatch of ``group_count_x * group_count_y`` workgroups.

        *pipeline* is a :class:`~vyrecache.vulkan.pipeline.ComputePipeline` (then
        *pipeline_layout* may be None) or a raw ``VkPipeline`` with its raw layout.
        *descriptor_sets* are bound from set 0; *push_constants_bytes* is pushed at offset 0.

        Raises:
            ValueError: a group count is 0 or above ``maxComputeWorkGroupCount``, or the push
                constants are not a multiple of 4 bytes.
        """
        limits = self._device.info.max_compute_work_group_count
        if not (1 <= group_count_x <= limits[0] and 1 <= group_count_y <= limits[1]):
            raise ValueError(f"group counts ({group_count_x}, {group_count_y}) must be in 1..{limits[:2]}. "
                             "Fix: split the work into several dispatches.")
        if len(push_constants_bytes) % 4:
            raise ValueError(f"push constants must be a multiple of 4 bytes, got {len(push_constants_bytes)}. "
                             "Fix: pad the struct.")
        if pipeline_layout is None:
            pipeline_layout = pipeline.layout
        pipeline = getattr(pipeline, "pipeline", pipeline)
        ffi, lib = self._vk.ffi, self._vk.lib
        command_buffer = self._command_buffer
        lib.vkCmdBindPipeline(command_buffer, 1, pipeline)  # 1: VK_PIPELINE_BIND_POINT_COMPUTE
        if descriptor_sets:
            sets = ffi.new("VkDescriptorSet[]", list(descriptor_sets))
            lib.vkCmdBindDescriptorSets(command_buffer, 1, pipeline_layout, 0, len(sets), sets, 0, ffi.NULL)
        if push_constants_bytes:
            data = ffi.new("char[]", bytes(push_constants_bytes))
            lib.vkCmdPushConstants(command_buffer, pipeline_layout, 0x20,  # VK_SHADER_STAGE_COMPUTE_BIT
                                   0, len(push_constants_bytes), data)
        lib.vkCmdDispatch(command_buffer, group_count_x, group_count_y, 1)
        self.commands += 1

    # -- the with-block -------------------------------------------------------------------------

    def __enter__(self) -> "CommandRecorder":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self._device._finish_recording(self, submit=True)
        else:
            try:
                self._device._finish_recording(self, submit=False)
            except DeviceError:
                pass  # the original exception says more than a failure to discard
