"""BufferCache: the tiered cache that stores real bytes.

Metadata is the engine's (the same ``TieredCache`` rules, one implementation); bytes live in
log-structured tiers of a backend's memory (Vulkan device memory, or host memory) and move
whenever the engine moves an entry.  The per-call methods (``put``, ``read``, ``read_into``,
``access``, ``promote``, ``remove``...) are the compiled storage layer's own (``Storage``, which
this class subclasses), so each is one C call with no Python frame on the way.  Every public
method is atomic: it either completes, or raises and leaves the cache as it was.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._core.storage import Storage, tier_layout
from .backend import BufferLocation, StorageBackend, TierMemory
from .cache import CacheEntry, CacheTier, TieredCache
from .errors import CacheClosedError, VulkanUnavailableError

__all__ = ["BufferCache", "BufferLocation", "BufferTierView", "CompactionReport", "open_backend",
           "DEFAULT_HEADROOM", "DEFAULT_SEGMENT_SIZE"]

#: Share of each tier's memory its entries never fill (cleaning copies at most
#: (1 - headroom) / headroom bytes per byte put in the worst case; see BENCHMARKS.md for the
#: measured write amplification against headroom).
DEFAULT_HEADROOM = 0.35
#: The largest segment a tier is cut into (small tiers get smaller ones).
DEFAULT_SEGMENT_SIZE = 4 << 20


@dataclass(frozen=True)
class CompactionReport:
    """What one ``compact()`` of one tier did.

    ``largest_free_before/after`` are the largest contiguous free ranges of the tier (free
    segments in a row, or the room left in the head segment).
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


@dataclass(frozen=True)
class BufferTierView:
    """One tier of a BufferCache now: the engine's accounting and the memory behind it.

    ``capacity``/``used`` are the bytes its entries may hold / hold (charged at the alignment);
    ``memory`` is what the tier took from the device: capacity / (1 - headroom) in whole
    segments, plus one segment kept free for cleaning.
    """

    index: int
    name: str
    capacity: int
    used: int
    count: int
    pinned: int
    memory: int
    segment_size: int
    segments: int
    free_segments: int


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
    if device_index is not None and (isinstance(device_index, bool) or not isinstance(device_index, int)):
        raise TypeError(f"device_index must be an int or None, got {device_index!r}. "
                        f"Fix: pass the index `python -m vyrecache info` lists, e.g. 0.")
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


def _tier_specs(tiers: Iterable[Any]) -> list[CacheTier]:
    """CacheTier objects from CacheTier or (name, capacity[, memory]) tuples."""
    specs = []
    for tier in tiers:
        if isinstance(tier, tuple):
            tier = CacheTier(*tier)
        specs.append(tier)
    return specs


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


def _aligned_tier(tier: CacheTier, alignment: int) -> CacheTier:
    """The tier with its capacity rounded up to the alignment, so an entry of the full
    capacity fits; a capacity that is not an int in range is left for the engine to refuse."""
    capacity = tier.capacity
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 <= capacity < 1 << 64:
        return tier
    rounded = -(-capacity // alignment) * alignment
    if rounded >= 1 << 64:
        raise ValueError(f"tier {tier.name!r}: capacity {capacity} cannot be held: rounded up to "
                         f"the {alignment}-byte alignment it exceeds 2**64 bytes. Fix: pass a "
                         f"capacity the machine can hold, e.g. 1 << 30.")
    return CacheTier(tier.name, rounded, tier.memory)


def _check_headroom(headroom: Any) -> float:
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 0.0 < headroom < 1.0:
        raise ValueError(f"headroom must be a number in (0, 1), got {headroom!r}. Fix: pass e.g. "
                         f"{DEFAULT_HEADROOM} (the share of each tier's memory kept free).")
    return float(headroom)


def _check_max_bytes(max_bytes: Any) -> int | None:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, (bool, np.bool_)) or not hasattr(type(max_bytes), "__index__"):
        raise TypeError(f"max_bytes must be an int or None, got {max_bytes!r}. "
                        f"Fix: pass a byte budget such as 64 << 20, or None for no limit.")
    value = int(max_bytes.__index__())
    if not 0 <= value < 1 << 64:
        raise ValueError(f"max_bytes must be in [0, 2**64), got {value}. "
                         f"Fix: pass a non-negative byte budget, or None for no limit.")
    return value


class BufferCache(Storage):
    """A tiered cache of byte buffers in GPU (or host) memory.

    ``tiers`` go from slowest (index 0) to fastest, each a ``CacheTier(name, capacity,
    memory)`` where memory is "device", "host" or "auto" (device for the fastest tier, host for
    the others).  Placement, promotion, demotion, spilling and eviction follow ``TieredCache``
    exactly.  Each tier takes capacity / (1 - ``headroom``) bytes of memory in segments of at
    most ``segment_size``; entries are appended to a segment, and room is made by cleaning the
    emptiest one.  ``on_evict(entry)`` is called for each entry that leaves the cache, after the
    operation is complete.

    Use it as a context manager or call ``close()``: the memory is the device's.
    """

    def __init__(self, tiers: Iterable[CacheTier | tuple[Any, ...]], backend: str | StorageBackend = "auto",
                 device_index: int | None = None, policy: Any = None, spill: bool = True,
                 on_evict: Callable[[CacheEntry], Any] | None = None, *,
                 headroom: float = DEFAULT_HEADROOM, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 remote: Any = None, remote_write: str = "back") -> None:
        self._open = False
        if remote_write not in ("back", "through"):
            raise ValueError(f"remote_write must be 'back' (write entries evicted from the cache) or "
                             f"'through' (also every put), got {remote_write!r}. Fix: pass one of those.")
        if remote is not None and not (callable(getattr(remote, "write_many", None))
                                       and callable(getattr(remote, "fetch_many", None))):
            raise TypeError(f"remote must be a remote tier such as vc.RedisTier(...), got {remote!r}. "
                            f"Fix: pass vc.RedisTier(url) or None.")
        specs = _tier_specs(tiers)
        kinds = _tier_kinds(specs)
        headroom = _check_headroom(headroom)
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 1:
            raise ValueError(f"segment_size must be a positive int, got {segment_size!r}. "
                             f"Fix: pass e.g. 4 << 20.")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, got {on_evict!r}. "
                            f"Fix: pass a function taking one CacheEntry.")
        # The cache owns its backend (a backend object given here too): close() closes it.
        self._backend = open_backend(backend, device_index)
        self._backend.claim(self)      # before the try: a refused claim must not close the owner's
        try:
            alignment = self._backend.alignment
            rounded = [_aligned_tier(tier, alignment) for tier in specs]
            self._engine = TieredCache(rounded, policy=policy, spill=spill, on_evict=None,
                                       granularity=alignment)
            self._engine.record_events = True
            layouts = [tier_layout(view.capacity, headroom, segment_size, alignment,
                                   self._backend.max_block_size) for view in self._engine.tiers]
            self._memories: list[TierMemory] = [
                self._backend.resolve_memory(kind, layout[0] * layout[1])
                for kind, layout in zip(kinds, layouts)]
            self._take_memory(self._engine, self._backend, self._memories, layouts, on_evict)
        except BaseException:
            self._backend.close()
            raise
        self._headroom = headroom
        self.remote = remote
        self.write_through = remote is not None and remote_write == "through"
        self._open = True

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free every block and the device (idempotent). Any later use raises CacheClosedError.

        Raises CacheError (and closes nothing) when called from inside one of the cache's own
        callbacks while an operation runs.
        """
        if not self._open:
            return
        self._close_storage()
        self._open = False
        try:
            self._backend.close()
        finally:
            if self.remote is not None:
                self.remote.close()     # sends what is queued first (for a few seconds at most)

    def __enter__(self) -> "BufferCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            warnings.warn("BufferCache was not closed; releasing its memory now. "
                          "Fix: use `with BufferCache(...) as cache:` or call cache.close().",
                          ResourceWarning, stacklevel=2)
            try:
                self.close()
            except Exception:
                pass

    def _live(self) -> None:
        if not self._open:
            raise CacheClosedError("this BufferCache is closed and its memory was freed. "
                                   "Fix: create a new BufferCache.")

    # -- where the bytes are ------------------------------------------------------------------

    def location(self, key: int) -> BufferLocation:
        """Where the entry's bytes are now: tier, memory type, VkBuffer handle, offset, size.

        The location changes when the entry moves (promote, demote, spill, cleaning); pin the
        entry to keep it.
        """
        tier, block, offset, size = self._location_of(key)
        memory = self._memories[tier]
        return BufferLocation(tier, memory.memory_type_index,
                              block.buffer_handle if block is not None else 0, offset, size)

    @property
    def device(self) -> Any:
        """The device in use (``.backend`` is "vulkan" or "host")."""
        return self._backend.device

    @property
    def backend_name(self) -> str:
        """"vulkan" or "host": the backend the bytes live in."""
        return self._backend.name

    @property
    def headroom(self) -> float:
        """The share of each tier's memory its entries never fill."""
        return self._headroom

    # -- compaction -------------------------------------------------------------------------

    def compact(self, tier: int | None = None, max_bytes: int | None = None) -> CompactionReport | list[CompactionReport]:
        """Clean the tier's emptiest segments together so its free bytes form whole free segments.

        With ``tier`` None every tier is compacted and a list of reports is returned.
        ``max_bytes`` bounds the bytes moved per tier (the pause).  Placement never needs this
        (it cleans as it goes); compacting in a quiet moment takes that work off later puts.
        """
        self._live()
        budget = _check_max_bytes(max_bytes)
        n_tiers = len(self._engine.tiers)
        if tier is None:
            return [self._compact_one(index, budget) for index in range(n_tiers)]
        if isinstance(tier, bool) or not isinstance(tier, int) or not 0 <= tier < n_tiers:
            raise ValueError("tier must be an index in [0, %d), got %r. Fix: pass a tier index."
                             % (n_tiers, tier))
        return self._compact_one(tier, budget)

    def _compact_one(self, tier: int, budget: int | None) -> CompactionReport:
        started = time.perf_counter()
        before = self._tier_memory(tier)
        moves, moved, complete = self._compact_tier(tier, budget)
        after = self._tier_memory(tier)
        return CompactionReport(tier=tier, moves=moves, bytes_moved=moved,
                                seconds=time.perf_counter() - started,
                                free_bytes=after["free_bytes"],
                                largest_free_before=before["largest_free"],
                                largest_free_after=after["largest_free"], complete=complete)

    # -- metadata ---------------------------------------------------------------------------

    def stats(self, key: int) -> Any:
        """The entry's AccessStats (frequency, last_access, size), or None when it is absent."""
        self._live()
        return self._engine.stats(key)

    def record_access(self, key: int) -> None:
        """Count a use of ``key`` without promoting (no-op for a missing key)."""
        self._live()
        self._engine.record_access(key)

    @property
    def tiers(self) -> list[BufferTierView]:
        """Per tier, slowest first: name, capacity, used, count, pinned and the memory taken."""
        self._live()
        views = []
        for view in self._engine.tiers:
            memory = self._tier_memory(view.index)
            name, capacity, used, count, pinned = self._engine.tier_info(view.index)
            views.append(BufferTierView(view.index, name, capacity, used, count, pinned,
                                        memory["memory"], memory["segment_size"],
                                        memory["segments"], memory["free_segments"]))
        return views

    def counters(self) -> list[dict[str, float]]:
        """Per tier: the engine's counters plus cleanings, cleaning_bytes, compactions,
        compaction_bytes, fragmentation_evictions, memory and fragmentation (the share of the
        free bytes that lies as dead space in closed segments, waiting to be cleaned)."""
        self._live()
        merged = []
        for index, counts in enumerate(self._engine.counters()):
            row: dict[str, float] = dict(counts)
            row.update(self._counters_of(index))
            if index == 0:
                row["misses"] += self.misses
                row["hits"] += self.remote_hits     # found in the remote tier, put into this one
            memory = self._tier_memory(index)
            row["memory"] = memory["memory"]
            free = memory["free_bytes"]
            # Free bytes stuck as dead space in closed segments, waiting to be cleaned.
            row["fragmentation"] = 1.0 - memory["ready_bytes"] / free if free else 0.0
            merged.append(row)
        return merged

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the writes queued for the remote tier are sent; True when none is left
        (always True without a remote tier)."""
        self._live()
        return True if self.remote is None else bool(self.remote.flush(timeout))

    def prefetch(self, keys: Any) -> None:
        """Start fetching from the remote tier, in the background, those of ``keys`` the cache
        does not hold now, and return at once.  A later ``access``/``read`` (or batch) that misses
        on one of them is served what the prefetch brought without a round trip of its own,
        waiting for it if it is still under way; it is then put into the cache as any remote hit.
        For a server that knows its next batch's keys: their round trip overlaps the current one.
        Nothing happens without a remote tier (or one that cannot prefetch)."""
        if self.remote is None:
            return
        prefetch = getattr(self.remote, "prefetch_many", None)
        absent = self._absent_keys(keys)
        if prefetch is not None and absent.size:
            prefetch(absent)

    def remote_counters(self) -> dict[str, Any]:
        """The remote tier's counters (hits, misses, writes, dropped, errors, corrupt,
        bytes_written, bytes_read, latency); empty without a remote tier."""
        self._live()
        return {} if self.remote is None else dict(self.remote.counters())

    def write_amplification(self) -> float:
        """Bytes copied to make room (cleaning and fragmentation) per byte put since the counters
        were reset: 0.0 when nothing was cleaned."""
        self._live()
        copied = sum(self._counters_of(index)["cleaning_bytes"] for index in range(len(self._engine.tiers)))
        return copied / self.puts_bytes if self.puts_bytes else 0.0

    def reset_counters(self) -> None:
        """Zero every counter."""
        self._live()
        self._engine.reset_counters()
        self._reset_storage_counters()

    def report(self) -> str:
        """The per-tier counter table as text."""
        from .report import format_report
        return format_report(self.counters(), [tier.name for tier in self._engine.tiers])

    def check(self) -> None:
        """Raise CacheError if any invariant of the metadata or the memory is broken."""
        self._live()
        self._engine.check()
        self._check_storage()

    def __iter__(self) -> Iterator[int]:
        self._live()
        return iter(self._engine)

    def __repr__(self) -> str:
        if not self._open:
            return "<BufferCache closed>"
        return f"<BufferCache {len(self)} entries on {self.backend_name}>"
