"""The buffer cache's storage contract on a Vulkan device.

Tiers get blocks of the memory type their kind resolves to (by property flags:
see ``memory.py``); copy tables run as ``vkCmdCopyBuffer`` batches in one
submit; compaction runs the compute shader, or streaming CPU copies where a
tier's memory is mapped and cached and the CPU measured faster (a UMA device).
Host-visible blocks are read and written through their persistent mapping,
device-only ones through the device's staging buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import StorageBackend, StorageBlock, TierMemory
from ..host.backend import compact_arrays
from .device import Device
from .memory import HOST_CACHED, HOST_COHERENT, HOST_VISIBLE

__all__ = ["COMPACTION_MODES", "VulkanBackend", "calibrate_compaction", "calibration_timings"]

# Chunk-table rows reserved per cache (16 bytes each): 2 GiB of 64 KiB chunks per submit.
_TABLE_ROWS = 32768

COMPACTION_MODES = ("auto", "shader", "split", "hybrid", "host")
_KERNEL_MODES = ("shader", "split", "hybrid")


def _kernel_for(device: Device, mode: str) -> Any:
    from .compute import CompactionKernel
    return CompactionKernel(device, transfer_disjoint=mode == "hybrid", split_disjoint=mode == "split")


# Memory the CPU may compact in place: mapped, coherent (no flushes) and cached (CPU reads of
# uncached or write-combined memory run at a small fraction of memory speed).
_CPU_COMPACTABLE = HOST_VISIBLE | HOST_COHERENT | HOST_CACHED


def _cpu_compactable(device: Device, memory_type_index: int) -> bool:
    flags = device.info.memory_types[memory_type_index].property_flags
    return flags & _CPU_COMPACTABLE == _CPU_COMPACTABLE


class _PlanPortion:
    """A slice of a compaction plan, in the shape CompactionKernel.record reads."""

    __slots__ = ("chunks", "waves", "block_sizes")

    def __init__(self, chunks: np.ndarray, block_sizes: Any) -> None:
        self.chunks = chunks
        self.waves = int(chunks["wave"].max()) + 1 if len(chunks) else 0
        self.block_sizes = block_sizes


def _portions(chunks: np.ndarray, block_sizes: Any, limit: int):
    """Cut a plan's chunks (sorted by wave) into portions of at most *limit* chunks, waves renumbered."""
    start = 0
    while start < len(chunks):
        end = min(start + limit, len(chunks))
        if end < len(chunks):
            # End the portion at a wave boundary when one exists inside it.
            boundary = np.searchsorted(chunks["wave"][start:end], chunks["wave"][end], side="left")
            if boundary > 0:
                end = start + int(boundary)
        portion = chunks[start:end].copy()
        portion["wave"] -= portion["wave"][0]
        yield _PlanPortion(portion, block_sizes)
        start = end


# Per driver (vendor, device, driver version): each compaction mode's best time, measured once.
_calibrated: dict[tuple[int, int, int, str], dict[str, float]] = {}


def calibration_timings(device: Device, block_bytes: int = 8 << 20) -> dict[str, float]:
    """Seconds each compaction mode takes on a scratch block of the device's memory.

    The layout is the common case: 64 KiB entries with every other one evicted, so half the
    bytes slide down by at least their own size.  One run each after a warm-up, then the best of
    three for the modes within 1.5x of the fastest.
    "host" (streaming CPU copies) is timed only where that memory is mapped and cached.  The
    result is remembered per driver, so later caches on the same device pay nothing.
    """
    import time

    from .._core.compaction import plan_block

    info = device.info
    key = (info.vendor_id, info.device_id, info.driver_version, info.name)
    if key in _calibrated:
        return _calibrated[key]
    entry = 64 << 10
    count = block_bytes // (2 * entry)
    offsets = np.arange(count, dtype=np.uint64) * np.uint64(2 * entry)
    plan = plan_block(offsets, np.full(count, entry, dtype=np.uint64), np.zeros(count, dtype=bool),
                      block_bytes)
    memory_type = device.memory_type_for("device", block_bytes)
    block = device.allocate_block(memory_type, block_bytes)

    def timed(run: Any) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    runs: dict[str, Any] = {}
    kernels = []
    timings: dict[str, float] = {}
    try:
        for mode in _KERNEL_MODES:
            kernel = _kernel_for(device, mode)
            kernels.append(kernel)
            runs[mode] = lambda kernel=kernel: kernel.run([block], plan)
        if block.host_visible and _cpu_compactable(device, memory_type):
            runs["host"] = lambda: compact_arrays(plan, [block.array])
        for mode, run in runs.items():
            run()                       # warm-up: page faults, pipeline and descriptor creation
            timings[mode] = timed(run)
        # Two more runs for the contenders only: a mode several times slower than the best
        # (a shader on llvmpipe) is not worth the time of creating every cache.
        for _ in range(2):
            fastest = min(timings.values())
            for mode, run in runs.items():
                if timings[mode] <= 1.5 * fastest:
                    timings[mode] = min(timings[mode], timed(run))
    finally:
        for kernel in kernels:
            kernel.destroy()
        device.free_block(block)
    _calibrated[key] = timings
    return timings


def calibrate_compaction(device: Device, block_bytes: int = 8 << 20) -> str:
    """The fastest compaction mode on this device (see calibration_timings)."""
    timings = calibration_timings(device, block_bytes)
    return min(timings, key=timings.__getitem__)


class VulkanBackend(StorageBackend):
    """Storage on a Vulkan device.

    ``device_index`` picks the physical device (default: the first);
    ``device`` shares an existing :class:`Device` instead, which ``close()`` then
    leaves open (the caller owns it).

    Raises:
        VulkanUnavailableError: no loader, driver or device.
    """

    name = "vulkan"

    def __init__(self, device_index: int | None = None, device: Device | None = None,
                 validation: bool | None = None, device_copies: bool = False,
                 compaction: str = "auto") -> None:
        if compaction not in COMPACTION_MODES:
            raise ValueError("compaction must be one of %s, got %r. Fix: pass one of those "
                             "('auto' measures the others once per driver and keeps the fastest)."
                             % (", ".join(repr(mode) for mode in COMPACTION_MODES), compaction))
        #: "shader": every compaction chunk runs in the compute shader.  "split": the same, with
        #: chunks that do not overlap themselves cut into 4 KiB workgroups (a wave of a few
        #: hundred 64 KiB chunks leaves most of a large GPU idle).  "hybrid": the shader runs
        #: the chunks that overlap themselves (a slide shorter than the entry, which a plain copy
        #: cannot do) and disjoint chunks run as vkCmdCopyBuffer regions of the same waves.  Both
        #: give identical bytes, but which is faster depends on the driver, not on a device type
        #: (measured: hybrid 5x faster on lavapipe, whose storage-buffer accesses are scalar
        #: loops; shader 10x faster on an H100, whose copy commands pay per region).  "auto"
        #: measures every mode once per driver (see calibration_timings) and keeps the fastest.
        #: "host": tiers whose memory is mapped, coherent and cached compact on the CPU with
        #: streaming copies (on a UMA device such as lavapipe the GPU's memory is the CPU's, and
        #: a streamed copy beats a shader that llvmpipe compiles into scalar loads); tiers in
        #: other memory still compact on the GPU, with the fastest of the three kernels.
        self.compaction = compaction
        #: Move entries between tiers with vkCmdCopyBuffer even when both blocks are mapped
        #: (memcpy is faster on a UMA device; this exercises the device path there).
        self.device_copies = device_copies
        self._owns_device = device is None
        self._device = Device(device_index, validation) if device is None else device
        info = self._device.info
        alignment = 16
        while alignment < info.min_storage_buffer_offset_alignment:
            alignment *= 2
        self.alignment = alignment
        self.max_block_size = info.max_block_size // alignment * alignment
        self._blocks: dict[int, StorageBlock] = {}
        self._kernel: Any = None
        try:
            kernel_mode = self.compaction
            if self.compaction in ("auto", "host"):
                timings = calibration_timings(self._device)
                kernel_mode = min(_KERNEL_MODES, key=timings.__getitem__)
                if self.compaction == "auto":
                    self.compaction = min(timings, key=timings.__getitem__)
            # Made now, with its pipeline: compaction inside an operation creates nothing.
            self._kernel = _kernel_for(self._device, kernel_mode)
            # Split chunks take up to 16 rows each: a table 4x as large, plans cut 4x as often.
            self._table_chunks = max(1, _TABLE_ROWS * min(4, self._kernel.rows_per_chunk)
                                     // self._kernel.rows_per_chunk)
            self._kernel.reserve_table(self._table_chunks * self._kernel.rows_per_chunk)
        except BaseException:
            if self._kernel is not None:
                self._kernel.destroy()
            if self._owns_device:
                self._device.close()
            raise

    @property
    def device(self) -> Any:
        return self._device.info

    @property
    def vulkan_device(self) -> Device:
        """The wrapper's Device (for benchmarks and tests)."""
        return self._device

    def resolve_memory(self, kind: str, capacity: int) -> TierMemory:
        # A tier is made of blocks; the heap must hold the whole tier.
        index = self._device.memory_type_for(kind, max(capacity, 1))
        flags = self._device.info.memory_types[index].property_flags
        return TierMemory(kind=kind, memory_type_index=index, host_visible=bool(flags & HOST_VISIBLE))

    def allocate_block(self, memory: TierMemory, size: int) -> StorageBlock:
        native = self._device.allocate_block(memory.memory_type_index, size)
        block = StorageBlock(native.id, native.mapped_address if native.host_visible else 0,
                             native.buffer_handle, size, native.memory_type_index, native.host_visible,
                             native.array if native.host_visible else None, native)
        self._blocks[block.id] = block
        return block

    def free_block(self, block: StorageBlock) -> None:
        if self._blocks.pop(block.id, None) is None:
            return
        native, block.native = block.native, None
        block.array = None
        block.address = 0
        if native is not None and not native.freed and not self._device.closed:
            self._device.free_block(native)

    def transfer_queue(self) -> Any:
        """A TransferQueue of this device for one cache's copy tables (destroyed with the device)."""
        from .transfer import TransferQueue
        return TransferQueue(self._device)

    def run_copies(self, table: np.ndarray, wave_starts: list[int]) -> None:
        with self._device.record() as recorder:
            recorder.copy(table, wave_starts)

    def write(self, block: StorageBlock, offset: int, data: memoryview) -> None:
        self._device.upload(block.native, offset, data)

    def read_into(self, block: StorageBlock, offset: int, out: memoryview) -> None:
        self._device.download(block.native, offset, out.nbytes, out)

    def prepare_write(self, nbytes: int) -> None:
        # Grow the staging buffer before the engine changes anything, so an
        # out-of-memory error leaves the cache as it was.
        if nbytes:
            self._device._staging_block(nbytes)

    def compact(self, blocks: list[StorageBlock], plan: Any) -> None:
        if self.compaction == "host" and all(
                block.host_visible and _cpu_compactable(self._device, block.memory_type_index)
                for block in blocks):
            # Synchronous like every submit of this backend: no GPU work uses the blocks now.
            compact_arrays(plan, [block.array for block in blocks])  # type: ignore[misc]  # host visible: mapped
            return
        natives = [block.native for block in blocks]
        chunks = plan.chunks
        if len(chunks) <= self._table_chunks:
            self._kernel.run(natives, plan)
            return
        # A plan larger than the reserved chunk table runs in portions of whole waves (a wave
        # too large for the table is cut: its chunks are independent), one submit each, so the
        # table is reused instead of grown.
        for portion in _portions(chunks, plan.block_sizes, self._table_chunks):
            self._kernel.run(natives, portion)

    def close(self) -> None:
        for block in list(self._blocks.values()):
            self.free_block(block)
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            kernel.destroy()
        if self._owns_device:
            self._device.close()
