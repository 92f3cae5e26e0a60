"""Trace replay: hit ratios of the engine's policies on a trace, beside Belady's OPT.

``replay(trace, policy, capacity)`` runs the trace through a live :class:`TieredCache` with that
policy, in batched ``access_many`` calls, and returns a :class:`ReplayResult`: the hit ratio,
each tier's share of the hits (with ``tiers``), and for Mooncake traces the prefix-usable hit
ratio (a request can reuse its KV-cache blocks only up to its first missing one).
``opt_hits(trace, capacity)`` is Belady's MIN with bypass: exact with unit sizes, a lower
bound on OPT with byte sizes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ._core.belady import belady_hits
from .cache import POLICIES, CacheTier, TieredCache, TierPolicy
from .traces import Trace

__all__ = ["ReplayResult", "replay", "opt_hits", "prefix_usable_hits", "parse_cache_sizes",
           "parse_tier_split", "make_policy", "policy_names", "BATCH"]

#: Keys per access_many call: large enough that the call's cost vanishes, small enough for a
#: progress bar to move.
BATCH = 1 << 16


@dataclass
class ReplayResult:
    """One replay: a trace, a policy, a cache size (units: entries, or bytes with sizes)."""

    trace: str
    policy: str
    capacity: int
    requests: int
    hits: int
    tier_hits: list[int] = field(default_factory=list)
    prefix_hits: int | None = None
    seconds: float = 0.0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def tier_hit_ratios(self) -> list[float]:
        return [hits / self.requests if self.requests else 0.0 for hits in self.tier_hits]

    @property
    def prefix_hit_ratio(self) -> float | None:
        if self.prefix_hits is None or not self.requests:
            return None
        return self.prefix_hits / self.requests

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(hit_ratio=self.hit_ratio, tier_hit_ratios=self.tier_hit_ratios,
                    prefix_hit_ratio=self.prefix_hit_ratio)
        return data


def policy_names(text: str) -> list[str]:
    """``lru,arc`` or ``all`` as a list of policy names; ValueError naming an unknown one."""
    if text.strip() == "all":
        return list(POLICIES)
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICIES]
    if unknown or not names:
        named = ", ".join(repr(name) for name in unknown) or repr(text)
        raise ValueError(f"unknown policy {named}. Fix: use "
                         f"{', '.join(POLICIES)} or all, comma-separated.")
    return names


def make_policy(name: str) -> TierPolicy:
    """The policy of that name with its defaults (the published parameters)."""
    return POLICIES[name]()


def parse_cache_sizes(text: str, whole: int) -> list[int]:
    """``100,1%,10%`` as cache sizes; a percentage is of `whole` (unique keys, or bytes)."""
    sizes = []
    for part in (piece.strip() for piece in text.split(",")):
        try:
            if part.endswith("%"):
                fraction = float(part[:-1]) / 100
                if not 0 < fraction:
                    raise ValueError
                sizes.append(max(1, int(whole * fraction)))
            else:
                value = int(part)
                if value < 1:
                    raise ValueError
                sizes.append(value)
        except ValueError:
            raise ValueError(f"invalid cache size {part!r}. Fix: give a positive count such as "
                             f"1000, or a percentage of the trace's unique keys such as 10%."
                             ) from None
    return sizes


def parse_tier_split(text: str) -> list[float]:
    """``80%,20%`` as tier fractions, slowest tier first; they must add up to 100%."""
    fractions = []
    for part in (piece.strip() for piece in text.split(",")):
        try:
            if not part.endswith("%") or float(part[:-1]) <= 0:
                raise ValueError
            fractions.append(float(part[:-1]) / 100)
        except ValueError:
            raise ValueError(f"invalid tier share {part!r}. Fix: give each tier's share of the "
                             f"cache as a percentage, slowest first, e.g. --tiers 80%,20%."
                             ) from None
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"tier shares {text!r} add up to {sum(fractions) * 100:g}%, not 100%. "
                         f"Fix: make them add up to 100%, e.g. --tiers 80%,20%.")
    return fractions


def _tier_capacities(capacity: int, fractions: list[float] | None) -> list[int]:
    if not fractions:
        return [capacity]
    capacities = [int(capacity * fraction) for fraction in fractions]
    capacities[0] += capacity - sum(capacities)
    return capacities


def prefix_usable_hits(results: np.ndarray, request_starts: np.ndarray) -> int:
    """Hits before each request's first missing block, summed over the requests."""
    n = results.size
    ends = np.append(request_starts[1:], n)
    keep = ends > request_starts
    starts, ends = request_starts[keep], ends[keep]
    positions = np.where(results < 0, np.arange(n), n)
    first_miss = np.minimum.reduceat(positions, starts)
    return int((np.minimum(first_miss, ends) - starts).sum())


def replay(trace: Trace, policy: str | TierPolicy, capacity: int,
           tiers: list[float] | None = None, use_sizes: bool = False,
           progress: Callable[[int], Any] | None = None) -> ReplayResult:
    """Replay `trace` through a TieredCache of `capacity` (split by `tiers`) with `policy`."""
    policy_object = make_policy(policy) if isinstance(policy, str) else policy
    name = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    capacities = _tier_capacities(capacity, tiers)
    cache = TieredCache([CacheTier(f"tier{index}", cap) for index, cap in enumerate(capacities)],
                        policy=policy_object)
    sizes: Any = trace.sizes if use_sizes and trace.sizes is not None else 1
    n = len(trace)
    results = np.empty(n, dtype=np.int8)
    start = time.perf_counter()
    for begin in range(0, n, BATCH):
        stop = min(n, begin + BATCH)
        results[begin:stop] = cache.access_many(
            trace.keys[begin:stop], sizes if isinstance(sizes, int) else sizes[begin:stop])
        if progress is not None:
            progress(stop - begin)
    seconds = time.perf_counter() - start
    hits = int((results >= 0).sum())
    tier_hits = [int((results == tier).sum()) for tier in range(len(capacities))]
    prefix = (prefix_usable_hits(results, trace.request_starts)
              if trace.request_starts is not None else None)
    return ReplayResult(trace.path, name, capacity, n, hits, tier_hits, prefix, seconds)


def opt_hits(trace: Trace, capacity: int, use_sizes: bool = False) -> tuple[int, bool]:
    """Belady's MIN with bypass: (hits, exact).  Exact with unit sizes; with byte sizes the
    schedule is feasible, so the hits are a lower bound on OPT's (exact is then False)."""
    sizes = trace.sizes if use_sizes and trace.sizes is not None else None
    return int(belady_hits(trace.keys, sizes, capacity).sum()), sizes is None
