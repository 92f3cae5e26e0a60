"""Trace replay: hit ratios of the engine's policies on a trace, beside Belady's OPT.

``replay(trace, policy, capacity)`` runs the trace through a live :class:`TieredCache` with that
policy, in batched ``access_many`` calls, and returns a :class:`ReplayResult`: the hit ratio,
each tier's share of the hits (with ``tiers``), and for Mooncake traces the prefix-usable hit
ratio (a request can reuse its KV-cache blocks only up to its first missing one).
``opt_hits(trace, capacity)`` is Belady's MIN with bypass: exact with unit sizes, a lower
bound on OPT with byte sizes.  ``replay_grid(trace, policies, capacities, jobs=N)`` runs every
policy at every capacity and OPT at each, on N threads: each replay drives a cache of its own
and the engine's batch calls and OPT run without the GIL, so the replays of a grid run side by
side on as many cores.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._core.belady import belady_hits
from ._core.key_uses import next_uses
from .cache import POLICIES, CacheTier, TieredCache, TierPolicy
from .traces import Trace

__all__ = ["ReplayResult", "GridPoint", "replay", "replay_grid", "opt_hits", "prefix_usable_hits",
           "parse_cache_sizes", "parse_tier_split", "parse_jobs", "available_cpus", "make_policy",
           "policy_names", "BATCH"]

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


def opt_hits(trace: Trace, capacity: int, use_sizes: bool = False,
             uses: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, bool]:
    """Belady's MIN with bypass: (hits, exact).  Exact with unit sizes; with byte sizes the
    schedule is feasible, so the hits are a lower bound on OPT's (exact is then False).
    `uses`: ``next_uses(trace.keys)``, when the caller computes OPT at several capacities."""
    sizes = trace.sizes if use_sizes and trace.sizes is not None else None
    return int(belady_hits(trace.keys, sizes, capacity, uses).sum()), sizes is None


@dataclass
class GridPoint:
    """One capacity of a replay grid: OPT's hits there and each policy's replay."""

    capacity: int
    requests: int
    opt_hits: int
    opt_exact: bool
    results: list[ReplayResult]

    @property
    def opt_hit_ratio(self) -> float:
        return self.opt_hits / self.requests if self.requests else 0.0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_jobs(value: int | None) -> int:
    """A thread count for replay_grid: None means every available CPU; ValueError below 1."""
    if value is None:
        return available_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"invalid jobs value {value!r} (threads to replay on). Fix: give 1 or "
                         f"more, or leave it out to use every CPU ({available_cpus()} here).")
    return value


class _Stopped(Exception):
    """Raised inside a grid's replays once the grid is abandoned (an error elsewhere, Ctrl-C)."""


def _abandon(stop: threading.Event, futures: list[Future]) -> None:
    """Stop a grid: replays not started never start, running ones stop at their next batch."""
    stop.set()
    for future in futures:
        future.cancel()


def replay_grid(trace: Trace, policies: Sequence[str], capacities: Sequence[int],
                tiers: list[float] | None = None, use_sizes: bool = False,
                jobs: int | None = None,
                progress: Callable[[int], Any] | None = None) -> list[GridPoint]:
    """Replay `trace` with every policy at every capacity and compute OPT at each, on `jobs`
    threads (default: every available CPU); the points in the order of `capacities`, each
    with its results in the order of `policies`, the same for any number of threads.

    `progress` is called with each batch's request count, from one thread at a time.  When a
    replay raises or the caller is interrupted (KeyboardInterrupt), the other replays stop at
    their next batch (an OPT computation already running finishes first) and the exception
    propagates with no thread left running.  OPT's sizes are computed one after another on one
    of the threads, beside the replays, so that the grid holds no more memory for OPT than a
    single computation of it does."""
    jobs = parse_jobs(jobs)
    names = list(policies)
    sizes = list(capacities)
    # Checked before any work starts.
    unknown = [name for name in names if not isinstance(name, str) or name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}. Fix: use policy names among "
                         f"{', '.join(POLICIES)} (policy_names('all') gives them all).")
    bad = [size for size in sizes if isinstance(size, bool) or not isinstance(size, int)
           or size < 1]
    if bad:
        raise ValueError(f"invalid cache size {bad[0]!r}. Fix: give each size as a positive "
                         f"number of entries (bytes with use_sizes).")
    stop = threading.Event()
    report_lock = threading.Lock()
    uses = next_uses(trace.keys) if sizes else None

    def report(count: int) -> None:
        if stop.is_set():
            raise _Stopped
        if progress is not None:
            with report_lock:
                progress(count)

    def optimal() -> list[tuple[int, bool]]:
        # Every size's OPT in one task, so that one OPT's arrays (17 bytes a request) are held
        # at a time, as in a replay one after another.
        results = []
        for capacity in sizes:
            if stop.is_set():
                raise _Stopped
            results.append(opt_hits(trace, capacity, use_sizes, uses))
        return results

    def run(task: tuple[str | None, int]) -> Any:
        name, capacity = task
        if stop.is_set():
            raise _Stopped
        if name is None:
            return optimal()
        return replay(trace, name, capacity, tiers, use_sizes, report)

    # OPT first: it runs beside the replays, on one thread.
    tasks: list[tuple[str | None, int]] = [(None, 0)] if sizes else []
    tasks += [(name, capacity) for capacity in sizes for name in names]
    if jobs == 1 or len(tasks) <= 1:
        outcomes = [run(task) for task in tasks]
    else:
        with ThreadPoolExecutor(max_workers=min(jobs, len(tasks)),
                                thread_name_prefix="vyrecache-replay") as pool:
            futures = [pool.submit(run, task) for task in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:           # Ctrl-C while waiting
                _abandon(stop, futures)
                raise
            failed = [future for future in futures
                      if future.done() and not future.cancelled() and future.exception()]
            if failed:
                _abandon(stop, futures)
                raise failed[0].exception()     # type: ignore[misc]
            outcomes = [future.result() for future in futures]
    opts, replays = (outcomes[0], outcomes[1:]) if sizes else ([], [])
    return [GridPoint(capacity, len(trace), opts[index][0], opts[index][1],
                      replays[index * len(names):(index + 1) * len(names)])
            for index, capacity in enumerate(sizes)]
