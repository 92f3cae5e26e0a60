"""Per-tier statistics as a table a person can read.

``cache.counters()`` returns one ``{counter_name: value}`` dict per tier, slowest
first (a ``{tier_name: {counter_name: value}}`` mapping is accepted as well);
this module turns that into the table that ``cache.report()`` (of both
``TieredCache`` and ``BufferCache``) and ``python -m vyrecache demo`` print::

    counter                 host     device      total
    ---------------------  -------  ---------  ---------
    hits                    41,230    180,911    222,141
    hit ratio                16.8%      73.5%      90.3%
    ...

The counter names below are stable: they are part of the public API, so they
can feed a metrics system (one gauge or counter per ``tier`` label and name).
New counters may be added in later versions; existing names never change
meaning.  A counter a cache reports but this table does not know is still
shown, after the known ones, so nothing is hidden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from .counters import BYTE_COUNTERS as _BYTE_COUNTERS
from .counters import COUNTERS as _COUNTERS
from .counters import RATIO_COUNTERS as _RATIO_COUNTERS

__all__ = ["COUNTERS", "TierUsage", "counters_by_tier", "format_bytes", "format_report", "hit_ratios"]

#: What ``cache.counters()`` returns: per tier (a list in tier order, slowest first, with the tier
#: names given separately, or a mapping by tier name), per counter name, the value.
Counters = Mapping[str, Mapping[str, int | float]] | Sequence[Mapping[str, int | float]]

#: Every documented counter, in the order the report shows them, with its meaning (declared in
#: :mod:`vyrecache.counters`).  All are cumulative since the cache was made or its counters were
#: last reset, except ``fragmentation``, which is the tier's state now.
COUNTERS: dict[str, str] = _COUNTERS


class TierUsage(Protocol):
    """What the report reads from a tier view (``cache.tiers[i]``)."""

    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def count(self) -> int: ...


def format_bytes(size: float) -> str:
    """Return *size* bytes in the largest binary unit that keeps it >= 1, e.g. ``"1.5 MiB"``.

    Raises:
        ValueError: *size* is negative or not finite (byte counts never are).
    """
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"a byte count must be finite and >= 0, got {size!r}. "
                         "Fix: pass the counter value as the cache reported it.")
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{int(size)} B"


def counters_by_tier(counters: Counters, tier_names: Sequence[str] | None = None
                     ) -> dict[str, dict[str, int | float]]:
    """Return *counters* as ``{tier name: {counter: value}}``, whichever form it came in.

    Raises:
        ValueError: *counters* is a list, and *tier_names* is missing or of another length.
    """
    if isinstance(counters, Mapping):
        return {str(name): dict(values) for name, values in counters.items()}
    rows = list(counters)
    if tier_names is None or len(tier_names) != len(rows):
        raise ValueError(f"{len(rows)} per-tier counter rows need as many tier names, got {tier_names!r}. "
                         "Fix: pass [tier.name for tier in cache.tiers].")
    return {name: dict(values) for name, values in zip(tier_names, rows)}


def hit_ratios(counters: Counters, tier_names: Sequence[str] | None = None) -> dict[str, float]:
    """Return each tier's share of all accesses that hit it, plus ``"total"``.

    The denominator is every access the cache saw: the hits of all tiers plus
    the misses of all tiers.  With no accesses at all every ratio is 0.0.

    Raises:
        ValueError: as :func:`counters_by_tier`.
    """
    counters = counters_by_tier(counters, tier_names)
    hits = {tier: float(values.get("hits", 0)) for tier, values in counters.items()}
    accesses = sum(hits.values()) + sum(float(values.get("misses", 0)) for values in counters.values())
    ratios = {tier: (hit / accesses if accesses else 0.0) for tier, hit in hits.items()}
    ratios["total"] = sum(hits.values()) / accesses if accesses else 0.0
    return ratios


def _cell(name: str, value: int | float) -> str:
    if name in _RATIO_COUNTERS:
        return f"{100.0 * value:.1f}%"
    if name in _BYTE_COUNTERS:
        return format_bytes(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


def format_report(counters: Counters,
                  tier_names: Sequence[str] | None = None, *,
                  tiers: Sequence[TierUsage] | None = None,
                  title: str | None = None,
                  footer: Mapping[str, str] | None = None) -> str:
    """Return the per-tier counters as a plain-text table, one column per tier.

    *counters* is what ``cache.counters()`` returns: a list in tier order, or
    a mapping by tier name.  *tier_names* names the tiers of a list (required
    then), or gives the column order of a mapping (by default its own order);
    columns go slowest tier first, as the cache numbers them.  When *tiers* (``cache.tiers``) is given, the table
    also shows each tier's entries, used bytes and capacity.  A total column sums
    every counter over the tiers (fragmentation has no total).  The *title* is
    printed above the table and each *footer* item below it as ``key: value``.

    Raises:
        KeyError: a name in *tier_names* has no counters.
        ValueError: a byte counter is negative or not finite, or *counters* is
            a list whose length differs from *tier_names*.
    """
    counters = counters_by_tier(counters, tier_names)
    names = list(tier_names) if tier_names is not None else list(counters)
    missing = [name for name in names if name not in counters]
    if missing:
        raise KeyError(f"no counters for tier(s) {missing!r} (counters have {list(counters)!r}). "
                       "Fix: pass the tier names of the cache that produced the counters.")
    present = {counter for name in names for counter in counters[name]}
    order = [counter for counter in COUNTERS if counter in present]
    order += sorted(present - set(COUNTERS))

    rows: list[list[str]] = []
    if tiers is not None:
        by_name = {tier.name: tier for tier in tiers}
        usage = [by_name.get(name) for name in names]
        rows.append(["entries"] + [f"{t.count:,}" if t else "-" for t in usage]
                    + [f"{sum(t.count for t in usage if t):,}"])
        rows.append(["used"] + [format_bytes(t.used) if t else "-" for t in usage]
                    + [format_bytes(sum(t.used for t in usage if t))])
        rows.append(["capacity"] + [format_bytes(t.capacity) if t else "-" for t in usage]
                    + [format_bytes(sum(t.capacity for t in usage if t))])
    if "hits" in present:
        ratios = hit_ratios({name: counters[name] for name in names})
        rows.append(["hit ratio"] + [f"{100.0 * ratios[name]:.1f}%" for name in names]
                    + [f"{100.0 * ratios['total']:.1f}%"])
    for counter in order:
        values = [counters[name].get(counter, 0) for name in names]
        total = "-" if counter in _RATIO_COUNTERS else _cell(counter, sum(values))
        rows.append([counter] + [_cell(counter, value) for value in values] + [total])

    header = ["counter"] + names + ["total"]
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(header))
    out.append(line(["-" * width for width in widths]))
    out.extend(line(row) for row in rows)
    for key, value in (footer or {}).items():
        out.append(f"{key}: {value}")
    return "\n".join(out)
