"""The public tiered cache (metadata only): TieredCache and its policies and value types.

``TieredCache`` is a Python subclass of the compiled ``Engine``: ``access``, ``insert``,
``record_access`` and the other hot calls are the engine's own C methods, so each costs one
vectorcall.  This module adds what is comfortable rather than fast: tier views, the policy
classes, the printable report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar, overload

from ._core.engine import COUNTER_NAMES, EVENT_DTYPE, AccessStats, CacheEntry, Engine

__all__ = ["TieredCache", "CacheTier", "TierPolicy", "LruPolicy", "FifoPolicy", "ClockPolicy",
           "SievePolicy", "S3FifoPolicy", "ArcPolicy", "WTinyLfuPolicy", "POLICIES", "CacheEntry",
           "AccessStats", "TierView", "COUNTER_NAMES", "EVENT_DTYPE"]


@dataclass(frozen=True)
class CacheTier:
    """One tier: a unique name and a capacity in bytes.  Tier 0 is the slowest.

    ``memory`` ("auto", "host" or "device") is where a BufferCache keeps the bytes;
    TieredCache ignores it.
    """

    name: str
    capacity: int
    memory: str = "auto"


def _promote_threshold(value: int) -> int:
    """`value` as a promote_threshold, or ValueError saying what one must be."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise ValueError(f"promote_threshold must be an int in [0, 2**32), got {value!r}. Fix: pass a "
                         f"small non-negative int, e.g. LruPolicy.DEFAULT_THRESHOLD.")
    return value


class TierPolicy:
    """Base class of custom policies, written in Python.

    ``should_promote(key, stats)`` says whether an entry with these AccessStats moves up a tier;
    ``eviction_candidate(tier, cache)`` names the key to displace from ``tier`` when room is
    needed.  Returning None, or a key that is absent, pinned or in another tier, leaves the
    choice to the built-in rule (the tier's coldest unpinned entry), so a policy can never make
    the cache stall.  A policy may read the cache (get, stats, tiers, coldest_key, iteration) but
    not modify it: a mutating call from inside raises CacheError.  An exception raised by a policy
    method is re-raised once the operation has completed with the built-in choice.

    With a custom policy the batch calls keep the GIL, since they call into Python.
    """

    #: True when the engine may run this policy in C (LruPolicy, not overridden).
    _native = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass of a built-in policy that overrides neither method is still that policy,
        # run in C; overriding one makes it a Python policy.
        for native in (globals().get("_EnginePolicy"), globals().get("LruPolicy")):
            if native is not None and issubclass(cls, native):
                cls._native = (cls.should_promote is native.should_promote
                               and cls.eviction_candidate is native.eviction_candidate)
                return
        cls._native = False

    def should_promote(self, key: int, stats: AccessStats) -> bool:
        """Whether the entry ``key`` should move one tier up.  The base class never promotes."""
        return False

    def eviction_candidate(self, tier: int, cache: "TieredCache") -> int | None:
        """The key to displace from ``tier``, or None for the built-in coldest-unpinned choice."""
        return None


class LruPolicy(TierPolicy):
    """Least-recently-used eviction, promotion once an entry was accessed ``promote_threshold``
    times.  The engine runs it in C; it never calls back into Python."""

    DEFAULT_THRESHOLD = 3
    #: The name ``vyrecache replay --policy`` knows it by.
    name = "lru"

    def __init__(self, promote_threshold: int = DEFAULT_THRESHOLD) -> None:
        self.promote_threshold = _promote_threshold(promote_threshold)

    def should_promote(self, key: int, stats: AccessStats) -> bool:
        return stats.frequency >= self.promote_threshold

    def eviction_candidate(self, tier: int, cache: "TieredCache") -> int | None:
        return cache.coldest_key(tier)

    def __repr__(self) -> str:
        return f"LruPolicy(promote_threshold={self.promote_threshold})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.promote_threshold == self.promote_threshold

    def __hash__(self) -> int:
        return hash((type(self), self.promote_threshold))


LruPolicy._native = True


def _check_ratio(name: str, value: object, low: float, high: float, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{name} must be a number in [{low}, {high}), got {value!r}. "
                         f"Fix: pass e.g. {name}={example}.")
    return float(value)


class _EnginePolicy(TierPolicy):
    """A policy the engine runs in C, per tier (see docs/DESIGN.md, "Eviction policies").

    Each tier runs its own instance over the entries it holds; an entry that arrives in a tier
    (insert, spill, promotion, demotion) arrives as an insertion and keeps its access
    statistics; promotion between tiers follows ``promote_threshold`` as with LruPolicy.
    A subclass that overrides ``should_promote`` or ``eviction_candidate`` becomes a Python
    policy, whose victims default to the built-in LRU order: subclass TierPolicy to write one.
    """

    #: The engine's policy kind (engine.pxd, PK_*).
    _kind = 0
    #: The name ``vyrecache replay --policy`` knows it by.
    name = ""

    def __init__(self, promote_threshold: int = LruPolicy.DEFAULT_THRESHOLD) -> None:
        self.promote_threshold = _promote_threshold(promote_threshold)

    def _params(self) -> dict[str, Any]:
        return {}

    def _engine_config(self) -> tuple[int, float, float, int, float, bool]:
        """(kind, small_ratio, ghost_ratio, move_threshold, window_ratio, adaptive)."""
        return (self._kind, 0.0, 0.0, 0, 0.0, False)

    def should_promote(self, key: int, stats: AccessStats) -> bool:
        return stats.frequency >= self.promote_threshold

    def eviction_candidate(self, tier: int, cache: "TieredCache") -> int | None:
        return None

    def __repr__(self) -> str:
        params = "".join(f", {name}={value!r}" for name, value in self._params().items())
        return f"{type(self).__name__}(promote_threshold={self.promote_threshold}{params})"

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.promote_threshold == self.promote_threshold
                and other._params() == self._params())

    def __hash__(self) -> int:
        return hash((type(self), self.promote_threshold, tuple(self._params().items())))


class FifoPolicy(_EnginePolicy):
    """First in, first out: a hit changes nothing; the oldest arrival leaves first."""

    _kind = 1
    name = "fifo"


class ClockPolicy(_EnginePolicy):
    """CLOCK (second chance) with one reference bit: new entries arrive unmarked, a hit marks
    the entry, and the hand spares a marked entry once, clearing its bit."""

    _kind = 2
    name = "clock"


class SievePolicy(_EnginePolicy):
    """SIEVE (Zhang et al., NSDI'24): a FIFO with a visited bit and a hand that walks from the
    oldest entry towards the newest, evicting the first unvisited one; entries never move."""

    _kind = 3
    name = "sieve"


class S3FifoPolicy(_EnginePolicy):
    """S3-FIFO (Yang et al., SOSP'23): a small FIFO (``small_ratio`` of the tier) that new keys
    enter, a main FIFO with a 2-bit CLOCK counter, and a ghost FIFO of recently evicted keys
    (``ghost_ratio`` of the tier).  An entry accessed ``move_threshold`` times in small moves to
    main; a key found in the ghost goes straight to main.  The defaults are libCacheSim's."""

    _kind = 4
    name = "s3fifo"

    def __init__(self, small_ratio: float = 0.1, ghost_ratio: float = 0.9,
                 move_threshold: int = 2,
                 promote_threshold: int = LruPolicy.DEFAULT_THRESHOLD) -> None:
        super().__init__(promote_threshold)
        self.small_ratio = _check_ratio("small_ratio", small_ratio, 0.0, 1.0, "0.1")
        self.ghost_ratio = _check_ratio("ghost_ratio", ghost_ratio, 0.0, 8.0, "0.9")
        if (isinstance(move_threshold, bool) or not isinstance(move_threshold, int)
                or not 1 <= move_threshold <= 3):
            raise ValueError(f"move_threshold must be 1, 2 or 3 (the 2-bit counter's range), got "
                             f"{move_threshold!r}. Fix: pass move_threshold=2, the default.")
        self.move_threshold = move_threshold

    def _params(self) -> dict[str, Any]:
        return {"small_ratio": self.small_ratio, "ghost_ratio": self.ghost_ratio,
                "move_threshold": self.move_threshold}

    def _engine_config(self) -> tuple[int, float, float, int, float, bool]:
        return (self._kind, self.small_ratio, self.ghost_ratio, self.move_threshold, 0.0, False)


class ArcPolicy(_EnginePolicy):
    """ARC (Megiddo & Modha, FAST'03): T1 for entries seen once, T2 for entries seen again, and
    their ghosts B1 and B2, whose hits move T1's target size p."""

    _kind = 5
    name = "arc"


class WTinyLfuPolicy(_EnginePolicy):
    """W-TinyLFU (Einziger, Friedman & Manes), as in Caffeine: new entries enter a window LRU
    (``window_ratio`` of the tier); the window's oldest entry then competes with the main
    SLRU's victim, and a count-min sketch behind a doorkeeper says which was requested more
    often.  With ``adaptive`` a hill climber resizes the window from the tier's hit ratio.

    It is the one policy with admission: a new key too large for the window enters main only
    by winning against main's victims, and ``insert`` returns False (the tier counts a
    ``rejection``) when it loses.  The frequency sketch is shared by all tiers: how often a key
    is requested does not depend on where it lives."""

    _kind = 6
    name = "wtinylfu"

    def __init__(self, window_ratio: float = 0.01, adaptive: bool = True,
                 promote_threshold: int = LruPolicy.DEFAULT_THRESHOLD) -> None:
        super().__init__(promote_threshold)
        self.window_ratio = _check_ratio("window_ratio", window_ratio, 0.0, 1.0, "0.01")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be True or False, got {adaptive!r}. Fix: pass a bool.")
        self.adaptive = adaptive

    def _params(self) -> dict[str, Any]:
        return {"window_ratio": self.window_ratio, "adaptive": self.adaptive}

    def _engine_config(self) -> tuple[int, float, float, int, float, bool]:
        return (self._kind, 0.0, 0.0, 0, self.window_ratio, self.adaptive)


for _policy_class in (FifoPolicy, ClockPolicy, SievePolicy, S3FifoPolicy, ArcPolicy,
                      WTinyLfuPolicy):
    _policy_class._native = True

#: Every built-in policy by its replay name.
POLICIES: dict[str, type[TierPolicy]] = {
    "lru": LruPolicy, "fifo": FifoPolicy, "clock": ClockPolicy, "sieve": SievePolicy,
    "s3fifo": S3FifoPolicy, "arc": ArcPolicy, "wtinylfu": WTinyLfuPolicy,
}


_T = TypeVar("_T")


class _TierField(Generic[_T]):
    """A read-only attribute of a TierView: one field of the engine's tier_info(), read afresh."""

    __slots__ = ("_position",)

    def __init__(self, position: int) -> None:
        self._position = position

    @overload
    def __get__(self, view: None, owner: type) -> _TierField[_T]: ...
    @overload
    def __get__(self, view: TierView, owner: type | None = None) -> _T: ...

    def __get__(self, view: TierView | None, owner: type | None = None) -> _T | _TierField[_T]:
        if view is None:
            return self
        value: Any = view._cache.tier_info(view._index)[self._position]
        return value

    def __set__(self, view: TierView, value: object) -> None:
        raise AttributeError("a TierView is read-only")


class TierView:
    """A live view of one tier: name, capacity, used (charged bytes), count, pinned."""

    __slots__ = ("_cache", "_index")

    def __init__(self, cache: Engine, index: int) -> None:
        self._cache = cache
        self._index = index

    @property
    def index(self) -> int:
        return self._index

    name: _TierField[str] = _TierField(0)
    capacity: _TierField[int] = _TierField(1)
    used: _TierField[int] = _TierField(2)
    count: _TierField[int] = _TierField(3)
    pinned: _TierField[int] = _TierField(4)

    def keys(self) -> list[int]:
        """This tier's keys, most recent first."""
        return self._cache.tier_keys(self._index)

    def __repr__(self) -> str:
        name, capacity, used, count, pinned = self._cache.tier_info(self._index)
        return (f"TierView({name!r}, capacity={capacity}, used={used}, count={count}, "
                f"pinned={pinned})")


class TieredCache(Engine):
    """A tiered cache of entry metadata: which key lives in which tier.

    ``TieredCache(tiers, policy=LruPolicy(), spill=True, on_evict=None)``; ``tiers`` go from
    slowest (index 0) to fastest.  ``insert`` places an entry in the lowest tier that can hold
    it, evicting that tier's least-recently-used entries; ``access`` is the per-use call.  With
    ``spill`` a victim of tier k > 0 moves down to tier k - 1 instead of leaving.  ``on_evict``
    gets a CacheEntry for every entry that leaves the cache as a victim, after the operation.
    ``granularity`` (default 1, exact) charges each entry round_up(size, granularity) bytes.

    Every method is safe to call from several threads.
    """

    __slots__ = ("_views",)

    def __init__(self, tiers: Iterable[CacheTier | tuple[str, int]], policy: TierPolicy | None = None,
                 spill: bool = True, on_evict: Callable[[CacheEntry], Any] | None = None,
                 granularity: int = 1) -> None:
        if policy is None:
            policy = LruPolicy()
        elif not isinstance(policy, TierPolicy):
            raise TypeError(f"policy must be a TierPolicy, got {policy!r}. Fix: pass "
                            f"LruPolicy(...) or an instance of a TierPolicy subclass.")
        super().__init__(tiers, policy=policy, spill=spill, on_evict=on_evict,
                         granularity=granularity)
        self._views = tuple(TierView(self, index) for index in range(self.n_tiers))

    @property
    def tiers(self) -> tuple[TierView, ...]:
        """Per-tier live views (name, capacity, used, count, pinned), slowest first."""
        return self._views

    def events(self) -> Any:
        """The last mutating call's events as a numpy array of EVENT_DTYPE (see record_events)."""
        return self.event_log()

    def report(self) -> str:
        """The per-tier counters as a table a person can read."""
        from .report import format_report
        return format_report(self.counters(), list(self.tier_names))

    def __repr__(self) -> str:
        tiers = ", ".join(f"{view.name}: {view.count} entries, {view.used}/{view.capacity} B"
                          for view in self._views)
        return f"<TieredCache {len(self)} entries [{tiers}]>"
