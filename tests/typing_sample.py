"""A user program over the whole public API; `mypy --strict` must accept it (tests/test_typing.py).

It is also run, so that what the types promise is what the code does.
"""

from __future__ import annotations

import warnings
from typing import Any, assert_type

import numpy as np
import numpy.typing as npt

import vyrecache as vc
from vyrecache.report import COUNTERS, format_report


class EveryOtherKey(vc.TierPolicy):
    """A custom policy: promote entries with even keys at once, evict the tier's coldest."""

    def should_promote(self, key: int, stats: vc.AccessStats) -> bool:
        return key % 2 == 0 and stats.frequency >= 1

    def eviction_candidate(self, tier: int, cache: vc.TieredCache) -> int | None:
        return None


def tiered_cache_tour() -> None:
    evicted: list[vc.CacheEntry] = []

    def on_evict(entry: vc.CacheEntry) -> None:
        evicted.append(entry)

    cache = vc.TieredCache([vc.CacheTier("host", 1 << 20), vc.CacheTier("vram", 64 << 10)],
                           policy=vc.LruPolicy(promote_threshold=vc.LruPolicy.DEFAULT_THRESHOLD),
                           spill=True, on_evict=on_evict)
    cache.insert(1, 4096)
    tier: int = cache.access(1, 4096)
    assert tier == 0
    cache.record_access(1)
    cache.promote(1)
    cache.demote(1)
    entry = cache.get(1)
    assert entry is not None
    key: int = entry.key
    size: int = entry.size
    where: int = entry.tier
    stats = cache.stats(1)
    assert stats is not None
    frequency: int = stats.frequency
    last_access: int = stats.last_access
    assert (key, size, where, frequency, last_access, stats.size) >= (0, 0, 0, 0, 0, 0)
    cache.pin(1)
    cache.unpin(1)
    coldest: int | None = cache.evict_coldest()
    assert coldest == 1 and 1 not in cache
    cache.insert(2, 100)
    removed: vc.CacheEntry = cache.remove(2)
    assert removed.size == 100
    policies: list[vc.TierPolicy] = [
        vc.FifoPolicy(), vc.ClockPolicy(promote_threshold=2), vc.SievePolicy(),
        vc.S3FifoPolicy(small_ratio=0.1, ghost_ratio=0.9, move_threshold=2), vc.ArcPolicy(),
        vc.WTinyLfuPolicy(window_ratio=0.01, adaptive=True)]
    for policy in policies:
        other = vc.TieredCache([vc.CacheTier("host", 1 << 20)], policy=policy)
        stored: bool = other.insert(3, 10)
        assert stored and other.policy_info(0)["policy"]

    keys: npt.NDArray[np.uint64] = np.arange(100, dtype=np.uint64)
    tiers = cache.access_many(keys, np.full(100, 512, dtype=np.uint64))
    assert tiers.dtype == np.int8
    cache.insert_many(keys[:10], 256)
    hits: int = cache.record_access_many(keys)
    assert hits >= 0
    assert cache.get_tiers(keys).shape == (100,)

    for view in cache.tiers:
        name: str = view.name
        numbers: tuple[int, int, int] = (view.capacity, view.used, view.count)
        assert name and min(numbers) >= 0
    assert len(cache) == len(list(iter(cache)))
    cache.check()
    counters = cache.counters()
    report: str = cache.report()
    assert "hits" in report and len(counters) == 2
    cache.reset_counters()

    custom = vc.TieredCache([vc.CacheTier("only", 1 << 10)], policy=EveryOtherKey(), spill=False)
    custom.insert(4, 10)
    assert custom.get(4) is not None


def buffer_cache_tour() -> None:
    tiers = [vc.CacheTier("host", 4 << 20, memory="host"), vc.CacheTier("vram", 1 << 20, memory="device")]
    gone: list[int] = []
    with vc.BufferCache(tiers, backend="auto", device_index=None, policy=None, spill=True,
                        on_evict=lambda entry: gone.append(entry.key)) as cache:
        data = np.arange(1024, dtype=np.uint32)
        cache.put(7, data)
        cache.put(8, b"bytes work too")
        cache.put(9, bytearray(64))
        cache.prefetch(np.array([7, 10], dtype=np.uint64))     # no remote tier: nothing happens
        back = cache.read(7)
        assert back.dtype == np.uint8 and bytes(back) == data.tobytes()
        out = np.empty(4096, dtype=np.uint8)
        cache.read_into(7, out)
        found: int = cache.access(7)
        assert found in (0, 1)
        cache.promote(7)
        cache.demote(7)
        cache.promote_many(np.array([7, 8], dtype=np.uint64))
        cache.demote_many([7, 8])
        location: vc.BufferLocation = cache.location(7)
        placed: tuple[int, int, int, int, int] = (location.tier, location.memory_type_index, location.buffer,
                                                  location.offset, location.size)
        assert placed[4] == 4096
        cache.record_access(8)
        entry = cache.get(8)
        assert entry is not None and entry.size == 14
        cache.pin(9)
        cache.unpin(9)
        assert cache.remove(9).key == 9
        assert cache.evict_coldest() is not None
        assert 7 in cache or len(cache) >= 0
        for tier_view in cache.tiers:
            assert tier_view.used <= tier_view.capacity
        report = cache.compact(tier=0, max_bytes=None)
        if isinstance(report, vc.CompactionReport):
            moved: int = report.bytes_moved
            assert moved >= 0 and report.free_bytes >= 0
        for view in cache.tiers:
            assert view.memory >= view.capacity and view.segments >= 2
        cache.check()
        table: str = cache.report()
        assert "evictions" in table and cache.counters()
        cache.reset_counters()
        print(cache.device)
    cache.close()


def devices_tour() -> None:
    try:
        found = vc.devices()
    except vc.VulkanUnavailableError as error:
        print(error)
        return
    for device in found:
        name: str = device.name
        kind: str = device.device_type
        limits: tuple[int, int] = (device.max_storage_buffer_range, device.min_storage_buffer_offset_alignment)
        print(name, kind, device.api_version, limits, len(device.memory_heaps), len(device.memory_types))


def errors_tour() -> None:
    cache = vc.TieredCache([vc.CacheTier("host", 100)])
    try:
        cache.insert(1, 1000)
    except vc.EntryTooLargeError as error:
        assert isinstance(error, (vc.CacheError, ValueError))
    try:
        cache.remove(5)
    except vc.KeyNotFoundError as error:
        assert isinstance(error, KeyError)
    failures: tuple[type[vc.CacheError], ...] = (
        vc.CapacityAccountingError, vc.AllPinnedError, vc.CacheClosedError, vc.DeviceError,
        vc.DeviceOutOfMemoryError, vc.DeviceLostError, vc.VulkanUnavailableError)
    assert all(issubclass(failure, vc.CacheError) for failure in failures)


def report_tour() -> None:
    table = format_report({"host": {"hits": 3, "misses": 1}}, ["host"], title="mine",
                          footer={"note": "typed"})
    assert_type(table, str)
    assert "hits" in COUNTERS


def remote_tour() -> None:
    # Nothing listens on port 1: the tier warns once and serves misses, which is all a type check needs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vc.RemoteTierWarning)
        with vc.RedisTier("redis://127.0.0.1:1/0", namespace="sample", ttl=60.0, cluster=False, timeout=0.05,
                          max_pending_bytes=1 << 20) as tier:
            tier.write_many([1, 2], [b"a", bytearray(b"b")])
            tier.write(3, memoryview(b"c"))
            found = tier.fetch_many(np.array([1, 2, 3], dtype=np.uint64))
            assert_type(found, list[bytes | None])
            assert_type(tier.fetch(1), bytes | None)
            assert_type(tier.flush(1.0), bool)
            tier.prefetch_many([4, 5])              # the circuit is open: nothing is sent
            assert_type(tier.epoch, int | None)
            counts = tier.counters()
            assert_type(counts, dict[str, Any])
            assert counts["misses"] == 4 and counts["dropped"] == 3
            tier.reset_counters()
        tier.close()


if __name__ == "__main__":
    assert_type(vc.__version__, str)
    tiered_cache_tour()
    buffer_cache_tour()
    devices_tour()
    errors_tour()
    report_tour()
    remote_tour()
    print("typing sample ran")
