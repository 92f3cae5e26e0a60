"""Asynchronous moves against synchronous ones, side by side in one process.

A server promotes a request's blocks and computes meanwhile.  Each round moves the same batch up
(``promote_many``) and runs the same CPU work (a numpy computation of about the copy's length):

* ``wait=True``: the promotion, then the work (what a caller had before);
* ``wait=False``: the promotion starts, the work runs, then ``transfer.wait()``.

The figure is the time of promotion + work; their ratio is the overlap won.  Also printed: the
promotion alone both ways, and how long ``promote_many(wait=False)`` takes to return.  Rounds are
interleaved and each figure is the best round.  ``--json PATH`` also writes the figures, with
BENCHMARKS.md's table ``transfers-BACKEND``.  Run:
``python benchmarks/bench_transfers.py [--backend vulkan|host] [--rounds N] [--mib M] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import vyrecache as vc

from harness import WALL_TIME, add_json_argument, best_of, interleaved_best, write_json


def make_cache(backend: str, total: int, device_only: bool = False) -> vc.BufferCache:
    if backend == "vulkan":
        from vyrecache.vulkan.backend import VulkanBackend
        if device_only:
            # The tests' backend whose tiers are device-only memory, as a discrete GPU's are.
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from device_only import DeviceOnlyBackend
            backend = DeviceOnlyBackend()
        else:
            backend = VulkanBackend()
    tiers = [vc.CacheTier("host", 2 * total, "host"), vc.CacheTier("vram", 2 * total, "device")]
    return vc.BufferCache(tiers, backend=backend)


def reset(cache: vc.BufferCache, keys: np.ndarray) -> None:
    """Everything back in the low tier, hot enough to be promoted."""
    cache.demote_many(keys)
    for _ in range(3):
        for key in keys.tolist():
            cache.record_access(key)


def measure(cache: vc.BufferCache, keys: np.ndarray, rows: np.ndarray, rounds: int) -> dict[str, float]:
    cache.put_many(keys, rows)

    def back() -> None:
        reset(cache, keys)

    def promote() -> None:
        cache.promote_many(keys)
    synchronous = best_of(promote, 3, before=back)
    # CPU work of about the synchronous promotion's length: a server's own computation.
    values = np.random.default_rng(1).random(1 << 14)
    scratch = np.empty_like(values)
    per_pass = best_of(lambda: np.sin(values, out=scratch), 50)
    passes = max(1, int(synchronous / max(per_pass, 1e-9)))

    def work() -> None:
        for _ in range(passes):
            np.sin(values, out=scratch)

    returns: list[float] = []

    def promote_async() -> None:
        # Timed whole (until done); the time until the call returns is read inside the same run.
        started = WALL_TIME()
        transfer = cache.promote_many(keys, wait=False)
        returns.append(WALL_TIME() - started)
        transfer.wait()

    def sync_then_work() -> None:
        cache.promote_many(keys)
        work()

    def async_with_work() -> None:
        transfer = cache.promote_many(keys, wait=False)
        work()
        transfer.wait()
    names = ("sync", "async_total", "sync_work", "async_work", "work")
    seconds = interleaved_best([promote, promote_async, sync_then_work, async_with_work, work], rounds,
                               before=[back, back, back, back, None])
    best = dict(zip(names, seconds))
    best["async_call"] = min(returns)
    for key in keys[:: max(1, len(keys) // 8)].tolist():
        assert cache.read(key).tobytes() == rows[key].tobytes()
    cache.check()
    return best


def report(name: str, best: dict[str, float], moved: int) -> None:
    ms = {key: value * 1e3 for key, value in best.items()}
    print(f"{name}:")
    print(f"  promotion alone: wait=True {ms['sync']:.1f} ms ({moved / best['sync'] / 1e9:.2f} GB/s); "
          f"wait=False returns in {ms['async_call']:.2f} ms, done after {ms['async_total']:.1f} ms "
          f"({moved / best['async_total'] / 1e9:.2f} GB/s)")
    print(f"  with {ms['work']:.1f} ms of CPU work: wait=True then work {ms['sync_work']:.1f} ms; "
          f"wait=False overlapped {ms['async_work']:.1f} ms = {best['sync_work'] / best['async_work']:.2f}x")


def table_row(name: str, best: dict[str, float], moved: int) -> list[str]:
    ms = {key: value * 1e3 for key, value in best.items()}
    return [name, f"{ms['sync']:.1f} ms", f"{moved / best['sync'] / 1e9:.2f}", f"{ms['async_call']:.2f} ms",
            f"{ms['async_total']:.1f} ms", f"{moved / best['async_total'] / 1e9:.2f}", f"{ms['work']:.1f} ms",
            f"{ms['sync_work']:.1f} ms", f"{ms['async_work']:.1f} ms", f"{best['sync_work'] / best['async_work']:.2f}x"]


COLUMNS = ["tiers", "`wait=True`", "GB/s", "`wait=False` returns in", "`wait=False` complete after", "GB/s",
           "CPU work", "`wait=True` + work", "`wait=False` overlapped with the work", "ratio"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="vulkan", choices=("host", "vulkan"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=64, help="bytes moved per promotion, in MiB")
    add_json_argument(parser)
    args = parser.parse_args()
    size, count = 1 << 20, args.mib
    keys = np.arange(count, dtype=np.uint64)
    rows = np.random.default_rng(0).integers(0, 256, (count, size), dtype=np.uint8)
    variants = [("mapped tiers", False)]
    if args.backend == "vulkan":
        # Device copies both ways: the same copy engine, so the ratio is the overlap alone.
        variants.append(("device-only tiers", True))
    print(f"{args.backend}: promote_many of {count} x 1 MiB, best of {args.rounds} interleaved rounds")
    results: dict = {"backend": args.backend, "rounds": args.rounds, "mib": count, "variants": {}}
    table_rows = []
    for name, device_only in variants:
        cache = make_cache(args.backend, count * size, device_only)
        try:
            if "device" not in results:
                results["device"] = str(getattr(cache.device, "name", cache.device))
            best = measure(cache, keys, rows, args.rounds)
        finally:
            cache.close()
        report(name, best, count * size)
        results["variants"][name] = best
        table_rows.append(table_row(name, best, count * size))
    results["tables"] = {f"transfers-{args.backend}": {"columns": COLUMNS, "rows": table_rows}}
    write_json(args.json, "bench_transfers", results)


if __name__ == "__main__":
    main()
