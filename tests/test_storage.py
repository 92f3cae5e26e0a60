"""The storage layer (`_core/storage.pyx`) on its own: the layout of a tier and its counters."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

import vyrecache as vc
from vyrecache._core.storage import STORAGE_COUNTER_NAMES, tier_layout
from vyrecache.counters import STORAGE_COUNTERS

ALIGNMENTS = st.sampled_from([1, 16, 64, 256, 4096])


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(0, 1 << 34), headroom=st.floats(0.05, 0.9), segment_size=st.integers(1, 1 << 24),
       alignment=ALIGNMENTS, max_block=st.integers(1 << 12, 1 << 32))
def test_a_tier_layout_holds_its_capacity_within_the_headroom_plus_a_reserve(capacity, headroom, segment_size,
                                                                              alignment, max_block):
    seg, segments, per_block = tier_layout(capacity, headroom, segment_size, alignment, max_block)
    assert seg % alignment == 0 and seg >= alignment
    assert seg <= max(alignment, math.ceil(segment_size / alignment) * alignment)
    assert seg <= max(alignment, max_block // alignment * alignment)
    assert segments >= 2                                # one usable segment at least, and the reserve
    assert (segments - 1) * seg * (1.0 - headroom) >= capacity * (1 - 1e-12)
    assert per_block >= 1 and (per_block * seg <= max_block or per_block == 1)


@given(capacity=st.integers(1 << 16, 1 << 30), headroom=st.floats(0.05, 0.5))
def test_a_small_tier_gets_smaller_segments_rather_than_fewer(capacity, headroom):
    seg, segments, _ = tier_layout(capacity, headroom, 1 << 40, 1, 1 << 40)
    assert segments - 1 >= 16
    assert seg <= math.ceil(capacity / (1.0 - headroom)) // 16 + 1


def test_the_storage_counters_are_the_declared_ones_in_order():
    assert STORAGE_COUNTER_NAMES == STORAGE_COUNTERS
    with vc.BufferCache([vc.CacheTier("host", 1 << 20, "host"), vc.CacheTier("fast", 1 << 18, "host")],
                        backend="host") as cache:
        for counters in cache.counters():
            storage = [name for name in counters if name in STORAGE_COUNTERS]
            assert storage == list(STORAGE_COUNTERS)
