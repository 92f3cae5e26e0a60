"""Compaction throughput against one vkCmdCopyBuffer of the same bytes, in the same run.

For each case a 256 MiB device block is filled with entries, some are evicted at random, and the
block is compacted in each mode a VulkanBackend can run (record, one submit, wait: what a cache
pays): "shader" (every chunk in the compute shader), "split" (the same with disjoint chunks cut
into 4 KiB workgroups), "hybrid" (self-overlapping chunks in the shader, the others as copy
regions) and, where the device's memory is mapped and cached, "cpu"
(streaming CPU copies in the mapping on up to 4 threads, the backend's "host" mode; "cpu 1T" is
the same on one thread).  The baseline copies the same
number of bytes with a single vkCmdCopyBuffer between two other device blocks, timed the same
way.  Best of --repeat runs after a warm-up.  The last column is the mode
``VulkanBackend(compaction="auto")`` picks on this device.

    .venv/bin/python benchmarks/bench_compaction.py [--size-mib 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vyrecache._core.compaction import execute_on_host, plan_block
from vyrecache.vulkan import Device
from vyrecache.host.backend import compact_arrays
from vyrecache.vulkan.backend import _cpu_compactable, calibrate_compaction
from vyrecache.vulkan.compute import CompactionKernel

from harness import best_of

MIB = 1 << 20


def layout_half_evicted(block_size: int, entry_size: int, seed: int):
    rng = np.random.default_rng(seed)
    count = block_size // entry_size
    keep = np.sort(rng.permutation(count)[:count // 2])
    offsets = keep.astype(np.uint64) * entry_size
    return offsets, np.full(len(keep), entry_size, np.uint64), np.zeros(len(keep), bool)


def layout_sixteen_byte_slide(block_size: int, entry_size: int):
    """Entries packed after a 16-byte hole: every entry slides by 16 bytes onto itself."""
    count = (block_size - 16) // entry_size
    offsets = 16 + np.arange(count, dtype=np.uint64) * entry_size
    return offsets, np.full(count, entry_size, np.uint64), np.zeros(count, bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of copies before measuring, so a GPU leaves its idle clocks")
    parser.add_argument("--overlap-mib", type=int, default=32,
                        help="block size of the 16-byte-slide case (one chunk per wave)")
    args = parser.parse_args()
    block_size = args.size_mib * MIB

    device = Device(validation=False)
    memory_type = device.memory_type_for("device", block_size)
    block = device.allocate_block(memory_type, block_size)
    source = device.allocate_block(memory_type, block_size)
    target = device.allocate_block(memory_type, block_size)
    device.upload(block, 0, np.random.default_rng(0).integers(0, 256, block_size, dtype=np.uint8))
    device.upload(source, 0, np.zeros(block_size, np.uint8))
    kernels = {"shader": CompactionKernel(device),
               "split": CompactionKernel(device, split_disjoint=True),
               "hybrid": CompactionKernel(device, transfer_disjoint=True)}
    modes = {name: (lambda plan, kernel=kernel: kernel.run(block, plan))
             for name, kernel in kernels.items()}
    if block.host_visible and _cpu_compactable(device, memory_type):
        modes["cpu"] = lambda plan: compact_arrays(plan, [block.array])
        # The same copies on one thread, to show what the threads add.
        modes["cpu 1T"] = lambda plan: execute_on_host(plan, [block.array], streaming=True)
    auto = calibrate_compaction(device)

    cases = [
        ("64 KiB entries, half evicted", layout_half_evicted(block_size, 64 << 10, 1), block_size),
        ("4 KiB entries, half evicted", layout_half_evicted(block_size, 4 << 10, 2), block_size),
        ("1 MiB entries, half evicted", layout_half_evicted(block_size, MIB, 3), block_size),
        (f"1 MiB entries slid by 16 B ({args.overlap_mib} MiB)",
         layout_sixteen_byte_slide(args.overlap_mib * MIB, MIB), args.overlap_mib * MIB),
    ]
    warm_until = time.perf_counter() + args.warmup
    while time.perf_counter() < warm_until:
        with device.record() as recorder:
            recorder.copy_region(source, 0, target, 0, block_size)
    start = time.perf_counter()
    with device.record() as recorder:
        for _ in range(8):
            recorder.copy_region(source, 0, target, 0, block_size)
    sustained = 8 * block_size / (time.perf_counter() - start)
    print(f"device: {device.info.name}; block {args.size_mib} MiB; best of {args.repeat}; "
          f"{args.warmup:.1f} s warm-up; sustained vkCmdCopyBuffer {sustained / 1e9:.1f} GB/s moved "
          f"({2 * sustained / 1e9:.1f} GB/s read+write, 8 copies in one submit)")
    header = (f"{'case':<36} {'moved MiB':>9} {'chunks':>6} {'waves':>5} {'plan ms':>7} "
              f"{'copy GB/s':>9}" + "".join(f" {name + ' GB/s':>11} {'ratio':>5}" for name in modes)
              + f" {'auto':>6}")
    print(header)
    print("-" * len(header))
    for name, layout, size in cases:
        start = time.perf_counter()
        plan = plan_block(*layout, size)
        plan_seconds = time.perf_counter() - start
        moved = plan.chunk_bytes

        def copy_once(moved=moved):
            with device.record() as recorder:
                recorder.copy_region(source, 0, target, 0, moved)

        copy_rate = moved / best_of(copy_once, args.repeat, warmup=True)
        rates = [moved / best_of(lambda run=run, plan=plan: run(plan), args.repeat, warmup=True)
                 for run in modes.values()]
        print(f"{name:<36} {moved / MIB:>9.1f} {len(plan.chunks):>6} {plan.waves:>5} "
              f"{plan_seconds * 1e3:>7.1f} {copy_rate / 1e9:>9.2f}"
              + "".join(f" {rate / 1e9:>11.2f} {rate / copy_rate:>5.2f}" for rate in rates)
              + f" {'cpu' if auto == 'host' else auto:>6}")
    for kernel in kernels.values():
        kernel.destroy()
    end_to_end(device, block_size, source, target, args.repeat)
    device.close()


def end_to_end(device: Device, block_size: int, source, target, repeat: int) -> None:
    """What a user pays: ``cache.compact()`` of a BufferCache tier of one block, half of its 64 KiB
    entries removed at random (planning, copies, the storage layer's bookkeeping), against one
    vkCmdCopyBuffer of the bytes it moved.  A fresh cache per run (a compacted tier stays so)."""
    import vyrecache as vc
    from vyrecache.vulkan.backend import VulkanBackend

    entry = 64 << 10
    payload = np.random.default_rng(4).integers(0, 256, entry, dtype=np.uint8)
    print(f"\ncache.compact() end to end, {block_size // MIB} MiB tier of 64 KiB entries, half "
          f"removed (best of {repeat}):")
    for mode in ("auto", "shader", "split", "hybrid"):
        best, report = float("inf"), None
        for attempt in range(repeat + 1):
            backend = VulkanBackend(device=device, compaction=mode)
            with vc.BufferCache([vc.CacheTier("tier", block_size, memory="device")],
                                backend=backend) as cache:
                count = block_size // entry
                for key in range(count):
                    cache.put(key, payload)
                for key in np.random.default_rng(5).permutation(count)[:count // 2]:
                    cache.remove(int(key))
                start = time.perf_counter()
                report = cache.compact(0)
                seconds = time.perf_counter() - start
            if attempt:          # the first run pays page faults and pipeline creation
                best = min(best, seconds)

        def copy_once(moved=report.bytes_moved):
            with device.record() as recorder:
                recorder.copy_region(source, 0, target, 0, moved)

        copy_rate = report.bytes_moved / best_of(copy_once, repeat, warmup=True)
        rate = report.bytes_moved / best
        print(f"  {mode + ' (' + backend.compaction + ')':<20} {report.bytes_moved / MIB:7.1f} MiB in "
              f"{best * 1e3:7.2f} ms: {rate / 1e9:6.2f} GB/s, {rate / copy_rate:5.2f}x one "
              f"vkCmdCopyBuffer ({copy_rate / 1e9:.2f} GB/s)")


if __name__ == "__main__":
    main()
