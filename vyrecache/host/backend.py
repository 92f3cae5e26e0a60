"""Storage on plain host memory: numpy blocks and memcpy moves.

Used when ``backend="host"`` is asked for, or when ``backend="auto"`` finds no
Vulkan device.  Every block is "host visible", so the storage layer moves bytes
with memcpy and never calls ``run_copies``; the method still works, so the
contract is complete.
"""

from __future__ import annotations

import itertools
import mmap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import StorageBackend, StorageBlock, TierMemory
from ..errors import DeviceOutOfMemoryError

__all__ = ["HostBackend", "HostDeviceInfo"]

# Blocks start on a cache-line boundary, like a driver's allocation would (mappings start on a
# page boundary, which is one).
_BLOCK_ALIGNMENT = 64
_PAGE = mmap.PAGESIZE


def available_memory() -> int | None:
    """The bytes the kernel can hand out without swapping (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _require_memory(nbytes: int, what: str) -> None:
    available = available_memory()
    if available is not None and nbytes > available:
        raise DeviceOutOfMemoryError(
            f"{what} of {nbytes} bytes does not fit in the {available} bytes of host memory "
            f"available now (MemAvailable). Fix: make the tier smaller, or free memory first.")

@dataclass(frozen=True)
class HostDeviceInfo:
    """What the host backend reports as its device."""

    name: str = "host memory"
    backend: str = "host"
    memory_types: tuple[Any, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return "host memory (no Vulkan device)"


class HostBackend(StorageBackend):
    """Blocks are numpy arrays; every tier kind resolves to plain host memory."""

    name = "host"
    alignment = 16
    max_block_size = 1 << 30

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._blocks: dict[int, StorageBlock] = {}
        self._info = HostDeviceInfo()

    @property
    def device(self) -> HostDeviceInfo:
        return self._info

    def resolve_memory(self, kind: str, capacity: int) -> TierMemory:
        # Rounded up to the alignment the capacity must still be a 64-bit byte count, and the
        # machine must have the memory: a tier takes all of it at creation (allocate_block).
        if capacity + self.alignment - 1 >= 1 << 64:
            raise ValueError(f"a tier capacity must be below 2**64 - {self.alignment - 1} bytes "
                             f"on the host backend, got {capacity}. Fix: pass a capacity in "
                             f"bytes the machine can hold.")
        _require_memory(capacity, "a host tier")
        return TierMemory(memory_type_index=-1, host_visible=True)

    def allocate_block(self, memory: TierMemory, size: int) -> StorageBlock:
        # An anonymous mapping, made huge-page friendly before its first touch, then touched
        # page by page: the memory is committed now, so no later put finds it missing (numpy's
        # empty() would only promise it, and the shortfall would kill the process on some write).
        _require_memory(size, "a host block")
        if size:
            try:
                mapping = mmap.mmap(-1, size)
            except (OSError, OverflowError) as error:
                raise DeviceOutOfMemoryError(f"could not map a host block of {size} bytes ({error}). "
                                             f"Fix: make the tier smaller, or free memory first.") from None
            if hasattr(mmap, "MADV_HUGEPAGE"):
                mapping.madvise(mmap.MADV_HUGEPAGE)
            array = np.frombuffer(mapping, dtype=np.uint8)
            array[::_PAGE] = 0
        else:
            mapping, array = None, np.empty(0, dtype=np.uint8)
        block = StorageBlock(next(self._ids), array.ctypes.data, 0, size, -1, True, array, mapping)
        self._blocks[block.id] = block
        return block

    def free_block(self, block: StorageBlock) -> None:
        self._blocks.pop(block.id, None)
        block.array = None
        block.native = None
        block.address = 0

    def run_copies(self, table: np.ndarray, wave_starts: list[int]) -> None:
        # Rows run in order, so every barrier is already honoured.
        for row in table:
            src = self._blocks[int(row["src_block"])].array
            dst = self._blocks[int(row["dst_block"])].array
            assert src is not None and dst is not None  # every live host block is mapped
            s, d, n = int(row["src_offset"]), int(row["dst_offset"]), int(row["size"])
            dst[d:d + n] = src[s:s + n]

    def write(self, block: StorageBlock, offset: int, data: memoryview) -> None:
        assert block.array is not None
        block.array[offset:offset + data.nbytes] = np.frombuffer(data, dtype=np.uint8)

    def read_into(self, block: StorageBlock, offset: int, out: memoryview) -> None:
        assert block.array is not None
        np.frombuffer(out, dtype=np.uint8)[:] = block.array[offset:offset + out.nbytes]

    def close(self) -> None:
        for block in list(self._blocks.values()):
            self.free_block(block)
