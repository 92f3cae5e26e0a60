"""Executors: each runs a copy table (``COPY_DTYPE`` rows, waves) on a Vulkan device and waits.

``executor_for(device, mode)`` makes the executor of a mode; ``"auto"`` is
:func:`fastest_executor`, which times every mode once per driver on scratch device memory.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from ..copytable import COPY_DTYPE
from .kernel import ELEMENT_BYTES, MAX_PIECE_BYTES, SPLIT_BYTES, ShaderKernel

__all__ = ["CopyExecutor", "CopyCommands", "ShaderCopies", "SHADER_MODES", "MODES", "executor_for",
           "fastest_executor", "measured_modes"]

#: What ``VulkanBackend(compaction=...)`` accepts.
MODES = ("auto", "commands", "shader", "split")
#: The modes whose copies run in the compute shader (the piece each workgroup copies).
SHADER_MODES = {"shader": MAX_PIECE_BYTES, "split": SPLIT_BYTES}


def wave_bounds(rows: int, wave_starts) -> np.ndarray:
    """The first row of every wave and the end: [0, ..., rows]."""
    starts = np.asarray(list(wave_starts) if wave_starts is not None else [], dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() > rows):
        raise ValueError(f"wave_starts must lie in [0, {rows}], got {starts.min()}..{starts.max()}. "
                         "Fix: pass the first row index of each wave.")
    return np.unique(np.concatenate(([0, rows], starts)))


class CopyExecutor(ABC):
    """Runs copy tables on one device: ``run(table, wave_starts)`` records, submits and waits."""

    #: The mode this executor implements (one of MODES but "auto").
    name: str = ""

    def __init__(self, device) -> None:
        self.device = device

    @abstractmethod
    def run(self, table: np.ndarray, wave_starts=None) -> None:
        """Copy every row of *table*; a barrier separates the waves (rows before each start)."""

    def close(self) -> None:  # noqa: B027 - optional: most executors own nothing
        """Free what the executor made on the device (idempotent)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class CopyCommands(CopyExecutor):
    """``vkCmdCopyBuffer`` regions: one command per block pair and wave."""

    name = "commands"

    def run(self, table: np.ndarray, wave_starts=None) -> None:
        with self.device.record() as recorder:
            recorder.copy(table, wave_starts)


class ShaderCopies(CopyExecutor):
    """The compute shader: rows cut into pieces of *piece_bytes*, one workgroup each.

    Rows whose offsets are not multiples of 16 bytes (staging uploads pack entries tightly), or
    whose padded size would pass a block's end, run as copy commands of the same wave.  A row's size is rounded up to 16 bytes: the bytes past
    an entry's end up to the next 16 belong to the entry's own charge (tiers round every entry
    up to an alignment of at least 16), so nothing another entry owns is read or written.
    """

    def __init__(self, device, piece_bytes: int = MAX_PIECE_BYTES, table_rows: int = 32768,
                 max_groups_per_dispatch: int | None = None) -> None:
        if piece_bytes not in (MAX_PIECE_BYTES, SPLIT_BYTES):
            raise ValueError(f"piece_bytes must be {MAX_PIECE_BYTES} (mode 'shader') or {SPLIT_BYTES} "
                             f"(mode 'split'), got {piece_bytes!r}. Fix: pass one of those.")
        super().__init__(device)
        self.piece_bytes = piece_bytes
        self.name = "shader" if piece_bytes == MAX_PIECE_BYTES else "split"
        self.kernel = ShaderKernel(device, table_rows, max_groups_per_dispatch)

    def pieces(self, rows: np.ndarray) -> np.ndarray:
        """*rows* (aligned) cut into pieces of at most piece_bytes, sizes rounded up to 16."""
        sizes = (rows["size"] + np.uint64(ELEMENT_BYTES - 1)) // np.uint64(ELEMENT_BYTES) * np.uint64(ELEMENT_BYTES)
        counts = ((sizes + np.uint64(self.piece_bytes - 1)) // np.uint64(self.piece_bytes)).astype(np.int64)
        pieces = np.repeat(rows, counts)
        if len(pieces) == 0:
            return pieces
        firsts = np.repeat(np.cumsum(counts) - counts, counts)
        shift = (np.arange(len(pieces)) - firsts).astype(np.uint64) * np.uint64(self.piece_bytes)
        pieces["src_offset"] += shift
        pieces["dst_offset"] += shift
        pieces["size"] = np.minimum(np.repeat(sizes, counts) - shift, np.uint64(self.piece_bytes))
        return pieces

    @staticmethod
    def shader_can_copy(rows: np.ndarray, block_sizes: np.ndarray) -> np.ndarray:
        """Rows the shader takes: 16-byte aligned offsets, and the padded size inside both blocks."""
        padded = (rows["size"] + np.uint64(ELEMENT_BYTES - 1)) // np.uint64(ELEMENT_BYTES) * np.uint64(ELEMENT_BYTES)
        return ((((rows["src_offset"] | rows["dst_offset"]) % ELEMENT_BYTES) == 0)
                & (rows["src_offset"] + padded <= block_sizes[rows["src_block"]])
                & (rows["dst_offset"] + padded <= block_sizes[rows["dst_block"]]))

    def run(self, table: np.ndarray, wave_starts=None) -> None:
        table = np.asarray(table)
        if table.dtype != COPY_DTYPE:
            raise TypeError(f"copy table has dtype {table.dtype}, expected COPY_DTYPE. "
                            "Fix: build it with vyrecache.copytable.empty_copy_table(n).")
        if len(table) == 0:
            return
        device = self.device
        device.validate_copy_table(table)
        blocks = device.blocks_by_id
        bounds = wave_bounds(len(table), wave_starts)
        kernel = self.kernel
        recorder = device.record()
        try:
            for wave, (first, end) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
                rows = table[first:end]
                rows = rows[rows["size"] != 0]
                aligned = self.shader_can_copy(rows, device.block_sizes)
                pieces = self.pieces(rows[aligned])
                if wave:
                    recorder.barrier()
                if not aligned.all():
                    recorder.copy(rows[~aligned])
                done = 0
                while done < len(pieces):
                    room = kernel.rows_left(recorder)
                    if room == 0:
                        # The table is full: submit what is recorded (and wait), go on in a new one.
                        recorder.__exit__(None, None, None)
                        recorder = device.record()
                        room = kernel.rows_left(recorder)
                    take = min(room, len(pieces) - done)
                    kernel.record(recorder, blocks, pieces[done:done + take])
                    done += take
        except BaseException as error:
            recorder.__exit__(type(error), error, error.__traceback__)
            raise
        recorder.__exit__(None, None, None)

    def close(self) -> None:
        self.kernel.destroy()


def executor_for(device, mode: str) -> CopyExecutor:
    """The executor of *mode* (one of MODES) on *device*; "auto" measures (see fastest_executor)."""
    if mode == "commands":
        return CopyCommands(device)
    if mode in SHADER_MODES:
        return ShaderCopies(device, SHADER_MODES[mode])
    if mode == "auto":
        return fastest_executor(device)
    raise ValueError(f"compaction must be one of {', '.join(map(repr, MODES))}, got {mode!r}. Fix: pass "
                     "one of those ('auto' measures the others once per driver and keeps the fastest).")


# Per driver (vendor, device, driver version): each mode's best time, measured once.
_measured: dict[tuple, dict[str, float]] = {}


def measured_modes(device, block_bytes: int = 8 << 20) -> dict[str, float]:
    """Seconds each mode takes to clean a scratch block of the device's memory into another:
    every other 16 KiB entry moved, as segment cleaning does.  Measured once per driver."""
    info = device.info
    key = (info.vendor_id, info.device_id, info.driver_version)
    if key in _measured:
        return _measured[key]
    memory_type = device.memory_type_for("device", 2 * block_bytes)
    source = device.allocate_block(memory_type, block_bytes)
    timings: dict[str, float] = {}
    try:
        destination = device.allocate_block(memory_type, block_bytes)
        try:
            entry = 16 << 10
            count = block_bytes // entry // 2
            table = np.zeros(count, dtype=COPY_DTYPE)
            table["src_block"], table["dst_block"] = source.id, destination.id
            table["src_offset"] = np.arange(count, dtype=np.uint64) * np.uint64(2 * entry)
            table["dst_offset"] = np.arange(count, dtype=np.uint64) * np.uint64(entry)
            table["size"] = entry
            for mode in MODES[1:]:
                executor = executor_for(device, mode)
                try:
                    best = float("inf")
                    for attempt in range(4):
                        started = time.perf_counter()
                        executor.run(table)
                        if attempt:               # the first run warms up pipelines and caches
                            best = min(best, time.perf_counter() - started)
                    timings[mode] = best
                finally:
                    executor.close()
        finally:
            device.free_block(destination)
    finally:
        device.free_block(source)
    _measured[key] = timings
    return timings


def fastest_executor(device) -> CopyExecutor:
    """The executor of the mode that measured fastest on this driver (see measured_modes)."""
    timings = measured_modes(device)
    return executor_for(device, min(timings, key=timings.__getitem__))
