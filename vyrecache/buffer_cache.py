"""BufferCache: the tiered cache that stores real bytes.

Metadata is the engine's (the same ``TieredCache`` rules, one implementation);
bytes live in per-tier memory blocks of a backend (Vulkan device memory, or
host memory) and move whenever the engine moves an entry.  Every public method
is atomic: it either completes, or raises and leaves the cache as it was.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import numpy as np

from ._core.storage import Storage
from .backend import BufferLocation, StorageBackend, TierMemory
from .cache import CacheEntry, CacheTier, TieredCache
from .compactor import CompactionReport, compact_for_room, compact_tier
from .errors import CacheClosedError, VulkanUnavailableError

__all__ = ["BufferCache", "BufferLocation", "CompactionReport", "open_backend"]




def open_backend(backend: str | StorageBackend = "auto", device_index: int | None = None) -> StorageBackend:
    """Return the storage backend for ``backend`` ("auto", "vulkan" or "host").

    "auto" takes the Vulkan device (``device_index``, else the first one) and falls
    back to host memory with a one-line warning when Vulkan is unavailable.

    Raises:
        VulkanUnavailableError: "vulkan" was asked for and no loader, driver or device exists.
        ValueError: an unknown backend name.
    """
    if isinstance(backend, StorageBackend):
        return backend
    if backend == "host":
        from .host import HostBackend
        return HostBackend()
    if backend in ("vulkan", "auto"):
        try:
            from .vulkan.backend import VulkanBackend
            return VulkanBackend(device_index)
        except VulkanUnavailableError as error:
            if backend == "vulkan":
                raise
            warnings.warn("vyrecache: no Vulkan device (%s); using host memory"
                          % str(error).split(". Fix")[0], RuntimeWarning, stacklevel=3)
            from .host import HostBackend
            return HostBackend()
    raise ValueError("backend must be 'auto', 'vulkan' or 'host', got %r. Fix: pass one of those."
                     % (backend,))


def _tier_kinds(tiers: list[CacheTier]) -> list[str]:
    """Resolve memory="auto": device memory for the fastest (last) tier, host memory for the rest."""
    kinds = []
    for index, tier in enumerate(tiers):
        kind = tier.memory
        if kind == "auto":
            kind = "device" if index == len(tiers) - 1 else "host"
        if kind not in ("device", "host"):
            raise ValueError("tier %r: memory must be 'auto', 'device' or 'host', got %r. "
                             "Fix: pass one of those." % (tier.name, tier.memory))
        kinds.append(kind)
    return kinds


class BufferCache:
    """A tiered cache of byte buffers in GPU (or host) memory.

    ``tiers`` go from slowest (index 0) to fastest, each a ``CacheTier(name,
    capacity, memory)`` where memory is "device", "host" or "auto" (device for
    the fastest tier, host for the others).  Placement, promotion, demotion,
    spilling and eviction follow ``TieredCache`` exactly; a tier that has the
    free bytes for an entry but no contiguous range is compacted before anything
    is evicted.  ``on_evict(entry)`` is called for each entry that leaves the
    cache, after its bytes are gone.

    Use it as a context manager or call ``close()``: the memory is the device's.
    """

    def __init__(self, tiers: Iterable[CacheTier], backend: str | StorageBackend = "auto",
                 device_index: int | None = None, policy: Any = None, spill: bool = True,
                 on_evict: Callable[[CacheEntry], Any] | None = None) -> None:
        self._closed = True
        tiers = list(tiers)
        kinds = _tier_kinds(tiers)
        self._backend = open_backend(backend, device_index)
        self._backend.claim(self)
        try:
            self._engine = TieredCache(tiers, policy=policy, spill=spill, on_evict=None,
                                       granularity=self._backend.alignment)
            self._engine.record_events = True
            memories = [self._backend.resolve_memory(kind, tier.capacity) for kind, tier in zip(kinds, tiers)]
            self._memories: list[TierMemory] = memories
            self._storage = Storage(self._engine, self._backend, memories, [t.capacity for t in tiers])
        except BaseException:
            self._backend.close()
            raise
        self._on_evict = on_evict
        self._misses = 0
        self._storage.report_evictions = on_evict is not None
        # The hook holds the backend, not the cache: no reference cycle keeps an unclosed cache
        # alive past its last use (its __del__ then releases the memory at once).
        self._storage.set_compaction_hook(functools.partial(compact_for_room, backend=self._backend))
        self._lock = self._storage.lock
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free every block and the device (idempotent). Any later use raises CacheClosedError."""
        if self._closed:
            return
        self._closed = True
        try:
            self._storage.close()
        finally:
            self._backend.close()

    def __enter__(self) -> "BufferCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn("BufferCache was not closed; releasing its memory now. "
                          "Fix: use `with BufferCache(...) as cache:` or call cache.close().",
                          ResourceWarning, stacklevel=2)
            try:
                self.close()
            except Exception:
                pass

    def _live(self) -> None:
        if self._closed:
            raise CacheClosedError("this BufferCache is closed and its memory was freed. "
                                   "Fix: create a new BufferCache.")

    # -- bytes ------------------------------------------------------------------------------

    def put(self, key: int, data: Any) -> None:
        """Store ``data`` (any C-contiguous buffer) under ``key``, replacing an older entry.

        Placement and eviction are ``TieredCache.insert``'s.  Raises TypeError for data
        without the buffer protocol, ValueError for non-contiguous data,
        EntryTooLargeError/AllPinnedError when it cannot be placed — and then the
        cache is unchanged, the old entry under ``key`` included.
        """
        evicted = self._storage.put(key, data)
        if evicted and self._on_evict is not None:
            self._report(evicted)

    def read(self, key: int) -> np.ndarray:
        """A numpy uint8 copy of the entry's bytes. Raises KeyNotFoundError if absent."""
        return self._storage.read(key)

    def read_into(self, key: int, out: Any) -> None:
        """Copy the entry's bytes into ``out``, a writable C-contiguous buffer of exactly its size.

        Raises KeyNotFoundError if absent, ValueError for a buffer of another size,
        TypeError/ValueError for a read-only or strided one.
        """
        self._storage.read_into(key, out)

    def location(self, key: int) -> BufferLocation:
        """Where the entry's bytes are now: tier, memory type, VkBuffer handle, offset, size.

        The location changes when the entry moves (promote, demote, spill,
        compaction); pin the entry to keep it.
        """
        with self._lock:
            self._live()
            slot = self._slot(key)
            gb, offset = self._storage.slot_location(slot)
            tier = self._engine.get(key).tier
            memory = self._memories[tier]
            buffer = self._storage.block(gb).buffer_handle if gb >= 0 else 0
            return BufferLocation(tier, memory.memory_type_index, buffer, offset,
                                  self._storage.slot_size(slot))

    @property
    def device(self) -> Any:
        """The device in use (``.backend`` is "vulkan" or "host")."""
        return self._backend.device

    @property
    def backend_name(self) -> str:
        """"vulkan" or "host": the backend the bytes live in."""
        return self._backend.name

    # -- moves ------------------------------------------------------------------------------

    def _mutate(self, method: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self._live()
            self._storage.reacquire()
            try:
                result = method(*args)
            finally:
                # A batch call that raises part-way has done its earlier keys: their bytes move too.
                evicted = self._storage.replay()
        self._report(evicted)
        return result

    def access(self, key: int) -> int:
        """Record a use of ``key`` and promote it when the policy says so.

        Returns the tier the entry was found in, or -1 when it is absent (nothing
        is inserted: a buffer cache needs the bytes, use ``put``).
        """
        tier = self._mutate(self._engine.touch, key)
        if tier < 0:
            # Nothing is inserted on a miss, so no tier owns it: misses count on the lowest tier,
            # where the entry lands once the caller puts it.
            self._misses += 1
        return tier

    def promote(self, key: int) -> None:
        """Move the entry one tier up when the policy allows it (its bytes move too)."""
        self._mutate(self._engine.promote, key)

    def demote(self, key: int) -> None:
        """Move the entry one tier down (its bytes move too)."""
        self._mutate(self._engine.demote, key)

    def promote_many(self, keys: Any) -> None:
        """Promote every key of a uint64 array; all their bytes move in one batch."""
        self._mutate(self._engine.promote_many, keys)

    def demote_many(self, keys: Any) -> None:
        """Demote every key of a uint64 array; all their bytes move in one batch."""
        self._mutate(self._engine.demote_many, keys)

    def remove(self, key: int) -> CacheEntry:
        """Remove the entry and free its bytes; returns its metadata. KeyNotFoundError if absent."""
        return self._mutate(self._engine.remove, key)

    def evict_coldest(self) -> int | None:
        """Evict the coldest entry of the lowest non-empty tier; returns its key or None."""
        return self._mutate(self._engine.evict_coldest)

    def record_access(self, key: int) -> None:
        """Count a use of ``key`` without promoting (no-op for a missing key)."""
        with self._lock:
            self._live()
            self._engine.record_access(key)

    def pin(self, key: int) -> None:
        """Keep the entry where it is (no eviction, no spill, no compaction move); pins nest."""
        with self._lock:
            self._live()
            self._engine.pin(key)

    def unpin(self, key: int) -> None:
        """Undo one ``pin``."""
        with self._lock:
            self._live()
            self._engine.unpin(key)

    def compact(self, tier: int | None = None, max_bytes: int | None = None) -> CompactionReport | list[CompactionReport]:
        """Slide live entries together so each block's free bytes form one range.

        With ``tier`` None every tier is compacted and a list of reports is
        returned.  ``max_bytes`` bounds the bytes moved per tier (the pause).  In a
        tier of several blocks, entries move between blocks when that empties one,
        and emptied blocks go back to the device (``blocks_released``) until the
        next operation that may store bytes takes them back; if the device has no
        memory for them then, that operation raises DeviceOutOfMemoryError and
        changes nothing.
        """
        with self._lock:
            self._live()
            if tier is None:
                return [compact_tier(self._storage, self._backend, index, max_bytes, release=True)
                        for index in range(len(self._engine.tiers))]
            if not isinstance(tier, int) or not 0 <= tier < len(self._engine.tiers):
                raise ValueError("tier must be an index in [0, %d), got %r. Fix: pass a tier index."
                                 % (len(self._engine.tiers), tier))
            return compact_tier(self._storage, self._backend, tier, max_bytes, release=True)


    # -- metadata ---------------------------------------------------------------------------

    def get(self, key: int) -> CacheEntry | None:
        """The entry's metadata, or None (not an access)."""
        self._live()
        return self._engine.get(key)

    def stats(self, key: int) -> Any:
        """The entry's AccessStats (frequency, last_access, size), or None when it is absent."""
        self._live()
        return self._engine.stats(key)

    @property
    def tiers(self) -> Any:
        """Per-tier views with name, capacity, used, count."""
        self._live()
        return self._engine.tiers

    def counters(self) -> list[dict[str, float]]:
        """Per tier: the engine's counters plus compactions, compaction_bytes,
        fragmentation_evictions, evacuations and fragmentation (1 - largest free range / free bytes)."""
        with self._lock:
            self._live()
            merged = []
            for index, counts in enumerate(self._engine.counters()):
                row = dict(counts)
                row.update(self._storage.counters_of(index))
                if index == 0:
                    row["misses"] += self._misses
                free = self._storage.free_bytes(index)
                row["fragmentation"] = 1.0 - self._storage.largest_free(index) / free if free else 0.0
                merged.append(row)
            return merged

    def reset_counters(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._engine.reset_counters()
            self._storage.reset_counters()
            self._misses = 0

    def report(self) -> str:
        """The per-tier counter table as text."""
        from .report import format_report
        return format_report(self.counters(), [tier.name for tier in self._engine.tiers])

    def check(self) -> None:
        """Raise CacheError if any invariant of the metadata or the memory is broken."""
        with self._lock:
            self._live()
            self._engine.check()
            self._storage.check()

    def __len__(self) -> int:
        self._live()
        return len(self._engine)

    def __contains__(self, key: object) -> bool:
        self._live()
        return key in self._engine

    def __iter__(self) -> Iterator[int]:
        self._live()
        return iter(self._engine)

    def _slot(self, key: int) -> int:
        return self._storage.slot_of(key)

    def _report(self, evicted: list[tuple[int, int, int]]) -> None:
        if evicted and self._on_evict is not None:
            for key, size, tier in evicted:
                self._on_evict(CacheEntry(key, size, tier))
