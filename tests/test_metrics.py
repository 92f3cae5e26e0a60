"""PrometheusCollector: every counter of a real cache in the text exposition format, by tier."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import vyrecache as vc  # noqa: E402
from vyrecache.metrics import PrometheusCollector  # noqa: E402
from vyrecache.report import COUNTERS  # noqa: E402


def scrape(cache) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(PrometheusCollector(cache))
    text = prometheus_client.generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_buffer_cache_exports_every_per_tier_counter_fragmentation_and_capacity():
    tiers = [vc.CacheTier("host", 1 << 20, memory="host"), vc.CacheTier("fast", 256 << 10, memory="host")]
    with vc.BufferCache(tiers, backend="host") as cache:
        for key in range(100):
            cache.put(key, bytes([key]) * 4096 * (1 + key % 3))
        for _ in range(5):  # promoted at the third access, then hits in the fast tier
            for key in range(5):
                cache.access(key)
        for key in range(0, 40, 3):
            if key in cache:
                cache.remove(key)
        samples = scrape(cache)
        counters = cache.counters()
        for index, tier in enumerate(cache.tiers):
            for counter, expected in counters[index].items():
                if counter == "fragmentation":
                    assert value(samples, "vyrecache_fragmentation_ratio", tier=tier.name) == pytest.approx(expected)
                else:
                    assert value(samples, f"vyrecache_{counter}_total", tier=tier.name) == expected, counter
            assert value(samples, "vyrecache_capacity_bytes", tier=tier.name) == tier.capacity
            assert value(samples, "vyrecache_used_bytes", tier=tier.name) == tier.used
            assert value(samples, "vyrecache_entries", tier=tier.name) == tier.count
        assert set(counters[0]) <= set(COUNTERS)
        assert value(samples, "vyrecache_hits_total", tier="fast") > 0
        assert value(samples, "vyrecache_inserts_total", tier="host") == 100
        assert not any(name.startswith("vyrecache_remote") for name, _ in samples)
    assert scrape(cache) == {}  # closed: nothing to export


class WithRemote:
    """A TieredCache with a remote tier's counters, shaped like the cache after the integration."""

    def __init__(self, remote_counters):
        self.engine = vc.TieredCache([vc.CacheTier("host", 1 << 20), vc.CacheTier("vram", 1 << 16)])
        self._remote = remote_counters

    @property
    def tiers(self):
        return self.engine.tiers

    def counters(self):
        return self.engine.counters()

    def remote_counters(self):
        return self._remote


REMOTE = {"hits": 7, "misses": 3, "writes": 11, "dropped": 2, "errors": 1, "corrupt": 1,
          "bytes_written": 1 << 20, "bytes_read": 5000, "pending_bytes": 4096,
          "fetch_circuit_open": 0, "write_circuit_open": 1,
          "latency": {"fetch_p50": 0.001, "fetch_p99": 0.004, "write_p50": 0.002, "write_p99": 0.009}}


def test_tiered_cache_like_object_exports_its_remote_counters_with_a_tier_label():
    cache = WithRemote(REMOTE)
    for key in range(50):
        cache.engine.access(key, 1000)
    samples = scrape(cache)
    assert value(samples, "vyrecache_misses_total", tier="host") == 50
    assert value(samples, "vyrecache_capacity_bytes", tier="vram") == 1 << 16
    for counter in ("hits", "misses", "writes", "dropped", "errors", "corrupt", "bytes_written", "bytes_read"):
        assert value(samples, f"vyrecache_remote_{counter}_total", tier="remote") == REMOTE[counter]
    assert value(samples, "vyrecache_remote_latency_seconds", tier="remote", op="fetch", quantile="0.5") == 0.001
    assert value(samples, "vyrecache_remote_latency_seconds", tier="remote", op="write", quantile="0.99") == 0.009
    assert value(samples, "vyrecache_remote_pending_bytes", tier="remote") == 4096
    assert value(samples, "vyrecache_remote_circuit_open", tier="remote", op="write") == 1
    assert value(samples, "vyrecache_remote_circuit_open", tier="remote", op="fetch") == 0


def test_remote_counters_by_tier_name_keep_their_names():
    samples = scrape(WithRemote({"redis-a": REMOTE, "redis-b": {**REMOTE, "hits": 1}}))
    assert value(samples, "vyrecache_remote_hits_total", tier="redis-a") == 7
    assert value(samples, "vyrecache_remote_hits_total", tier="redis-b") == 1


def test_a_real_redis_tier_counters_feed_the_collector(redis_server):
    with vc.RedisTier(redis_server.url) as tier:
        tier.write_many(range(10), [b"x" * 100] * 10)
        assert tier.flush(10)
        tier.fetch_many(range(20))
        samples = scrape(WithRemote(tier.counters()))
    assert value(samples, "vyrecache_remote_hits_total", tier="remote") == 10
    assert value(samples, "vyrecache_remote_misses_total", tier="remote") == 10
    assert value(samples, "vyrecache_remote_bytes_written_total", tier="remote") == 1000
    assert value(samples, "vyrecache_remote_latency_seconds", tier="remote", op="fetch", quantile="0.99") > 0


def test_an_object_without_counters_is_refused_with_a_fix():
    with pytest.raises(TypeError, match="Fix:"):
        PrometheusCollector(object())
