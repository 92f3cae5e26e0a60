"""``vyrecache replay``, the trace readers and Belady's OPT."""

import bz2
import gzip
import os
from pathlib import Path
import json
import lzma
import signal
import sys
import tempfile
import threading
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from traces_dir import trace_path
from vyrecache._core.belady import belady_hits
from vyrecache._core.key_uses import next_uses, unique_count
from vyrecache.cli import main
from vyrecache.replay import (BATCH, POLICIES, opt_hits, parse_jobs, prefix_usable_hits, replay,
                              replay_grid)
from vyrecache import traces
from vyrecache.traces import Trace, read_trace


def brute_force_opt(keys, capacity):
    """Belady's MIN with bypass by exhaustive search of the next uses, for small traces."""
    cache, hits = set(), 0
    for index, key in enumerate(keys):
        if key in cache:
            hits += 1
            continue

        def next_use(k, index=index):
            return next((i for i in range(index + 1, len(keys)) if keys[i] == k), len(keys))
        if len(cache) < capacity:
            cache.add(key)
            continue
        farthest = max(cache, key=next_use)
        if next_use(farthest) > next_use(key):
            cache.remove(farthest)
            cache.add(key)
    return hits


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(0, 9), max_size=60), capacity=st.integers(1, 6))
def test_opt_is_belady_with_bypass(keys, capacity):
    got = int(belady_hits(np.array(keys, dtype=np.uint64), None, capacity).sum())
    assert got == brute_force_opt(keys, capacity)


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.integers(0, 20), min_size=1, max_size=200), capacity=st.integers(1, 30))
def test_no_policy_beats_opt(keys, capacity):
    from vyrecache.traces import Trace
    trace = Trace("t", "text", np.array(keys, dtype=np.uint64))
    best, exact = opt_hits(trace, capacity)
    assert exact
    for name in ("lru", "fifo", "clock", "sieve", "s3fifo", "arc", "wtinylfu"):
        assert replay(trace, name, capacity).hits <= best


def reference_uses(keys):
    """next_uses as a plain loop with a dict of each key's latest request: the reference."""
    following, previous, latest = [len(keys)] * len(keys), [-1] * len(keys), {}
    for index, key in enumerate(keys):
        if key in latest:
            previous[index] = latest[key]
            following[latest[key]] = index
        latest[key] = index
    return following, previous


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1),
                               st.integers(0, 2**20 - 1).map(lambda k: k << 44)), max_size=3000))
def test_next_uses_and_the_key_count_are_what_a_plain_loop_gives(keys):
    # Up to 3,000 keys: the table (1,024 cells at first) grows while it is filled.  Keys with
    # only their top bits set probe the hash's mixing.
    array = np.array(keys, dtype=np.uint64)
    following, previous = next_uses(array)
    assert (following.tolist(), previous.tolist()) == reference_uses(keys)
    assert unique_count(array) == len(set(keys))


def test_opt_with_byte_sizes_never_overfills_and_counts_hits():
    keys = np.array([1, 2, 1, 3, 1, 2], dtype=np.uint64)
    sizes = np.array([5, 5, 5, 9, 5, 5], dtype=np.uint64)
    assert belady_hits(keys, sizes, 10).tolist() == [False, False, True, False, True, True]
    with pytest.raises(ValueError, match="sizes has 2 entries for 6 keys. Fix:"):
        belady_hits(keys, sizes[:2], 10)


def test_prefix_usable_hits_stop_at_a_request_s_first_miss():
    results = np.array([0, 0, -1, 0, -1, 1, 1, 0], dtype=np.int8)
    starts = np.array([0, 4, 5, 5], dtype=np.int64)      # blocks 0-3, 4, (empty), 5-7
    assert prefix_usable_hits(results, starts) == 2 + 0 + 3


_COMPRESSORS = {None: lambda data: data, "gz": gzip.compress, "xz": lzma.compress,
                "bz2": bz2.compress}


def write(path, text, compress=None):
    path.write_bytes(_COMPRESSORS[compress](text.encode()))
    return path


@pytest.mark.parametrize("compress", [None, "gz", "xz"])
def test_text_lirs_and_csv_traces_read_through_compression(tmp_path, compress):
    suffix = f".{compress}" if compress else ""
    text = write(tmp_path / f"keys.txt{suffix}", "1\n2\nalpha\n1\n", compress)
    assert read_trace(text).keys.tolist()[:2] == [1, 2] and len(read_trace(text)) == 4
    lirs = write(tmp_path / f"lirs_x.trace{suffix}", "5\r\n*\r\n6\r\n5\r\n", compress)
    assert read_trace(lirs).keys.tolist() == [5, 6, 5]
    csv = write(tmp_path / f"t.csv{suffix}", "key,size\n7,100\n8,20\n7,100\n", compress)
    trace = read_trace(csv)
    assert trace.keys.tolist() == [7, 8, 7] and trace.sizes.tolist() == [100, 20, 100]


def test_binary_formats(tmp_path):
    (tmp_path / "a.cache2k").write_bytes(np.array([3, -1, 3], dtype=">i4").tobytes())
    assert read_trace(tmp_path / "a.cache2k", "cache2k").keys.tolist() == [3, 2**32 - 1, 3]
    (tmp_path / "b.scarab").write_bytes(np.array([9, 9], dtype=">i8").tobytes())
    assert read_trace(tmp_path / "b.scarab", "scarab").keys.tolist() == [9, 9]
    records = np.zeros(2, dtype=[("t", "<u4"), ("k", "<u8"), ("s", "<u4"), ("n", "<i8")])
    records["k"], records["s"] = [4, 5], [512, 1024]
    records.tofile(tmp_path / "c.oracleGeneral.bin")
    trace = read_trace(tmp_path / "c.oracleGeneral.bin")
    assert trace.format == "oracle-general" and trace.keys.tolist() == [4, 5]


_BINARY = {"oracle-general": (traces._ORACLE_DTYPE, "t.oracleGeneral.bin"),
           "cache2k": (np.dtype(">u4"), "t.cache2k"), "scarab": (np.dtype(">u8"), "t.scarab")}


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(sorted(_BINARY)), compress=st.sampled_from(list(_COMPRESSORS)),
       raw=st.binary(max_size=24 * 40), per_piece=st.integers(1, 9))
def test_binary_traces_read_in_pieces_give_what_the_whole_file_holds(kind, compress, raw,
                                                                     per_piece):
    assume(compress is not None or traces._compression_of(raw[:10]) is None)
    dtype, name = _BINARY[kind]
    with tempfile.TemporaryDirectory() as scratch, \
            mock.patch.object(traces, "_PIECE_RECORDS", per_piece), \
            mock.patch.object(traces, "_COMPRESSED_PIECE_RECORDS", per_piece):
        path = Path(scratch) / (name + (f".{compress}" if compress else ""))
        path.write_bytes(_COMPRESSORS[compress](raw))
        if len(raw) % dtype.itemsize:
            with pytest.raises(ValueError, match=f"{len(raw)} bytes.*not a whole number of "
                                                 f"{dtype.itemsize}-byte .*Fix:"):
                read_trace(path)
            return
        trace = read_trace(path)
    records = np.frombuffer(raw, dtype=dtype)
    expected = records["key"] if kind == "oracle-general" else records
    assert trace.format == kind and trace.keys.dtype == np.uint64
    assert trace.keys.tolist() == expected.astype(np.uint64).tolist()
    if kind == "oracle-general":
        assert trace.sizes.tolist() == records["size"].astype(np.uint64).tolist()


def test_a_plain_trace_whose_first_key_spells_part_of_a_header_is_read_plain(tmp_path):
    # "BZh9" and 1f 8b are where bzip2 and gzip files start; a whole header is longer.
    for first in (b"BZh9", b"\x1f\x8b\x00\x00"):
        keys = np.frombuffer(first + b"\x00\x00\x00\x07", dtype=">u4")
        (tmp_path / "k.cache2k").write_bytes(keys.tobytes())
        assert read_trace(tmp_path / "k.cache2k").keys.tolist() == keys.tolist()


def test_zstd_traces_read_with_zstandard_and_say_how_to_fix_without_it(tmp_path):
    import zstandard
    keys = np.array([5, 2**40, 5], dtype=">u8")
    path = tmp_path / "k.scarab.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(keys.tobytes()))
    assert read_trace(path).keys.tolist() == keys.tolist()
    (tmp_path / "t.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"7\n8\n7\n"))
    assert read_trace(tmp_path / "t.txt.zst").keys.tolist() == [7, 8, 7]
    with mock.patch.dict(sys.modules, {"zstandard": None}):
        with pytest.raises(ValueError, match="zstandard package is not installed. Fix: pip "
                                             "install zstandard"):
            read_trace(path)


def _peak_bytes_reading(path):
    tracemalloc.start()
    try:
        read_trace(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_binary_trace_holds_its_columns_and_a_piece_not_the_file(tmp_path):
    n = 1_000_000
    records = np.zeros(n, dtype=traces._ORACLE_DTYPE)
    records["key"] = np.arange(n) % 5000
    records["size"] = 4096
    plain = tmp_path / "big.oracleGeneral.bin"
    records.tofile(plain)
    packed = tmp_path / "big.oracleGeneral.bin.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), 1))
    columns = 16 * n                    # keys and sizes, 8 bytes each a record
    # Reading whole files held 40 bytes a record and the compressed file.
    assert _peak_bytes_reading(plain) < columns + 24 * traces._PIECE_RECORDS + 2**20
    assert _peak_bytes_reading(packed) < 1.5 * columns + 2**22


def test_a_binary_trace_that_changes_while_it_is_read_is_refused(tmp_path):
    path = tmp_path / "c.oracleGeneral.bin"
    np.zeros(3, dtype=traces._ORACLE_DTYPE).tofile(path)
    real_fstat = os.fstat

    def longer(fd):
        result = real_fstat(fd)
        return os.stat_result((*result[:6], result.st_size + 24, *result[7:]))
    with mock.patch.object(traces.os, "fstat", longer):
        with pytest.raises(ValueError, match="changed while it was read.*Fix:"):
            read_trace(path)


def test_mooncake_blocks_and_request_starts(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"hash_ids": [1, 2, 3]}\n{"hash_ids": [1, 2, 4]}\n')
    trace = read_trace(path)
    assert trace.keys.tolist() == [1, 2, 3, 1, 2, 4] and trace.request_starts.tolist() == [0, 3]


@pytest.mark.parametrize("args, words", [
    (["--policy", "lfu"], "unknown policy 'lfu'"),
    (["--size", "0"], "invalid cache size '0'"),
    (["--size", "ten"], "invalid cache size 'ten'"),
    (["--tiers", "50%,20%"], "add up to 70%"),
    (["--tiers", "80,20"], "invalid tier share '80'"),
    (["--format", "csv"], "not an integer"),
    (["--jobs", "0"], "invalid jobs value 0"),
])
def test_bad_arguments_name_the_value_and_the_fix(tmp_path, capsys, args, words):
    path = write(tmp_path / "t.txt", "1\n2\n1\n")
    if args[0] == "--format":
        path = write(tmp_path / "t.csv", "1,big\n")
    assert main(["replay", str(path), *args]) != 0
    err = capsys.readouterr().err
    assert words in err and "Fix:" in err


def test_missing_and_malformed_files_say_how_to_fix(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nothing.txt")]) == 1
    assert "does not exist. Fix:" in capsys.readouterr().err
    write(tmp_path / "bad.jsonl", "not json\n")
    assert main(["replay", str(tmp_path / "bad.jsonl")]) == 1
    assert "not a Mooncake record" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = capsys.readouterr().out
    for option in ("--format", "--policy", "--size", "--sizes", "--tiers", "--plot", "--jobs",
                   "--json"):
        assert option in out


def test_json_replay_with_tiers_of_a_text_trace(tmp_path, capsys):
    rng = np.random.default_rng(0)
    keys = rng.zipf(1.3, 5000) % 500
    path = write(tmp_path / "z.txt", "\n".join(map(str, keys)) + "\n")
    assert main(["replay", str(path), "--policy", "lru,arc,wtinylfu", "--size", "5%,50",
                 "--tiers", "75%,25%", "--json"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["requests"] == 5000 and [s["capacity"] for s in report["sizes"]][1] == 50
    for size in report["sizes"]:
        assert [p["policy"] for p in size["policies"]] == ["lru", "arc", "wtinylfu"]
        for result in size["policies"]:
            assert result["hits"] <= size["opt_hits"] and size["opt_exact"]
            assert sum(result["tier_hits"]) == result["hits"]


def test_csv_with_sizes_replays_bytes_and_labels_opt_a_bound(tmp_path, capsys):
    rows = "\n".join(f"{k % 40},{(k % 7 + 1) * 100}" for k in range(2000))
    path = write(tmp_path / "s.csv", "key,size\n" + rows + "\n")
    assert main(["replay", str(path), "--policy", "lru,sieve", "--size", "2000"]) == 0
    out = capsys.readouterr().out
    assert "byte sizes" in out and "OPT>=" in out


def test_sizes_choose_bytes_or_units_and_say_when_a_trace_has_none(tmp_path, capsys):
    records = np.zeros(3000, dtype=[("time", "<u4"), ("key", "<u8"), ("size", "<u4"),
                                    ("next", "<i8")])
    records["key"] = np.arange(3000) % 50
    records["size"] = (records["key"] % 5 + 1) * 1000
    path = tmp_path / "s.oracleGeneral.bin"
    records.tofile(path)
    reports = {}
    for sizes in ("auto", "bytes", "unit"):
        assert main(["replay", str(path), "--policy", "lru,s3fifo", "--size", "30%",
                     "--sizes", sizes, "--json"]) == 0
        [reports[sizes]] = json.loads(capsys.readouterr().out)
    assert not reports["auto"]["byte_sizes"] and not reports["unit"]["byte_sizes"]
    assert reports["bytes"]["byte_sizes"]
    # 30% of the bytes the 50 keys hold (150,000), against 30% of the 50 keys.
    assert [s["capacity"] for s in reports["bytes"]["sizes"]] == [45_000]
    assert [s["capacity"] for s in reports["unit"]["sizes"]] == [15]
    assert not reports["bytes"]["sizes"][0]["opt_exact"]
    csv = write(tmp_path / "s.csv", "key,size\n" + "".join(f"{k % 9},{k % 4 + 1}\n" for k in range(90)))
    assert main(["replay", str(csv), "--sizes", "unit", "--policy", "lru"]) == 0
    assert "unit sizes" in capsys.readouterr().out
    lirs = write(tmp_path / "t.txt", "1\n2\n1\n")
    assert main(["replay", str(lirs), "--sizes", "bytes"]) == 2
    err = capsys.readouterr().err
    assert "has no sizes. Fix:" in err and "t.txt" in err


def test_plot_draws_a_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = write(tmp_path / "z.txt", "\n".join(str(k % 97) for k in range(3000)) + "\n")
    out = tmp_path / "plot.png"
    assert main(["replay", str(path), "--policy", "lru,s3fifo", "--plot", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_mooncake_trace_reports_prefix_usable_hits(capsys):
    path = trace_path("mooncake_synthetic_trace.jsonl")
    assert main(["replay", str(path), "--policy", "lru,s3fifo", "--size", "10%"]) == 0
    out = capsys.readouterr().out
    assert "121,877 requests" in out and "prefix-usable hit ratio" in out


def test_replay_matches_the_cache_it_drives():
    path = trace_path("lirs_sprite.trace.gz")
    trace = read_trace(path)
    result = replay(trace, "sieve", 707)
    assert result.hits == 109234        # libCacheSim's Sieve on the same keys and size


def zipf_trace(requests, seed=0, starts=False):
    keys = (np.random.default_rng(seed).zipf(1.2, requests) % 20_000).astype(np.uint64)
    request_starts = np.arange(0, requests, 7, dtype=np.int64) if starts else None
    return Trace("zipf", "text", keys, request_starts=request_starts)


def replay_threads():
    return [thread for thread in threading.enumerate()
            if thread.name.startswith("vyrecache-replay")]


def test_a_grid_on_threads_gives_each_replay_s_own_results_in_order():
    trace = zipf_trace(150_000, starts=True)
    capacities = [50, 2_000, 9_000]
    names = list(POLICIES)
    alone = [[replay(trace, name, capacity, [0.7, 0.3]) for name in names]
             for capacity in capacities]
    for jobs in (1, 3):
        grid = replay_grid(trace, names, capacities, tiers=[0.7, 0.3], jobs=jobs)
        assert [point.capacity for point in grid] == capacities
        for point, expected in zip(grid, alone):
            assert (point.opt_hits, point.opt_exact) == opt_hits(trace, point.capacity)
            assert point.opt_hit_ratio == point.opt_hits / len(trace)
            assert [(r.policy, r.hits, r.tier_hits, r.prefix_hits) for r in point.results] == [
                (r.policy, r.hits, r.tier_hits, r.prefix_hits) for r in expected]
    assert not replay_threads()


def test_a_failing_replay_stops_the_whole_grid_and_raises_its_error():
    trace = zipf_trace(20 * BATCH)
    calls = []

    def progress(count):
        calls.append(count)
        if len(calls) == 3:
            raise RuntimeError("progress sink failed")
    with pytest.raises(RuntimeError, match="progress sink failed"):
        replay_grid(trace, list(POLICIES), [100, 1_000], jobs=2, progress=progress)
    assert not replay_threads()
    # Every replay stopped at its next batch: far fewer than the grid's 14 * 20 batches ran.
    assert len(calls) < 3 + 2 * 2


def test_ctrl_c_during_a_grid_stops_every_replay_and_leaves_no_thread():
    trace = zipf_trace(20 * BATCH)
    calls = []
    main_thread = threading.main_thread().ident

    def progress(count):
        calls.append(count)
        if len(calls) == 2:     # a real SIGINT, at the thread that waits for the grid
            signal.pthread_kill(main_thread, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        replay_grid(trace, list(POLICIES), [100, 1_000], jobs=2, progress=progress)
    assert not replay_threads()
    assert sum(calls) < 14 * len(trace) // 2


def test_a_grid_of_no_policies_or_no_sizes_still_gives_opt_or_nothing():
    trace = zipf_trace(5_000)
    [point] = replay_grid(trace, [], [300], jobs=2)
    assert (point.capacity, point.requests, point.results) == (300, 5_000, [])
    assert point.opt_hit_ratio == opt_hits(trace, 300)[0] / 5_000
    assert replay_grid(trace, list(POLICIES), [], jobs=2) == []


@pytest.mark.parametrize("policies, capacities, words", [
    (["lru", "lfu"], [10], "unknown policy 'lfu'"), (["all"], [10], "unknown policy 'all'"),
    ([3], [10], "unknown policy 3"), (["lru"], [10, 0], "invalid cache size 0"),
    (["lru"], [2.5], "invalid cache size 2.5"),
])
def test_a_bad_grid_is_refused_before_any_replay_starts(policies, capacities, words):
    calls = []
    with pytest.raises(ValueError, match=rf"{words}.*Fix:"):
        replay_grid(zipf_trace(1_000), policies, capacities, jobs=2, progress=calls.append)
    assert calls == [] and not replay_threads()


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True, "2"])
def test_bad_jobs_name_the_value_and_the_fix(jobs):
    with pytest.raises(ValueError, match=rf"invalid jobs value {jobs!r}.*Fix:"):
        parse_jobs(jobs)
    with pytest.raises(ValueError, match="invalid jobs value"):
        replay_grid(zipf_trace(100), ["lru"], [10], jobs=jobs)


def test_the_command_gives_the_same_table_on_any_number_of_threads(tmp_path, capsys):
    keys = np.random.default_rng(1).zipf(1.3, 30_000) % 3_000
    path = write(tmp_path / "z.txt", "\n".join(map(str, keys)) + "\n")
    outputs = []
    for jobs in ("1", "2"):
        assert main(["replay", str(path), "--jobs", jobs, "--json"]) == 0
        [report] = json.loads(capsys.readouterr().out)
        for size in report["sizes"]:
            for result in size["policies"]:
                del result["seconds"]
        outputs.append(report)
    assert outputs[0] == outputs[1]


def test_opt_with_the_next_uses_of_other_keys_says_how_to_fix():
    keys = np.array([1, 2, 1, 3, 2], dtype=np.uint64)
    assert belady_hits(keys, None, 2, next_uses(keys)).tolist() == belady_hits(keys, None, 2).tolist()
    with pytest.raises(ValueError, match=r"uses holds next and previous uses of 4 .*Fix:"):
        belady_hits(keys, None, 2, next_uses(keys[:-1]))


def text_keys_or_error(reader, data, skip_star):
    try:
        return reader(Path("t.txt"), data, skip_star).tolist()
    except ValueError as error:
        return str(error)


line_text = st.one_of(
    st.integers(0, 2**64 + 5).map(str), st.integers(-5, -1).map(str),
    st.sampled_from(["*", " * ", "", "\r", "007", "12\r34", "1*2", "1 2", " 8", "a", "ä", "9\t"]))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(line_text, max_size=12), ending=st.sampled_from(["\n", "\r\n"]),
       last=st.booleans(), skip_star=st.booleans())
def test_the_fast_text_reader_reads_every_file_as_the_line_reader_does(lines, ending, last,
                                                                       skip_star):
    from vyrecache import traces
    data = (ending.join(lines) + (ending if last else "")).encode()
    assert (text_keys_or_error(traces._text_keys, data, skip_star)
            == text_keys_or_error(traces._text_keys_by_line, data, skip_star))


@pytest.mark.parametrize("text, fast", [
    ("0\r\n1\r\n*\r\n2\r\n", True), ("5\n\n7\n", True), (f"{2**64 - 2}\n", True),
    (f"{2**64 - 1}\n", False), (f"{2**64}\n", False), ("1 2\n", False), ("12\r34\n", False),
    ("1*2\n", False), ("-3\n", False), ("", False), ("\r\n\n", False),
])
def test_which_files_the_fast_text_reader_takes(text, fast):
    from vyrecache import traces
    assert (traces._plain_decimal_keys(text.encode(), True) is not None) == fast
