"""Side-by-side benchmark of the engine's eviction policies, in one process.

1. Cost: every policy's access_many() per key and access() per call on bench_core's workload
   (Zipf(0.99) over 100,000 keys, 1,000,000 accesses, tiers of 10,000 + 2,000 entries), as a
   ratio to LRU's (floors: access_many at most 1.5x LRU, access() at most 1.3x).
2. Replay speed: ``vyrecache.replay`` against libCacheSim's ``process_trace`` on the same
   oracleGeneral file and policy, end to end from the file (floor: at least 5x faster).
3. Hit ratios: every policy and Belady's OPT at 1%, 10% and 30% of the unique keys of every
   shared trace, and how close adaptive W-TinyLFU gets to the best other policy at each point.
4. A replay grid (every policy and OPT at 1%, 10% and 30%, as ``vyrecache replay`` runs it) one
   replay after another as the command used to, and with ``replay_grid`` on one thread and on
   every CPU, in wall time.
5. Reading the text traces: the C parser of plain decimal lines against the line-by-line reader
   it stands in front of, on the same decompressed bytes; and the binary traces, read a piece at
   a time, against the whole file read and decompressed first (time and peak memory).
6. What a replay computes once a trace: its distinct keys and OPT's next uses, by one pass with a
   hash table against sorting the trace.

``--lru-baseline DIR`` also times LRU on the engine extension found in DIR (a build of an
earlier commit) against this one, interleaved, to show that the LRU path did not slow down.
Run: ``python benchmarks/bench_policies.py [--quick] [--traces DIR]``.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.machinery
import importlib.util
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

import vyrecache as vc
from vyrecache._core import engine as current_engine
from vyrecache._core.key_uses import next_uses, unique_count
from vyrecache.replay import available_cpus, opt_hits, replay, replay_grid
from vyrecache.traces import detect_format, read_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import TIER0, TIER1, cpu_model, zipf_trace  # noqa: E402
from harness import (CLOCKS, WALL_TIME, add_clock_argument, add_json_argument,  # noqa: E402
                     interleaved_best, write_json)

POLICIES = [vc.LruPolicy, vc.FifoPolicy, vc.ClockPolicy, vc.SievePolicy, vc.S3FifoPolicy,
            vc.ArcPolicy, vc.WTinyLfuPolicy]
TRACES = ["lirs_cs.trace.gz", "lirs_gli.trace.gz", "lirs_multi2.trace.gz", "lirs_sprite.trace.gz",
          "lirs_loop.trace.gz", "cache2k_web12.trace.xz", "cloudphysics_io.oracleGeneral.bin",
          "scarab_recs.trace.xz", "mooncake_conversation_trace.jsonl",
          "mooncake_synthetic_trace.jsonl"]
LIBCACHESIM = {"lru": "LRU", "fifo": "FIFO", "clock": "Clock", "sieve": "Sieve",
               "s3fifo": "S3FIFO", "arc": "ARC", "wtinylfu": "WTinyLFU"}
_ORACLE = np.dtype([("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])


def new_cache(policy, engine=None):
    tiers = [vc.CacheTier("host", TIER0), vc.CacheTier("vram", TIER1)]
    if engine is None:
        return vc.TieredCache(tiers, policy=policy)
    return engine.Engine(tiers, policy=policy)


def cost_runs(trace, trace_list, policy, engine=None):
    def per_call():
        access = new_cache(policy, engine).access
        for key in trace_list:
            access(key, 1)

    def batch():
        new_cache(policy, engine).access_many(trace, 1)
    return per_call, batch


def policy_costs(trace, repeat, clock):
    trace_list = trace.tolist()
    runs = []
    for policy in POLICIES:
        runs += cost_runs(trace, trace_list, policy())
    seconds = interleaved_best(runs, repeat, clock)
    n = trace.size
    lru_call, lru_batch = seconds[0] / n * 1e9, seconds[1] / n * 1e9
    print(f"{'policy':10} {'access() ns':>12} {'/ LRU':>7} {'access_many ns/key':>19} {'/ LRU':>7}"
          f" {'hit ratio':>10}")
    worst = [0.0, 0.0]
    rows = []
    for index, policy in enumerate(POLICIES):
        call, batch = seconds[2 * index] / n * 1e9, seconds[2 * index + 1] / n * 1e9
        cache = new_cache(policy())
        ratio = float((cache.access_many(trace, 1) >= 0).mean())
        worst = [max(worst[0], call / lru_call), max(worst[1], batch / lru_batch)]
        print(f"{policy.name:10} {call:12.1f} {call / lru_call:6.2f}x {batch:19.1f} "
              f"{batch / lru_batch:6.2f}x {ratio:10.3f}")
        rows.append([policy.name, f"{call:.1f}", f"{call / lru_call:.2f}x", f"{batch:.1f}",
                     f"{batch / lru_batch:.2f}x", f"{ratio:.3f}"])
    print(f"worst: access() {worst[0]:.2f}x LRU (floor 1.3x), access_many {worst[1]:.2f}x LRU "
          f"(floor 1.5x)\n")
    return {"policies-cost": {"columns": ["policy", "`access()` ns", "/ LRU", "`access_many()` ns/key",
                                          "/ LRU", "hit ratio"], "rows": rows}}


def load_engine(directory: Path):
    """The engine extension module built in `directory`, under a name of its own."""
    found = sorted((directory / "vyrecache" / "_core").glob("engine.*.so"))
    if not found:
        raise SystemExit(f"no engine extension under {directory}/vyrecache/_core. Fix: build "
                         f"it there with `VYRECACHE_ONLY=engine python setup.py build_ext "
                         f"--inplace`.")
    loader = importlib.machinery.ExtensionFileLoader("baseline.engine", str(found[0]))
    spec = importlib.util.spec_from_file_location("baseline.engine", found[0], loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def lru_against_baseline(trace, repeat, directory, clock):
    baseline = load_engine(directory)
    trace_list = trace.tolist()
    runs = list(cost_runs(trace, trace_list, vc.LruPolicy(), baseline))
    runs += cost_runs(trace, trace_list, vc.LruPolicy(), current_engine)
    seconds = interleaved_best(runs, repeat, clock)
    n = trace.size
    print(f"LRU against the engine in {directory} (interleaved, best of {repeat}):")
    for label, before, after in (("access() per call", seconds[0], seconds[2]),
                                 ("access_many() per key", seconds[1], seconds[3])):
        print(f"  {label:22} before {before / n * 1e9:6.1f} ns  after {after / n * 1e9:6.1f} ns"
              f"  ({after / before:.3f}x)")
    print()


def present_traces(traces_dir: Path, names: list[str]):
    """(name, path) of each named trace that traces_dir holds; an absent one is said so."""
    for name in names:
        path = traces_dir / name
        if path.is_file():
            yield name, path
        else:
            print(f"{name:36} (absent)")


def replay_speed(traces_dir: Path, repeat: int, clock):
    try:
        import libcachesim as lcs
    except ImportError:
        print("replay against libCacheSim: skipped (pip install libcachesim)\n")
        return {}
    trace = read_trace(traces_dir / "cloudphysics_io.oracleGeneral.bin")
    records = np.zeros(len(trace), dtype=_ORACLE)
    records["key"], records["size"] = trace.keys, 1
    records["time"], records["next"] = np.arange(len(trace)), -1
    size = max(1, trace.unique_keys // 10)
    print(f"replay speed: cloudphysics keys with unit sizes ({len(trace):,} requests, cache of "
          f"{size:,}), end to end from the same oracleGeneral file, best of {repeat}")
    print(f"{'policy':10} {'vyrecache ms':>13} {'libCacheSim ms':>15} {'speed-up':>9}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "unit.oracleGeneral.bin"
        records.tofile(path)
        for policy in POLICIES:
            name = policy.name
            theirs = getattr(lcs, LIBCACHESIM[name])

            def ours(name=name):
                replay(read_trace(path), name, size)

            def libcachesim(theirs=theirs):
                reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
                theirs(cache_size=size, hashpower=16).process_trace(reader)
            ours_s, theirs_s = interleaved_best([ours, libcachesim], repeat, clock)
            print(f"{name:10} {ours_s * 1e3:13.1f} {theirs_s * 1e3:15.1f} "
                  f"{theirs_s / ours_s:8.1f}x")
            rows.append([name, f"{ours_s * 1e3:.1f} ms", f"{theirs_s * 1e3:.1f} ms",
                         f"{theirs_s / ours_s:.1f}x"])
    print("floor: at least 5x faster\n")
    return {"policies-replay": {"columns": ["policy", "vyrecache", "libCacheSim", "speed-up"],
                                "rows": rows}}


GRID_TRACES = ["scarab_recs.trace.xz", "mooncake_conversation_trace.jsonl"]


def replay_grid_speed(traces_dir: Path, repeat: int):
    names = [policy.name for policy in POLICIES]
    cpus = available_cpus()
    print(f"replay grid: {len(names)} policies and OPT at 1%, 10% and 30% of the unique keys, "
          f"wall time, best of {repeat}, {cpus} CPUs")
    print(f"{'trace':36} {'one by one':>11} {'grid, 1 thread':>15} {f'grid, {cpus} threads':>17}"
          f" {'speed-up':>9}")
    rows = []
    for name, path in present_traces(traces_dir, GRID_TRACES):
        trace = read_trace(path)
        sizes = [max(1, int(trace.unique_keys * fraction)) for fraction in (0.01, 0.1, 0.3)]

        def one_by_one(trace=trace, sizes=sizes):
            for size in sizes:
                opt_hits(trace, size)
                for policy in names:
                    replay(trace, policy, size)

        def grid(jobs, trace=trace, sizes=sizes):
            return lambda: replay_grid(trace, names, sizes, jobs=jobs)
        sequential, single, threaded = interleaved_best([one_by_one, grid(1), grid(cpus)], repeat,
                                                        WALL_TIME)
        print(f"{name[:36]:36} {sequential * 1e3:8.0f} ms {single * 1e3:12.0f} ms "
              f"{threaded * 1e3:14.0f} ms {sequential / threaded:8.2f}x")
        rows.append([name, f"{len(trace):,}", f"{sequential * 1e3:.0f} ms", f"{single * 1e3:.0f} ms",
                     f"{threaded * 1e3:.0f} ms", f"{sequential / threaded:.2f}x"])
    print()
    return {"policies-grid": {"columns": ["trace", "requests", "one by one", "grid, 1 thread",
                                          f"grid, {cpus} threads", "speed-up"], "rows": rows}}


TEXT_TRACES = ["lirs_loop.trace.gz", "lirs_sprite.trace.gz", "lirs_multi2.trace.gz"]


def trace_reading_speed(traces_dir: Path, repeat: int, clock):
    from vyrecache import traces
    print(f"reading text traces, the same decompressed bytes, best of {repeat}")
    print(f"{'trace':36} {'requests':>9} {'line by line':>13} {'plain decimal':>14} {'speed-up':>9}")
    rows = []
    for name, path in present_traces(traces_dir, TEXT_TRACES):
        data = traces._open_bytes(path)
        fast = traces._plain_decimal_keys(data, True)
        if fast is None:
            raise SystemExit(f"{name} is not plain decimal lines; the fast reader declined it")

        def by_line(data=data, path=path):
            traces._text_keys_by_line(path, data, True)

        def plain(data=data):
            traces._plain_decimal_keys(data, True)
        slow_s, fast_s = interleaved_best([by_line, plain], repeat, clock)
        print(f"{name:36} {fast.size:9,} {slow_s * 1e3:10.1f} ms {fast_s * 1e3:11.1f} ms "
              f"{slow_s / fast_s:8.1f}x")
        rows.append([name, f"{fast.size:,}", f"{slow_s * 1e3:.1f} ms", f"{fast_s * 1e3:.1f} ms",
                     f"{slow_s / fast_s:.1f}x"])
    print()
    return {"policies-trace-reading": {"columns": ["trace", "requests", "line by line",
                                                   "plain decimal", "speed-up"], "rows": rows}}


def _whole_file_columns(path: Path, kind: str):
    """The binary reader before piecewise reading, the peer: the whole file decompressed, then
    its columns."""
    from vyrecache import traces
    data = traces._open_bytes(path)
    if kind == "oracle-general":
        records = np.frombuffer(data, dtype=traces._ORACLE_DTYPE)
        return records["key"].copy(), records["size"].astype(np.uint64)
    return np.frombuffer(data, dtype=">u8" if kind == "scarab" else ">u4").astype(np.uint64)


def _peak_megabytes(run) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def binary_reading(traces_dir: Path, repeat: int, clock):
    """read_trace on binary traces against reading the whole file, time and peak memory."""
    rng = np.random.default_rng(3)
    print(f"reading binary traces: read_trace (a piece at a time) against the whole file, best "
          f"of {repeat}; peak memory by tracemalloc")
    print(f"{'trace':40} {'requests':>10} {'whole ms':>9} {'pieces ms':>10} {'time':>6} "
          f"{'whole MiB':>10} {'pieces MiB':>11}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        records = np.zeros(4_000_000, dtype=_ORACLE)
        records["key"] = rng.zipf(1.2, records.size) % (1 << 40)
        records["size"] = rng.integers(1, 1 << 20, records.size)
        synthetic = Path(scratch) / "zipf.oracleGeneral.bin"
        records.tofile(synthetic)
        packed = synthetic.with_name(synthetic.name + ".gz")
        packed.write_bytes(gzip.compress(synthetic.read_bytes(), 6))
        del records
        paths = [(name, path) for name, path in present_traces(traces_dir, [
            "cloudphysics_io.oracleGeneral.bin", "scarab_recs.trace.xz"])]
        paths += [("zipf.oracleGeneral.bin (4M, synthetic)", synthetic),
                  ("zipf.oracleGeneral.bin.gz (4M, synthetic)", packed)]
        for name, path in paths:
            kind = detect_format(path)

            def whole(path=path, kind=kind):
                _whole_file_columns(path, kind)

            def pieces(path=path):
                read_trace(path)
            whole_s, pieces_s = interleaved_best([whole, pieces], repeat, clock)
            whole_mb, pieces_mb = _peak_megabytes(whole), _peak_megabytes(pieces)
            n = len(read_trace(path))
            print(f"{name:40} {n:10,} {whole_s * 1e3:9.1f} {pieces_s * 1e3:10.1f} "
                  f"{pieces_s / whole_s:5.2f}x {whole_mb:10.1f} {pieces_mb:11.1f}")
            rows.append([name, f"{n:,}", f"{whole_s * 1e3:.1f} ms", f"{pieces_s * 1e3:.1f} ms",
                         f"{pieces_s / whole_s:.2f}x", f"{whole_mb:.1f} MiB",
                         f"{pieces_mb:.1f} MiB"])
    print()
    return {"policies-binary-reading": {"columns": ["trace", "requests", "whole file", "pieces",
                                                    "time", "whole file peak", "pieces peak"],
                                        "rows": rows}}


def _sorted_uses(keys: np.ndarray):
    """The next and previous uses as vyrecache found them before, by a stable sort of the trace:
    the peer of key_uses.next_uses."""
    n = keys.size
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    following, previous = np.full(n, n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    following[order[:-1][same]] = order[1:][same]
    previous[order[1:][same]] = order[:-1][same]
    return following, previous


def key_uses_speed(traces_dir: Path, repeat: int, clock):
    """What a replay computes once a trace before its replays: the distinct keys (for the cache
    sizes) and OPT's next uses, by one pass with a hash table against sorting the trace."""
    print(f"a trace's distinct keys and next uses: one pass with a table of the keys against a "
          f"sort, best of {repeat}")
    print(f"{'trace':36} {'requests':>10} {'np.unique':>10} {'table':>8} {'speed-up':>9} "
          f"{'sort uses':>10} {'table':>8} {'speed-up':>9}")
    rows = []
    for name, path in present_traces(traces_dir, GRID_TRACES + ["cloudphysics_io.oracleGeneral.bin"]):
        keys = read_trace(path).keys
        runs = [functools.partial(run, keys) for run in (np.unique, unique_count, _sorted_uses,
                                                          next_uses)]
        seconds = interleaved_best(runs, repeat, clock)
        ms = [value * 1e3 for value in seconds]
        print(f"{name:36} {keys.size:10,} {ms[0]:10.1f} {ms[1]:8.1f} {ms[0] / ms[1]:8.1f}x "
              f"{ms[2]:10.1f} {ms[3]:8.1f} {ms[2] / ms[3]:8.1f}x")
        rows.append([name, f"{keys.size:,}", f"{ms[0]:.1f} ms", f"{ms[1]:.1f} ms",
                     f"{ms[0] / ms[1]:.1f}x", f"{ms[2]:.1f} ms", f"{ms[3]:.1f} ms",
                     f"{ms[2] / ms[3]:.1f}x"])
    print()
    return {"policies-key-uses": {"columns": ["trace", "requests", "distinct: np.unique",
                                              "distinct: table", "speed-up", "next uses: sort",
                                              "next uses: table", "speed-up"], "rows": rows}}


def hit_ratio_table(traces_dir: Path):
    names = [policy.name for policy in POLICIES]
    print("hit ratio (%) per trace and cache size (% of unique keys), unit sizes; gap = "
          "W-TinyLFU minus the best other policy, in points")
    print(f"{'trace':36} {'size':>9} " + " ".join(f"{n:>8}" for n in names)
          + f" {'OPT':>7} {'gap':>6}")
    rows = []
    for name, path in present_traces(traces_dir, TRACES):
        trace = read_trace(path)
        for fraction in (0.01, 0.1, 0.3):
            size = max(1, int(trace.unique_keys * fraction))
            ratios = [replay(trace, policy, size).hit_ratio * 100 for policy in names]
            best_other = max(ratios[:-1])
            opt = opt_hits(trace, size)[0] / len(trace) * 100
            print(f"{name[:36]:36} {size:>6} {fraction * 100:2.0f}% "
                  + " ".join(f"{ratio:8.2f}" for ratio in ratios)
                  + f" {opt:7.2f} {ratios[-1] - best_other:+6.2f}")
            rows.append([name, f"{size:,} ({fraction * 100:.0f}%)"] + [f"{ratio:.2f}" for ratio in ratios]
                        + [f"{opt:.2f}", f"{ratios[-1] - best_other:+.2f}"])
    print()
    return {"policies-hit-ratios": {"columns": ["trace", "size"] + names + ["OPT", "W-TinyLFU - best other"],
                                    "rows": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 accesses, one repeat")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--traces", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared" / "traces")
    parser.add_argument("--lru-baseline", type=Path, default=None, metavar="DIR")
    parser.add_argument("--only", choices=["cost", "baseline", "replay", "table", "grid", "read",
                                           "uses"],
                        default=None)
    add_clock_argument(parser, default="cpu")
    add_json_argument(parser)
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    accesses = 100_000 if args.quick else 1_000_000
    repeat = 1 if args.quick else args.repeat
    trace = zipf_trace(100_000, accesses, 0.99, seed=7)
    print(f"machine: {cpu_model()}; workload of bench_core: Zipf(0.99), {accesses:,} accesses, "
          f"tiers {TIER0:,} + {TIER1:,} entries; timed by {args.clock} time\n")
    tables: dict = {}
    if args.only in (None, "cost"):
        tables.update(policy_costs(trace, repeat, clock))
    if args.lru_baseline is not None and args.only in (None, "baseline"):
        lru_against_baseline(trace, repeat, args.lru_baseline, clock)
    if args.only in (None, "replay"):
        tables.update(replay_speed(args.traces, repeat, clock))
    if args.only in (None, "table"):
        tables.update(hit_ratio_table(args.traces))
    if args.only in (None, "grid"):
        tables.update(replay_grid_speed(args.traces, max(1, repeat // 2)))
    if args.only in (None, "read"):
        tables.update(trace_reading_speed(args.traces, repeat, clock))
        tables.update(binary_reading(args.traces, repeat, clock))
    if args.only in (None, "uses"):
        tables.update(key_uses_speed(args.traces, repeat, clock))
    write_json(args.json, "bench_policies", {"clock": args.clock, "repeat": repeat, "tables": tables})


if __name__ == "__main__":
    main()
