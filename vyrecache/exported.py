"""Exported memory: an opaque fd of a leased entry's memory, for another device or CUDA to import.

``Lease.export_fd()`` returns an :class:`ExportedMemory`.  The fd names the whole Vulkan
allocation that holds the entry (a segment of its tier); the entry's bytes are ``size`` bytes at
``offset`` in it.  The importer allocates ``allocation_size`` bytes of ``memory_type_index`` with
the fd (``VkImportMemoryFdInfoKHR``), or passes it to CUDA's ``cudaImportExternalMemory`` after
checking that ``device_uuid`` is its own device's UUID.

The cache cannot see what an importer does with the memory, so the export is held like a view:
while it is open the lease cannot end (``BufferError``), and so the entry cannot move.  Close it
(or leave its ``with`` block) once the importer has released its import.
"""

from __future__ import annotations

import os
from typing import Any, Callable

__all__ = ["ExportedMemory"]


class ExportedMemory:
    """One exported fd of the memory behind a leased entry (see the module docstring).

    Attributes:
        offset, size: where the entry's bytes are in the exported allocation.
        allocation_size, memory_type_index: what an importer allocates.
        device_uuid: the exporting device's ``deviceUUID`` (16 bytes).
    """

    __slots__ = ("_fd", "offset", "size", "allocation_size", "memory_type_index", "device_uuid",
                 "_on_close", "__weakref__")

    def __init__(self, fd: int, offset: int, size: int, allocation_size: int, memory_type_index: int,
                 device_uuid: bytes, on_close: Callable[[], Any]) -> None:
        self._fd: int | None = fd
        self.offset = offset
        self.size = size
        self.allocation_size = allocation_size
        self.memory_type_index = memory_type_index
        self.device_uuid = device_uuid
        self._on_close: Callable[[], Any] | None = on_close

    @property
    def closed(self) -> bool:
        return self._on_close is None

    @property
    def fd(self) -> int:
        """The fd, still owned by this object (closed by :meth:`close` unless taken)."""
        if self._fd is None:
            raise BufferError("the fd was taken (an importer owns it now) or the export is closed. "
                              "Fix: read .fd before take_fd(), inside the export's `with` block.")
        return self._fd

    def take_fd(self) -> int:
        """Hand the fd over, e.g. to ``VkImportMemoryFdInfoKHR``, which takes ownership of it.

        The export stays open: close it once the importer has released the memory.
        """
        fd = self.fd
        self._fd = None
        return fd

    def close(self) -> None:
        """End the export (idempotent): the fd is closed unless taken, and the lease may end."""
        on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
        finally:
            on_close()

    def __enter__(self) -> "ExportedMemory":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("fd taken" if self._fd is None else f"fd {self._fd}")
        return (f"<ExportedMemory {self.size} bytes at +{self.offset} of {self.allocation_size}, "
                f"memory type {self.memory_type_index}, {state}>")
