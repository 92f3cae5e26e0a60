"""Every native policy against libCacheSim on the shared real traces, one tier, unit sizes.

LRU, FIFO, CLOCK, SIEVE and ARC must give exactly libCacheSim's hit counts at 1%, 10% and 30%
of each trace's unique keys; S3-FIFO within 0.1 percentage points.  libCacheSim replays a
derived oracleGeneral file of the same keys through its own C loop (process_trace).
"""

import numpy as np
import pytest

import vyrecache as vc
from traces_dir import require_module, trace_path
from vyrecache.traces import read_trace

FRACTIONS = (0.01, 0.1, 0.3)
FAST_TRACES = ["lirs_cs.trace.gz", "lirs_gli.trace.gz", "lirs_multi2.trace.gz",
               "lirs_sprite.trace.gz", "lirs_loop.trace.gz", "cache2k_web12.trace.xz",
               "cloudphysics_io.oracleGeneral.bin", "mooncake_synthetic_trace.jsonl"]
SLOW_TRACES = ["scarab_recs.trace.xz", "mooncake_conversation_trace.jsonl"]
EXACT = [("lru", vc.LruPolicy, "LRU"), ("fifo", vc.FifoPolicy, "FIFO"),
         ("clock", vc.ClockPolicy, "Clock"), ("sieve", vc.SievePolicy, "Sieve"),
         ("arc", vc.ArcPolicy, "ARC")]
_ORACLE = np.dtype([("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])


def our_hits(policy, keys, size):
    cache = vc.TieredCache([vc.CacheTier("only", size)], policy=policy)
    hits = int((cache.access_many(keys, 1) >= 0).sum())
    cache.check()
    return hits


def their_hits(lcs, make, oracle_file, n_requests, size):
    cache = make(cache_size=size, hashpower=max(10, int(size).bit_length() + 1))
    reader = lcs.TraceReader(str(oracle_file), lcs.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = cache.process_trace(reader)
    return n_requests - round(miss_ratio * n_requests)


def compare(name, tmp_path):
    lcs = require_module("libcachesim")
    trace = read_trace(trace_path(name))
    records = np.zeros(len(trace), dtype=_ORACLE)
    records["key"] = trace.keys
    records["size"] = 1                 # unit sizes: one key = one block, page or object
    records["time"] = np.arange(len(trace), dtype=np.uint32)
    records["next"] = -1
    oracle_file = tmp_path / "keys.oracleGeneral.bin"
    records.tofile(oracle_file)
    unique = trace.unique_keys
    for fraction in FRACTIONS:
        size = max(1, int(unique * fraction))
        for label, policy, theirs in EXACT:
            ours = our_hits(policy(), trace.keys, size)
            expected = their_hits(lcs, getattr(lcs, theirs), oracle_file, len(trace), size)
            assert ours == expected, f"{label} on {name} at {size} entries"
        # libCacheSim's S3-FIFO stores nothing that is not a ghost hit when an object is as
        # large as the small FIFO (int(0.1 * size) <= 1 block here), so it never hits; ours
        # puts such an entry in main instead.  The comparison starts where small holds two.
        if int(size * 0.1) >= 2:
            ours = our_hits(vc.S3FifoPolicy(), trace.keys, size)
            expected = their_hits(lcs, lcs.S3FIFO, oracle_file, len(trace), size)
            assert abs(ours - expected) / len(trace) <= 0.001, (
                f"S3-FIFO on {name} at {size} entries: {ours} hits, libCacheSim {expected}")


@pytest.mark.parametrize("name", FAST_TRACES)
def test_hit_counts_match_libcachesim(name, tmp_path):
    compare(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_TRACES)
def test_hit_counts_match_libcachesim_on_large_traces(name, tmp_path):
    compare(name, tmp_path)
