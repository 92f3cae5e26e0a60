"""BufferCache byte movement, side by side with its floor in the same process.

* put/read of 4 KiB, 64 KiB and 16 MiB entries into a host-visible tier
  against ``np.copyto`` of the same bytes;
* the per-call overhead of put + read of 64-byte entries;
* promote_many bandwidth (1,000 x 64 KiB and 16,000 x 4 KiB) against one
  ``vkCmdCopyBuffer`` of the same total bytes between the same memory types.

``--json PATH`` also writes the figures, with BENCHMARKS.md's tables ``buffer-put-read``,
``buffer-small-calls`` and ``buffer-promote-many``.
Run: ``python benchmarks/bench_buffer.py [--backend auto|vulkan|host] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import vyrecache as vc

from harness import add_json_argument, best_of, write_json


def bench_put_read(backend: str, entry_size: int, total_bytes: int) -> dict:
    count = max(1, total_bytes // entry_size)
    capacity = count * entry_size + (1 << 20)
    tiers = [vc.CacheTier("host", capacity, memory="host")]
    data = [np.random.default_rng(i).integers(0, 256, entry_size, dtype=np.uint8) for i in range(min(count, 64))]
    sink = np.empty(entry_size, dtype=np.uint8)
    with vc.BufferCache(tiers, backend=backend) as cache:
        def put_all():
            for key in range(count):
                cache.put(key, data[key % len(data)])

        def read_all():
            for key in range(count):
                cache.read_into(key, sink)

        # The peer moves the same bytes between the same kinds of places: one distinct
        # destination (or source) range per entry in a preallocated arena, as the cache does.
        arena = np.empty(count * entry_size, dtype=np.uint8)
        slots = [arena[key * entry_size:(key + 1) * entry_size] for key in range(count)]

        def copy_in():
            for key in range(count):
                np.copyto(slots[key], data[key % len(data)])

        def copy_out():
            for key in range(count):
                np.copyto(sink, slots[key])

        put_all()
        copy_in()
        t_put, t_read = best_of(put_all, 5), best_of(read_all, 5)
        t_in, t_out = best_of(copy_in, 5), best_of(copy_out, 5)
    gib = count * entry_size / 2**30
    return {"entry": entry_size, "count": count, "put_GiBps": gib / t_put, "read_GiBps": gib / t_read,
            "copyto_in_GiBps": gib / t_in, "copyto_out_GiBps": gib / t_out,
            "put_ratio": t_in / t_put, "read_ratio": t_out / t_read}


def bench_small_calls(backend: str, calls: int = 20000) -> dict:
    tiers = [vc.CacheTier("host", 64 << 20, memory="host")]
    data = np.arange(64, dtype=np.uint8)
    with vc.BufferCache(tiers, backend=backend) as cache:
        def puts():
            for key in range(calls):
                cache.put(key, data)

        def reads():
            for key in range(calls):
                cache.read(key)

        puts()
        t_put, t_read = best_of(puts, 3), best_of(reads, 3)
    return {"put_us": t_put / calls * 1e6, "read_us": t_read / calls * 1e6}


def bench_promote_many(backend: str, entry_size: int, count: int) -> dict:
    total = entry_size * count
    tiers = [vc.CacheTier("host", total + (1 << 20), memory="host"),
             vc.CacheTier("vram", total + (1 << 20), memory="device")]
    payload = np.random.default_rng(1).integers(0, 256, entry_size, dtype=np.uint8)
    keys = np.arange(count, dtype=np.uint64)
    with vc.BufferCache(tiers, backend=backend, policy=vc.LruPolicy(promote_threshold=0)) as cache:
        for key in range(count):
            cache.put(key, payload)
        # Keep the device busy for a while first: a GPU at its idle clocks times its ramp-up.
        warm_until = time.perf_counter() + 0.5
        while time.perf_counter() < warm_until:
            cache.promote_many(keys)
            cache.demote_many(keys)
        # Every timed promotion starts from the entries demoted, untimed.
        t_promote = best_of(lambda: cache.promote_many(keys), 5, before=lambda: cache.demote_many(keys))
        peer = None
        if cache.backend_name == "vulkan":
            device = cache._backend.vulkan_device
            host_type = cache._memories[0].memory_type_index
            device_type = cache._memories[1].memory_type_index
            peer = total / copy_bandwidth(device, total, host_type, device_type, repeat=5)
        else:
            # Written first: untouched memory reads as the kernel's zero page, far too fast.
            src = np.random.default_rng(2).integers(0, 256, total, dtype=np.uint8)
            dst = np.ones(total, dtype=np.uint8)
            peer = best_of(lambda: np.copyto(dst, src), 5)
        cache.check()
    return {"entry": entry_size, "count": count, "promote_GiBps": total / t_promote / 2**30,
            "single_copy_GiBps": total / peer / 2**30, "ratio": peer / t_promote}


def copy_bandwidth(device, size: int, src_memory_type_index: int, dst_memory_type_index: int,
                   repeat: int = 3) -> float:
    """Bytes per second of one ``vkCmdCopyBuffer`` of *size* bytes between two fresh blocks.

    Each timing covers recording, one submit and the fence wait (what a cache operation pays);
    the best of *repeat* runs after one warm-up.
    """
    source = device.allocate_block(src_memory_type_index, size)
    destination = device.allocate_block(dst_memory_type_index, size)
    try:
        # Real bytes in both: untouched memory can read as the kernel's shared zero page,
        # which makes a copy look several times faster than any real one.
        pattern = np.frombuffer(np.random.default_rng(size).bytes(min(size, 1 << 20)), np.uint8)
        for block in (source, destination):
            for offset in range(0, size, pattern.size):
                device.upload(block, offset, pattern[:min(pattern.size, size - offset)])
        def copy() -> None:
            with device.record() as recorder:
                recorder.copy_region(source, 0, destination, 0, size)
        # The first run, untimed, warms up page tables and caches.
        return size / best_of(copy, repeat, warmup=True)
    finally:
        device.free_block(destination)
        device.free_block(source)


def size_name(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


#: The floors BENCHMARKS.md holds the figures to: promote_many against one copy, by entry size;
#: a 64-byte put or read, in microseconds.
PROMOTE_FLOORS = {65536: 0.8, 4096: 0.6}
SMALL_CALL_FLOOR_US = 2.0


def tables(results: dict) -> dict:
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"
    small = results["small_calls"]
    return {
        "buffer-put-read": {
            "columns": ["entry", "put GiB/s", "copyto in", "ratio", "read GiB/s", "copyto out", "ratio"],
            "rows": [[size_name(row["entry"]), f"{row['put_GiBps']:.2f}", f"{row['copyto_in_GiBps']:.2f}",
                      f"{row['put_ratio']:.2f}", f"{row['read_GiBps']:.2f}", f"{row['copyto_out_GiBps']:.2f}",
                      f"{row['read_ratio']:.2f}"] for row in results["put_read"]]},
        "buffer-small-calls": {
            "columns": ["64-byte entries", "us per call", f"floor: <= {SMALL_CALL_FLOOR_US:g} us"],
            "rows": [[name, f"{small[key]:.2f}", met(small[key] <= SMALL_CALL_FLOOR_US)]
                     for name, key in (("`put`", "put_us"), ("`read`", "read_us"))]},
        "buffer-promote-many": {
            "columns": ["entry", "count", "GiB/s", "one copy GiB/s", "ratio", "floor"],
            "rows": [[size_name(row["entry"]), f"{row['count']:,}", f"{row['promote_GiBps']:.2f}",
                      f"{row['single_copy_GiBps']:.2f}", f"{row['ratio']:.2f}",
                      f"{PROMOTE_FLOORS[row['entry']]:.2f}: {met(row['ratio'] >= PROMOTE_FLOORS[row['entry']])}"]
                     for row in results["promote_many"]]},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", choices=["auto", "vulkan", "host"])
    add_json_argument(parser)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    big = 16 << 20 if not args.quick else 1 << 20
    results = {
        "put_read": [bench_put_read(args.backend, size, total) for size, total in
                     ((4096, 32 << 20), (65536, 64 << 20), (big, 4 * big))],
        "small_calls": bench_small_calls(args.backend, 20000 if not args.quick else 2000),
        "promote_many": [bench_promote_many(args.backend, 65536, 1000 if not args.quick else 100),
                         bench_promote_many(args.backend, 4096, 16000 if not args.quick else 1600)],
    }
    with vc.BufferCache([vc.CacheTier("t", 1 << 20)], backend=args.backend) as probe:
        results["device"] = str(getattr(probe.device, "name", probe.device))
    results["tables"] = tables(results)
    write_json(args.json, "bench_buffer", results)
    if str(args.json) == "-":
        return 0
    print(f"device: {results['device']}")
    print(f"{'put/read':<10}{'entry':>10}{'put GiB/s':>11}{'copyto in':>11}{'ratio':>7}"
          f"{'read GiB/s':>12}{'copyto out':>12}{'ratio':>7}")
    for row in results["put_read"]:
        print(f"{'':<10}{row['entry']:>10}{row['put_GiBps']:>11.2f}{row['copyto_in_GiBps']:>11.2f}"
              f"{row['put_ratio']:>7.2f}{row['read_GiBps']:>12.2f}{row['copyto_out_GiBps']:>12.2f}"
              f"{row['read_ratio']:>7.2f}")
    small = results["small_calls"]
    print(f"64-byte entries: put {small['put_us']:.2f} us/call, read {small['read_us']:.2f} us/call")
    print(f"{'promote_many':<14}{'entry':>8}{'count':>8}{'GiB/s':>9}{'1 copy GiB/s':>14}{'ratio':>8}")
    for row in results["promote_many"]:
        print(f"{'':<14}{row['entry']:>8}{row['count']:>8}{row['promote_GiBps']:>9.2f}"
              f"{row['single_copy_GiBps']:>14.2f}{row['ratio']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
