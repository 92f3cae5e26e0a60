"""Prometheus metrics for a cache: ``registry.register(PrometheusCollector(cache))``.

Needs prometheus_client (``pip install 'vyrecache[metrics]'``).  Every scrape reads the cache's
counters afresh, so nothing is kept in between.  Metric names are stable; each carries a ``tier``
label with the tier's name:

=====================================================  =========  =========================================
metric                                                  type       from
=====================================================  =========  =========================================
``vyrecache_<counter>_total{tier}``                     counter    each cumulative per-tier counter of
                                                                   ``cache.counters()`` (``hits``,
                                                                   ``bytes_in``, ... see ``report.COUNTERS``)
``vyrecache_fragmentation_ratio{tier}``                 gauge      ``fragmentation``
``vyrecache_capacity_bytes{tier}``                      gauge      ``cache.tiers[i].capacity``
``vyrecache_used_bytes{tier}``                          gauge      ``cache.tiers[i].used``
``vyrecache_entries{tier}``                             gauge      ``cache.tiers[i].count``
``vyrecache_remote_<counter>_total{tier}``              counter    each counter of ``cache.remote_counters()``
``vyrecache_remote_latency_seconds{tier,op,quantile}``  gauge      its ``latency`` (op: fetch, write)
``vyrecache_remote_pending_bytes{tier}``                gauge      its ``pending_bytes``
``vyrecache_remote_circuit_open{tier,op}``              gauge      its ``fetch_circuit_open``/``write_circuit_open``
=====================================================  =========  =========================================

The remote metrics appear only when the cache has a ``remote_counters()`` method that returns a
counters dict (``RedisTier.counters()``), labelled ``tier="remote"``, or a dict of such dicts by
tier name.  A counter a later version adds is exported under the same scheme, so no name changes.
A closed cache exports nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeGuard

from .errors import CacheClosedError
from .counters import RATIO_COUNTERS
from .report import COUNTERS, counters_by_tier

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("vyrecache.metrics needs prometheus_client, which is not installed. "
                      "Fix: pip install 'vyrecache[metrics]' (or pip install prometheus-client).") from exc

__all__ = ["PrometheusCollector"]

_PREFIX = "vyrecache"
#: Per-tier values that are a state now rather than a running total, with their metric suffix.
_GAUGES = {name: f"{name}_ratio" for name in RATIO_COUNTERS}
_REMOTE_HELP = {
    "hits": "keys fetched from the remote tier that it served",
    "misses": "keys fetched from the remote tier that it did not serve (absent, corrupt, or server skipped)",
    "writes": "entries the remote server acknowledged",
    "dropped": "entries not written to the remote tier (queue full, circuit open, failed round trip)",
    "errors": "failed round trips to the remote server",
    "corrupt": "stored values that failed the header check (served as misses and deleted)",
    "bytes_written": "payload bytes the remote server acknowledged",
    "bytes_read": "payload bytes served by the remote tier",
}
_REMOTE_STATE = {"latency", "pending_bytes", "fetch_circuit_open", "write_circuit_open"}


def _metric_name(counter: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", counter)
    return name[:-len("_total")] if name.endswith("_total") else name


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class PrometheusCollector:
    """A prometheus_client collector of *cache*'s counters (a BufferCache, TieredCache or alike).

    *cache* needs ``counters()`` (one dict per tier, slowest first, or a dict by tier name) and
    ``tiers`` (views with ``name``, ``capacity``, ``used``, ``count``); ``remote_counters()`` is
    optional.
    """

    def __init__(self, cache: Any) -> None:
        # Looked up on the type: on a closed cache the `tiers` property raises.
        if not callable(getattr(cache, "counters", None)) or not (hasattr(type(cache), "tiers")
                                                                   or "tiers" in getattr(cache, "__dict__", {})):
            raise TypeError(f"PrometheusCollector needs a cache with counters() and tiers, got {cache!r}. "
                            "Fix: pass a BufferCache or TieredCache.")
        self._cache = cache

    def describe(self) -> list[Metric]:
        # Registering must not scrape the cache; the names are checked at the first collect.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            tiers = list(self._cache.tiers)
            per_tier = counters_by_tier(self._cache.counters(), [tier.name for tier in tiers])
            remote_counters = getattr(self._cache, "remote_counters", None)
            remote = remote_counters() if callable(remote_counters) else None
        except CacheClosedError:
            return
        families: dict[str, Metric] = {}

        def family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str, labels: list[str]) -> Any:
            if name not in families:
                families[name] = kind(name, documentation, labels=labels)
            return families[name]

        for tier_name, values in per_tier.items():
            for counter, value in values.items():
                if not _is_number(value):
                    continue
                if counter in _GAUGES:
                    metric = family(GaugeMetricFamily, f"{_PREFIX}_{_GAUGES[counter]}", COUNTERS[counter], ["tier"])
                else:
                    metric = family(CounterMetricFamily, f"{_PREFIX}_{_metric_name(counter)}",
                                    COUNTERS.get(counter, counter.replace("_", " ")), ["tier"])
                metric.add_metric([tier_name], float(value))
        for tier in tiers:
            for field, name, documentation in (("capacity", "capacity_bytes", "bytes the tier can hold"),
                                               ("used", "used_bytes", "bytes charged to the tier's entries now"),
                                               ("count", "entries", "entries in the tier now")):
                family(GaugeMetricFamily, f"{_PREFIX}_{name}", documentation, ["tier"]).add_metric(
                    [tier.name], float(getattr(tier, field)))

        if isinstance(remote, Mapping) and remote:
            by_tier = (remote if all(isinstance(value, Mapping) and "hits" in value for value in remote.values())
                       else {"remote": remote})
            for tier_name, remote_values in by_tier.items():
                self._add_remote(family, str(tier_name), remote_values)
        yield from families.values()

    @staticmethod
    def _add_remote(family: Any, tier_name: str, values: Mapping[str, Any]) -> None:
        for counter, value in values.items():
            if counter in _REMOTE_STATE or not _is_number(value):
                continue
            family(CounterMetricFamily, f"{_PREFIX}_remote_{_metric_name(counter)}",
                   _REMOTE_HELP.get(counter, counter.replace("_", " ")), ["tier"]).add_metric([tier_name], float(value))
        latency = values.get("latency")
        if isinstance(latency, Mapping):
            metric = family(GaugeMetricFamily, f"{_PREFIX}_remote_latency_seconds",
                            "round-trip time percentiles of the remote tier over its recent round trips",
                            ["tier", "op", "quantile"])
            for key, seconds in latency.items():
                op, _, percentile = str(key).rpartition("_p")
                if op and percentile.isdigit() and _is_number(seconds):
                    metric.add_metric([tier_name, op, str(int(percentile) / 100)], float(seconds))
        if _is_number(values.get("pending_bytes")):
            family(GaugeMetricFamily, f"{_PREFIX}_remote_pending_bytes", "bytes queued for the remote writer now",
                   ["tier"]).add_metric([tier_name], float(values["pending_bytes"]))
        for op in ("fetch", "write"):
            state = values.get(f"{op}_circuit_open")
            if _is_number(state):
                family(GaugeMetricFamily, f"{_PREFIX}_remote_circuit_open",
                       "1 while the remote tier skips its server for this kind of operation", ["tier", "op"]
                       ).add_metric([tier_name, op], float(state))
