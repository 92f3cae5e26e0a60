"""Helpers the tests share: caches to test, payloads to store, the rounding the caches charge."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

import vyrecache as vc


def make(*capacities: int, **options) -> vc.TieredCache:
    """A TieredCache with one tier per capacity, named t0, t1, ... (slowest first)."""
    return vc.TieredCache([vc.CacheTier(f"t{i}", c) for i, c in enumerate(capacities)], **options)


def heat(cache, key: int, times: int = vc.LruPolicy.DEFAULT_THRESHOLD) -> None:
    """Record enough accesses of `key` to reach the default promotion threshold."""
    for _ in range(times):
        cache.record_access(key)


def heat_and_promote(cache, key: int, times: int = vc.LruPolicy.DEFAULT_THRESHOLD) -> None:
    """heat() `key`, then promote it one tier up."""
    heat(cache, key, times)
    cache.promote(key)


def round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def payload_array(key: int, size: int, version: int = 0) -> np.ndarray:
    """Bytes that differ per key, size and version, so a misplaced entry cannot read back right."""
    return np.random.default_rng(key * 7919 + size * 31 + version).integers(0, 256, size, dtype=np.uint8)


def payload(key: int, size: int, version: int = 0) -> bytes:
    """payload_array() as bytes."""
    return payload_array(key, size, version).tobytes()


@contextmanager
def closing_caches(factory):
    """`factory` wrapped so that every cache it makes is closed when the block ends (a fixture's
    teardown)."""
    made = []

    def build(*args, **options):
        cache = factory(*args, **options)
        made.append(cache)
        return cache

    try:
        yield build
    finally:
        for cache in made:
            cache.close()
