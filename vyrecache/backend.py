"""The storage contract every backend fulfils: blocks of memory and ways to move bytes.

A backend knows nothing about keys, tiers' rules or eviction; the storage layer
(``vyrecache/_core/storage.pyx``) decides what goes where and asks the backend
for blocks and to run batched copies (``vyrecache.compaction`` on a Vulkan device).  Two backends
exist: :class:`vyrecache.host.HostBackend` (plain host memory) and
:class:`vyrecache.vulkan.backend.VulkanBackend` (device memory through Vulkan).
Both must give byte-for-byte the same observable behaviour.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from .copytable import COPY_DTYPE

__all__ = ["COPY_DTYPE", "TierMemory", "StorageBlock", "StorageBackend", "BufferLocation"]



@dataclass(frozen=True)
class TierMemory:
    """The memory a tier's kind resolved to: the Vulkan memory type (-1 on the host backend) and
    whether the CPU can map it.  The kind itself stays with the tier (``CacheTier.memory``)."""

    memory_type_index: int
    host_visible: bool


@dataclass(frozen=True)
class BufferLocation:
    """Where an entry's bytes are: tier, memory type, buffer handle, byte offset and size.

    ``buffer`` is the ``VkBuffer`` handle as an int (0 on the host backend).  The
    location is valid until the entry moves: a promote, demote, spill or a
    compaction may move it.  Pin the entry (``cache.pin(key)``) to keep its
    location while you use it.
    """

    tier: int
    memory_type_index: int
    buffer: int
    offset: int
    size: int


class StorageBlock:
    """One block of memory a backend handed out.

    ``address`` is the CPU address of the mapping (0 when the block is not host
    visible); ``array`` a numpy uint8 view of it (None when not mapped).
    """

    __slots__ = ("id", "address", "buffer_handle", "size", "memory_type_index", "host_visible",
                 "array", "native")

    def __init__(self, id: int, address: int, buffer_handle: int, size: int, memory_type_index: int,
                 host_visible: bool, array: np.ndarray | None, native: Any = None) -> None:
        self.id = id
        self.address = address
        self.buffer_handle = buffer_handle
        self.size = size
        self.memory_type_index = memory_type_index
        self.host_visible = host_visible
        self.array = array
        self.native = native

    def __repr__(self) -> str:
        return (f"StorageBlock(id={self.id}, size={self.size}, memory_type={self.memory_type_index}, "
                f"host_visible={self.host_visible})")


class StorageBackend(ABC):
    """Memory blocks and byte movement for the buffer cache."""

    #: "host" or "vulkan"
    name: str = ""
    #: Byte alignment of every entry (at least 16: the compaction shader moves 16-byte elements).
    alignment: int = 16
    #: Largest block this backend allocates.
    max_block_size: int = 1 << 30

    def claim(self, owner: object) -> None:
        """Make this backend ``owner``'s own; a second claim, by any owner, raises ValueError.

        A backend frees every block it handed out when it is closed, so a backend shared by two
        caches would free the memory of one when the other closes.  The claim is never released:
        a closed cache's backend is closed too.
        """
        holder = getattr(self, "_claimed_by", None)
        if holder is not None:
            raise ValueError(f"backend {self!r} already belongs to {holder}. Fix: give each cache "
                             f"its own backend (pass backend='host' or 'vulkan', or one "
                             f"VulkanBackend(device=...) per cache over a shared Device).")
        # A description, not a reference: the backend must not keep its cache alive.
        self._claimed_by = f"the {type(owner).__name__} at {id(owner):#x}"

    @abstractmethod
    def resolve_memory(self, kind: str, capacity: int) -> TierMemory:
        """Choose the memory for a tier of ``kind`` ("device" or "host") holding ``capacity`` bytes."""

    @abstractmethod
    def allocate_block(self, memory: TierMemory, size: int) -> StorageBlock:
        """Allocate one block; raises DeviceOutOfMemoryError when the memory is exhausted."""

    def allocate_staging(self, size: int) -> StorageBlock:
        """Allocate the host-visible block through which bytes reach the blocks the CPU cannot map."""
        return self.allocate_block(self.resolve_memory("host", size), size)

    @abstractmethod
    def free_block(self, block: StorageBlock) -> None:
        """Give a block back (idempotent)."""

    @abstractmethod
    def run_copies(self, table: np.ndarray, wave_starts: list[int]) -> None:
        """Execute a copy table (COPY_DTYPE rows) and wait; a barrier precedes each row index in ``wave_starts``."""

    @abstractmethod
    def write(self, block: StorageBlock, offset: int, data: memoryview) -> None:
        """Copy host bytes into a block (through a staging buffer when it is not host visible)."""

    @abstractmethod
    def read_into(self, block: StorageBlock, offset: int, out: memoryview) -> None:
        """Copy bytes of a block into a writable host buffer."""

    def prepare_write(self, nbytes: int) -> None:  # noqa: B027 - an optional hook, not abstract
        """Make sure a later ``write`` of ``nbytes`` cannot fail for lack of staging memory."""

    def export_fd(self, block: StorageBlock) -> int:
        """A new opaque fd of the memory behind *block*, for another device to import."""
        raise BufferError(f"the {self.name} backend has no exportable device memory. Fix: use a "
                          "VulkanBackend whose device has VK_KHR_external_memory_fd.")

    @property
    @abstractmethod
    def device(self) -> Any:
        """Description of the device in use (its ``backend`` attribute names the backend)."""

    @abstractmethod
    def close(self) -> None:
        """Free everything the backend owns (idempotent)."""
