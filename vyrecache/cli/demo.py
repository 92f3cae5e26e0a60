"""``vyrecache demo``: an LLM server's KV-cache blocks in a two-tier BufferCache.

The cache has a large host tier (host-visible memory) and a device tier
(device-local memory) too small for the working set.  Every access is what a
server would do per block: ``cache.access(key)``, and on a miss ``cache.put``
of the block's bytes.  Popular prefixes are promoted into the device tier;
what no longer fits spills back to the host tier, and the coldest blocks leave
the cache.  At the end the per-tier report is printed and a sample of entries
is read back and compared byte for byte with what was put.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from ..report import counters_by_tier, format_bytes, format_report
from . import (CommandError, non_negative_int, parse_size, positive_float, positive_int)
from .workload import DECODE_KEY_BASE, KvWorkload

__all__ = ["register", "run"]

#: Requests drawn per step: small enough for a smooth progress bar, large enough to vectorize.
_REQUESTS_PER_STEP = 32


def register(commands: Any) -> None:
    """Add the ``demo`` sub-command to *commands* (an argparse sub-parsers object)."""
    parser = commands.add_parser(
        "demo", help="run an LLM-serving-like KV-cache workload and print the per-tier report",
        description="Run an LLM server's KV-cache blocks through a BufferCache with a host tier and a "
                    "device tier too small for the working set: access each block, put it on a miss. "
                    "Popular prefixes are promoted to the device tier, the rest spills back or leaves. "
                    "Prints the per-tier report and checks a sample of entries' bytes at the end.")
    parser.add_argument("--host-size", type=parse_size, default=48 << 20, metavar="SIZE",
                        help="capacity of the host tier (default 48MiB)")
    parser.add_argument("--device-size", type=parse_size, default=8 << 20, metavar="SIZE",
                        help="capacity of the device tier (default 8MiB)")
    parser.add_argument("--block-size", type=parse_size, default=16 << 10, metavar="SIZE",
                        help="size of a full KV-cache block (default 16KiB)")
    parser.add_argument("--entries", type=positive_int, default=4096, metavar="N",
                        help="prefix blocks in the working set (default 4096)")
    parser.add_argument("--prefix-blocks", type=positive_int, default=8, metavar="N",
                        help="blocks per prefix chain (default 8)")
    parser.add_argument("--decode-blocks", type=non_negative_int, default=1, metavar="N",
                        help="new blocks written per request, used once (default 1)")
    parser.add_argument("--zipf", type=positive_float, default=1.0, metavar="S",
                        help="Zipf exponent of prefix popularity (default 1.0)")
    parser.add_argument("--duration", type=positive_float, default=10.0, metavar="SECONDS",
                        help="how long to run (default 10)")
    parser.add_argument("--requests", type=positive_int, default=None, metavar="N",
                        help="stop after N requests, even before the duration is over")
    parser.add_argument("--backend", choices=("auto", "vulkan", "host"), default="auto",
                        help="auto: the first Vulkan device, else host memory (default auto)")
    parser.add_argument("--device-index", type=non_negative_int, default=None, metavar="I",
                        help="Vulkan device to use (see `vyrecache info`; default: the first)")
    parser.add_argument("--promote-threshold", type=positive_int, default=3, metavar="N",
                        help="accesses before an entry is promoted (default 3)")
    parser.add_argument("--verify", type=non_negative_int, default=256, metavar="N",
                        help="entries read back and checked at the end (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the workload (default 0)")
    parser.add_argument("--remote", default=None, metavar="URL",
                        help="a Redis server below the host tier, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--decode-write-back", action="store_true",
                        help="with --remote: write decode blocks back to it too (by default they are "
                             "used once and stay local: put with write_back=False)")
    parser.add_argument("--metrics-port", type=non_negative_int, default=None, metavar="N",
                        help="serve the cache's counters for Prometheus on this port while it runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.set_defaults(run=run)


def _serve_metrics(cache: Any, port: int) -> None:
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as error:
        raise CommandError("--metrics-port needs prometheus_client. Fix: pip install "
                           "'vyrecache[metrics]'.", status=2) from error
    from ..metrics import PrometheusCollector
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(cache))
    start_http_server(port, addr="127.0.0.1", registry=registry)


def device_label(device: Any) -> str:
    """Return a short description of ``cache.device``: its name and backend."""
    name = getattr(device, "name", None) or str(device)
    backend = getattr(device, "backend", None)
    return f"{name} ({backend} backend)" if backend and backend not in name else str(name)


def run(args: argparse.Namespace) -> int:
    """Run the demo described by *args*; return 0, or 1 when a sampled entry's bytes differ.

    Raises:
        CommandError: the sizes cannot work (status 2), or this build has no BufferCache.
        vyrecache.CacheError: the cache or the device failed (e.g. ``--backend vulkan``
            on a machine without a Vulkan device).
    """
    import vyrecache as vc

    if args.block_size < 16:
        raise CommandError(f"--block-size must be at least 16 bytes, got {args.block_size}. "
                           "Fix: pass e.g. --block-size 16KiB.", status=2)
    if args.block_size > max(args.host_size, args.device_size):
        raise CommandError(f"a block of {format_bytes(args.block_size)} fits no tier (host "
                           f"{format_bytes(args.host_size)}, device {format_bytes(args.device_size)}). "
                           "Fix: make --block-size smaller or a tier larger.", status=2)
    if not hasattr(vc, "BufferCache"):
        raise CommandError("this build of vyrecache has no BufferCache. "
                           "Fix: rebuild from a complete source tree (make build).")

    from tqdm import tqdm

    workload = KvWorkload(args.entries, args.block_size, prefix_blocks=args.prefix_blocks, zipf=args.zipf,
                          decode_blocks=args.decode_blocks, seed=args.seed)
    tiers = [vc.CacheTier("host", args.host_size, memory="host"),
             vc.CacheTier("device", args.device_size, memory="device")]
    policy = vc.LruPolicy(promote_threshold=args.promote_threshold)
    remote = vc.RedisTier(args.remote, namespace=f"vyrecache-demo-{args.seed}") if args.remote else None
    with vc.BufferCache(tiers, backend=args.backend, device_index=args.device_index, policy=policy,
                        remote=remote) as cache:
        if args.metrics_port is not None:
            _serve_metrics(cache, args.metrics_port)
        label = device_label(cache.device)
        requests = accesses = puts = bytes_put = 0
        # Counted here from access()'s result, so the figure does not depend on how counters count misses.
        hits_by_tier = [0] * len(cache.tiers)
        interrupted = False
        access, put, payload = cache.access, cache.put, workload.payload
        start = time.perf_counter()
        deadline = start + args.duration
        shown = 0.0
        bar = tqdm(total=round(args.duration, 1), desc="demo", unit="s", file=sys.stderr, leave=False,
                   disable=True if args.quiet else None,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total}s {postfix}")
        try:
            with bar:
                now = start
                ahead = None        # with a remote tier: the next step, drawn and prefetched early
                while now < deadline and (args.requests is None or requests < args.requests):
                    count = _REQUESTS_PER_STEP if args.requests is None else min(
                        _REQUESTS_PER_STEP, args.requests - requests)
                    keys, sizes = ahead if ahead is not None else workload.batch(count)
                    if remote is not None:
                        following = _REQUESTS_PER_STEP if args.requests is None else min(
                            _REQUESTS_PER_STEP, args.requests - requests - count)
                        ahead = workload.batch(following) if following > 0 else None
                        if ahead is not None:
                            # A server knows its next requests' blocks before it serves them: their
                            # remote round trip runs while this step is served.
                            cache.prefetch(ahead[0])
                    if remote is None:
                        for key, size in zip(keys.tolist(), sizes.tolist()):
                            found = access(key)
                            if found < 0:
                                put(key, payload(key, size))
                                puts += 1
                                bytes_put += size
                            else:
                                hits_by_tier[found] += 1
                    else:
                        # One access_many per step: the local misses of the step cost one round
                        # trip to the remote tier instead of one each; one put_many of what is
                        # still missing, so that its victims go to the writer as one batch.
                        tiers_found = cache.access_many(keys)
                        for found in tiers_found[tiers_found >= 0].tolist():
                            hits_by_tier[found] += 1
                        missing = dict.fromkeys(zip(keys[tiers_found < 0].tolist(),
                                                    sizes[tiers_found < 0].tolist()))
                        if missing:
                            # Decode blocks are used once: written back, they would only cost the
                            # writer, the network and the server (--decode-write-back does it).
                            _put_missing(cache, missing, payload, args.decode_write_back)
                            puts += len(missing)
                            bytes_put += sum(size for _, size in missing)
                    requests += count
                    accesses += len(keys)
                    now = time.perf_counter()
                    if now - start - shown >= 0.25 or now >= deadline:
                        elapsed = min(now, deadline) - start
                        bar.update(round(elapsed - shown, 2))
                        shown = elapsed
                        ratio = sum(hits_by_tier) / accesses
                        bar.set_postfix_str(f"{requests / (now - start):,.0f} req/s, hits {100 * ratio:.1f}%")
        except KeyboardInterrupt:
            interrupted = True
        seconds = time.perf_counter() - start
        checked, mismatched = _verify(cache, workload, args.verify, args.seed)
        tier_names = [tier.name for tier in cache.tiers]
        counters = counters_by_tier(cache.counters(), tier_names)
        block_hits = {name: hits / max(1, accesses) for name, hits in zip(tier_names, hits_by_tier)}
        block_hits["total"] = sum(hits_by_tier) / max(1, accesses)
        usage = [{"name": tier.name, "capacity": int(tier.capacity), "used": int(tier.used),
                  "count": int(tier.count), "memory": int(tier.memory)} for tier in cache.tiers]
        amplification = cache.write_amplification()
        copied = sum(int(row["cleaning_bytes"]) for row in cache.counters())
        if args.json:
            result = {
                "device": label, "seconds": seconds, "requests": requests, "accesses": accesses,
                "puts": puts, "bytes_put": bytes_put, "requests_per_second": requests / seconds,
                "accesses_per_second": accesses / seconds, "working_set_bytes": workload.working_set_bytes(),
                "tiers": usage, "counters": counters, "hit_ratio": block_hits,
                "bytes_copied_for_placement": copied, "write_amplification": amplification,
                "remote": cache.remote_counters() if remote is not None else None,
                "verified": {"checked": checked, "mismatched": mismatched}, "interrupted": interrupted,
            }
            print(json.dumps(result, indent=2, default=_json_default))
        else:
            verdict = (f"{checked} sampled entries read back, all bytes match" if not mismatched
                       else f"{mismatched} of {checked} sampled entries read back WRONG")
            footer = {
                "workload": (f"{workload.prefixes:,} prefixes x {workload.prefix_blocks} blocks of "
                             f"{format_bytes(args.block_size)} (working set "
                             f"{format_bytes(workload.working_set_bytes())}), Zipf {args.zipf:g}, "
                             f"{args.decode_blocks} decode block(s) per request, seed {args.seed}"),
                "ran": (f"{seconds:.1f} s{' (interrupted)' if interrupted else ''}: {requests:,} requests, "
                        f"{accesses:,} block accesses, {puts:,} puts ({format_bytes(bytes_put)})"),
                "throughput": (f"{requests / seconds:,.0f} requests/s, {accesses / seconds:,.0f} accesses/s, "
                               f"{format_bytes(bytes_put / seconds)}/s put"),
                "block hits": (f"{100 * block_hits['total']:.1f}% of accesses ("
                               + ", ".join(f"{name} {100 * block_hits[name]:.1f}%" for name in tier_names) + ")"),
                "placement": (f"{format_bytes(copied)} copied to make room, {amplification:.3f} bytes per "
                              f"byte put; memory taken "
                              + ", ".join(f"{tier.name} {format_bytes(tier.memory)}" for tier in cache.tiers)
                              + f" (headroom {cache.headroom:g})"),
                "verified": verdict,
            }
            if remote is not None:
                cache.flush(5.0)
                counts = cache.remote_counters()
                footer["remote tier"] = (f"{args.remote}: {counts['hits']:,} hits, {counts['misses']:,} misses, "
                                         f"{counts['writes']:,} writes ({format_bytes(counts['bytes_written'])}), "
                                         f"{counts['dropped']:,} dropped, {counts['errors']:,} errors")
            print(format_report(counters, tier_names, tiers=cache.tiers,
                                title=f"vyrecache demo on {label}", footer=footer))
    if mismatched:
        print(f"vyrecache demo: error: {mismatched} of {checked} sampled entries read back different bytes "
              "than were put. Fix: report this as a bug with the command line above.", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


def _put_missing(cache: Any, missing: dict[tuple[int, int], None], payload: Any, decode_write_back: bool) -> None:
    """Put a step's missing blocks, (key, size) in order, in one put_many, or in two when the
    decode blocks are kept out of the remote tier (``write_back=False``)."""
    items = list(missing)
    if decode_write_back:
        groups = [(items, True)]
    else:
        groups = [([item for item in items if item[0] < DECODE_KEY_BASE], True),
                  ([item for item in items if item[0] >= DECODE_KEY_BASE], False)]
    for group, write_back in groups:
        if group:
            cache.put_many(np.fromiter((key for key, _ in group), np.uint64, len(group)),
                           [payload(key, size) for key, size in group], write_back=write_back)


def _verify(cache: Any, workload: KvWorkload, sample: int, seed: int) -> tuple[int, int]:
    """Read back up to *sample* entries present in *cache*; return (checked, mismatched)."""
    if sample == 0:
        return 0, 0
    rng = np.random.default_rng(seed + 1)
    candidates = rng.permutation(workload.entries).astype(np.uint64).tolist()
    # The newest decode blocks too: they were put once and never accessed again.
    newest = workload.decode_keys_issued
    candidates += [DECODE_KEY_BASE + i for i in range(max(0, newest - sample), newest)]
    checked = mismatched = 0
    for key in candidates:
        if checked >= sample:
            break
        if key not in cache:
            continue
        data = cache.read(key)
        checked += 1
        if not np.array_equal(np.asarray(data, dtype=np.uint8), workload.payload(key)):
            mismatched += 1
    return checked, mismatched


def _json_default(value: Any) -> Any:
    # numpy scalars in counters
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")
