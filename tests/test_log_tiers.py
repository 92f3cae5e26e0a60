"""The log-structured tiers: placement cost bounded whatever the number of entries, bytes exact.

* A long random run (sizes from 16 B to several segments, pins, spills, removals) checks after
  every step that no two entries overlap, every entry reads back its bytes, and cleaning never
  copied more than (1 - s) / s bytes per byte put, plus one segment per operation.
* Operation counts (not timings): the bytes cleaning copies per byte put are the same at 10^3
  and 10^6 entries.
"""

from __future__ import annotations

import numpy as np
import pytest

import vyrecache as vc
from helpers import payload_array as payload


def ranges_do_not_overlap(cache) -> None:
    spans: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for key in cache:
        where = cache.location(key)
        if where.size:
            spans.setdefault((where.tier, where.buffer), []).append((where.offset, where.size, key))
    for found in spans.values():
        found.sort()
        for (start, size, key), (next_start, _, other) in zip(found, found[1:]):
            assert start + size <= next_start, f"entries {key} and {other} overlap"


@pytest.mark.parametrize("backend", ["host", "vulkan"])
@pytest.mark.parametrize("headroom", [0.2, 0.35])
def test_a_long_random_run_keeps_bytes_exact_and_cleaning_bounded(backend, headroom, request):
    if backend == "vulkan":
        request.getfixturevalue("require_vulkan")
    rng = np.random.default_rng(int(headroom * 100))
    segment = 4096
    tiers = [vc.CacheTier("host", 96 << 10, "host"), vc.CacheTier("vram", 32 << 10, "device")]
    model: dict[int, np.ndarray] = {}
    operations = 0
    with vc.BufferCache(tiers, backend=backend, headroom=headroom, segment_size=segment,
                        policy=vc.LruPolicy(2)) as cache:
        for step in range(2500):
            key = int(rng.integers(0, 300))
            choice = rng.random()
            if choice < 0.5:
                size = int(rng.choice([16, 100, 700, 2000, 4000, 9000, 13000]))
                data = payload(key, size, step)
                try:
                    cache.put(key, data)
                    model[key] = data
                except (vc.PinnedError, vc.AllPinnedError):
                    pass
            elif choice < 0.8:
                cache.access(key)
            elif choice < 0.87:
                if key in cache and cache.get(key) is not None:
                    try:
                        cache.remove(key)
                        model.pop(key)
                    except vc.PinnedError:
                        pass
            elif choice < 0.92 and key in cache:
                cache.pin(key)
            elif choice < 0.97:
                pinned = [k for k in cache if cache._engine.pins(k)]
                if pinned:
                    cache.unpin(pinned[int(rng.integers(0, len(pinned)))])
            else:
                cache.demote(key) if key in cache else None
            operations += 1
            for gone in [k for k in model if k not in cache]:
                del model[gone]
            if step % 25 == 0:
                cache.check()
                ranges_do_not_overlap(cache)
                for present, data in model.items():
                    assert cache.read(present).tobytes() == data.tobytes()
            copied = sum(tier["cleaning_bytes"] for tier in cache.counters())
            bound = (1 - headroom) / headroom * cache.puts_bytes + segment * operations
            assert copied <= bound
        cache.check()
        assert sum(tier["cleanings"] for tier in cache.counters()) > 0


def cleaning_per_byte_put(entries: int, rounds: int = 3) -> tuple[float, int]:
    """Fill a tier of `entries` 64-byte entries, then put that many again `rounds` times in a
    random order (exact LRU evicts scattered entries); bytes cleaning copied per byte put, and
    how many entries were put."""
    size = 64
    capacity = entries * size
    rng = np.random.default_rng(entries)
    rows = np.zeros((entries, size), dtype=np.uint8)
    with vc.BufferCache([vc.CacheTier("host", capacity, "host")], backend="host") as cache:
        cache.put_many(np.arange(entries, dtype=np.uint64), rows)
        for round_index in range(rounds):
            keys = rng.permutation(entries).astype(np.uint64) + np.uint64(entries * (round_index + 1))
            # Touch a random half of the resident entries so victims are scattered in memory.
            cache.access_many(rng.permutation(np.array(list(cache), dtype=np.uint64))[: entries // 2])
            cache.put_many(keys, rows)
        cache.reset_counters()
        keys = rng.permutation(entries).astype(np.uint64) + np.uint64(entries * (rounds + 2))
        cache.access_many(rng.permutation(np.array(list(cache), dtype=np.uint64))[: entries // 2])
        cache.put_many(keys, rows)
        cache.check()
        return cache.write_amplification(), entries


@pytest.mark.slow
def test_cleaning_per_put_does_not_grow_with_the_number_of_entries():
    small, _ = cleaning_per_byte_put(1000)
    large, _ = cleaning_per_byte_put(1_000_000, rounds=1)
    headroom = vc.buffer_cache.DEFAULT_HEADROOM
    bound = (1 - headroom) / headroom
    assert small <= bound and large <= bound
    assert large <= small * 1.5 + 0.05, (small, large)
