"""Segment cleaning on device memory: each copy executor against one vkCmdCopyBuffer of the same bytes.

A cleaning copies the live entries of a 4 MiB segment into a free one.  Here a device block of
--size-mib holds segments whose every other entry is live; the copy table moves them all, as
the storage layer's cleanings do, and each executor runs it (record, one submit, wait: what a
cache operation pays): "commands" (vkCmdCopyBuffer regions), "shader" (the compute shader, one
workgroup per 64 KiB piece) and "split" (4 KiB pieces).  The peer copies the same number of bytes
with a single vkCmdCopyBuffer region between two other device blocks, timed the same way.  Rounds
are interleaved; each figure is the best of --repeat, every timed run after an untimed one.  The
last line names the mode ``VulkanBackend(compaction="auto")`` picks on this device.  ``--json PATH``
also writes the figures, with BENCHMARKS.md's table ``compaction-executors``.

    .venv/bin/python benchmarks/bench_compaction.py [--size-mib 64] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse

import numpy as np

from vyrecache.compaction import executor_for, measured_modes
from vyrecache.compaction.executors import MODES
from vyrecache.copytable import COPY_DTYPE
from vyrecache.vulkan import Device

from harness import add_json_argument, interleaved_best, write_json

MIB = 1 << 20


def cleaning_table(source, destination, entry: int) -> np.ndarray:
    """Every other entry of *source* packed into *destination*, as cleanings move them."""
    count = source.size // entry // 2
    table = np.zeros(count, dtype=COPY_DTYPE)
    table["src_block"], table["dst_block"] = source.id, destination.id
    table["src_offset"] = np.arange(count, dtype=np.uint64) * np.uint64(2 * entry)
    table["dst_offset"] = np.arange(count, dtype=np.uint64) * np.uint64(entry)
    table["size"] = entry
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    add_json_argument(parser)
    args = parser.parse_args()
    size = args.size_mib * MIB
    device = Device()
    try:
        memory_type = device.memory_type_for("device", 4 * size)
        blocks = [device.allocate_block(memory_type, size) for _ in range(4)]
        noise = np.random.default_rng(0).integers(0, 256, MIB, dtype=np.uint8)
        for block in blocks:
            for offset in range(0, size, MIB):
                device.upload(block, offset, noise)
        executors = {mode: executor_for(device, mode) for mode in MODES[1:]}
        print(f"{device.info.name}: {args.size_mib} MiB of segments, every other entry live")
        print(f"{'entry':>8} {'peer: one region':>18} " + " ".join(f"{mode:>18}" for mode in executors))
        measured = []
        for entry in (4096, 16 << 10, 64 << 10, 256 << 10):
            table = cleaning_table(blocks[0], blocks[1], entry)
            moved = int(table["size"].sum())
            peer_row = np.array([(blocks[2].id, blocks[3].id, 0, 0, moved)], dtype=COPY_DTYPE)
            runs = [lambda rows=peer_row: executors["commands"].run(rows)]
            runs += [lambda run=executor.run, rows=table: run(rows) for executor in executors.values()]
            # Each timed run follows an untimed one of the same (warm-up: pipelines, page tables, caches).
            seconds = dict(zip(["peer", *executors], interleaved_best(runs, args.repeat, before=runs)))
            cells = [f"{moved / seconds['peer'] / 1e9:8.2f} GB/s".rjust(18)]
            cells += [f"{moved / seconds[mode] / 1e9:6.2f} GB/s {seconds['peer'] / seconds[mode]:4.2f}x".rjust(18)
                      for mode in executors]
            print(f"{entry >> 10:>6} K " + " ".join(cells))
            measured.append({"entry": entry, "moved": moved, "seconds": seconds})
        timings = measured_modes(device)
        picked = min(timings, key=timings.__getitem__)
        print(f"compaction='auto' picks {picked!r} "
              f"({', '.join(f'{mode} {seconds * 1e3:.2f} ms' for mode, seconds in timings.items())})")
        for executor in executors.values():
            executor.close()
        rows = []
        for row in measured:
            seconds = row["seconds"]
            cells = [f"{row['entry'] >> 10} KiB", f"{row['moved'] / seconds['peer'] / 1e9:.2f}"]
            for mode in executors:
                cells += [f"{row['moved'] / seconds[mode] / 1e9:.2f}", f"{seconds['peer'] / seconds[mode]:.2f}x"]
            rows.append(cells)
        columns = ["entry", "peer: one region GB/s"]
        for mode in executors:
            columns += [f"{mode} GB/s", "/ peer"]
        write_json(args.json, "bench_compaction", {
            "device": device.info.name, "size_mib": args.size_mib, "repeat": args.repeat,
            "entries": measured, "auto": {"picks": picked, "seconds": timings},
            "tables": {"compaction-executors": {"columns": columns, "rows": rows}}})
    finally:
        device.close()


if __name__ == "__main__":
    main()
