"""The block sub-allocator against a plain model: a list of occupied ranges."""

import pytest
from hypothesis import given, settings, strategies as st

from helpers import round_up
from vyrecache.errors import CacheError
from vyrecache._core.allocator import Allocator


def test_first_fit_reuses_the_lowest_hole():
    block = Allocator(1024, 16)
    a, b, c = block.alloc(100), block.alloc(100), block.alloc(100)
    assert (a, b, c) == (0, 112, 224)
    block.free(a, 100)
    assert block.alloc(50) == 0


def test_frees_coalesce_into_one_range():
    block = Allocator(4096, 64)
    offsets = [block.alloc(64) for _ in range(10)]
    for offset in offsets[::2] + offsets[1::2]:
        block.free(offset, 64)
    assert block.free_ranges() == [(0, 4096)]
    block.check()


def test_zero_byte_request_takes_no_space():
    block = Allocator(64, 16)
    assert block.alloc(0) == 0
    assert block.free_bytes == 64


def test_full_block_reports_none():
    block = Allocator(64, 16)
    assert block.alloc(64) == 0
    assert block.alloc(1) is None


@pytest.mark.parametrize("offset,size", [(0, 16), (8, 16), (1024, 16), (32, 64)])
def test_bad_free_raises_and_changes_nothing(offset, size):
    block = Allocator(1024, 16)
    block.alloc(32)
    before = block.free_ranges()
    with pytest.raises(CacheError, match="Fix:"):
        block.free(offset, size) if offset != 0 else (block.free(0, 32), block.free(0, 16))
    if offset != 0:
        assert block.free_ranges() == before


def test_bad_alignment_is_explained():
    with pytest.raises(ValueError, match="power of two"):
        Allocator(1024, 24)
    with pytest.raises(ValueError, match="multiple of the alignment"):
        Allocator(1000, 16)


def test_reset_replaces_and_merges_the_free_list():
    block = Allocator(1024, 16)
    block.reset([(0, 16), (16, 32), (512, 512)])
    assert block.free_ranges() == [(0, 48), (512, 512)]
    with pytest.raises(ValueError, match="Fix:"):
        block.reset([(32, 16), (0, 16)])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([16, 64, 256]),
       st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=120))
def test_random_alloc_free_matches_a_model(alignment, operations):
    size = round_up(16384, alignment)
    block = Allocator(size, alignment)
    live = {}  # offset -> charged length
    for is_alloc, amount in operations:
        if is_alloc or not live:
            offset = block.alloc(amount)
            need = round_up(amount, alignment)
            if offset is None:
                # First fit fails only when no hole is large enough.
                assert block.largest_free < need
                continue
            if need == 0:
                continue
            assert offset % alignment == 0 and offset + need <= size
            for other, length in live.items():
                assert offset + need <= other or other + length <= offset, "ranges overlap"
            live[offset] = need
        else:
            offset = sorted(live)[amount % len(live)]
            block.free(offset, live.pop(offset))
        block.check()
        assert block.free_bytes == size - sum(live.values())
