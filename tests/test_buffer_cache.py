"""BufferCache on both backends: real bytes, the engine's rules, and atomic failures.

The differential test drives three things with one random operation sequence:
a BufferCache, a metadata-only TieredCache with the same charge granularity,
and a dict of bytes.  Every key the cache holds must read back the bytes last
put; every key that left without remove() must have been reported to
on_evict; the metadata must equal the TieredCache's.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vyrecache as vc
from helpers import closing_caches, payload
from vyrecache.buffer_cache import open_backend


VULKAN_COMPACTION = {"vulkan": "commands", "vulkan-device-copies": "commands",
                     "vulkan-shader-copies": "shader"}


@pytest.fixture(params=["host", "vulkan", "vulkan-device-copies", "vulkan-shader-copies"])
def make_cache(request):
    """Build BufferCaches on one backend; closes them and checks for validation messages.

    "vulkan-device-copies" gives every tier device-only memory (tests/device_only.py), so
    entries move with vkCmdCopyBuffer and are read and written through the staging buffer, the
    discrete-GPU paths, on lavapipe too; "vulkan-shader-copies" does the same with every copy
    table run by the compute shader.
    """
    if request.param.startswith("vulkan"):
        device = request.getfixturevalue("vulkan_device")
        from device_only import DeviceOnlyBackend
        from vyrecache.vulkan.backend import VulkanBackend
        unmapped = request.param in ("vulkan-device-copies", "vulkan-shader-copies")
        make_backend = DeviceOnlyBackend if unmapped else VulkanBackend

        def backend():
            return make_backend(device=device, compaction=VULKAN_COMPACTION[request.param])
    else:
        def backend():
            return "host"

    with closing_caches(lambda tiers, **options: vc.BufferCache(tiers, backend=backend(), **options)) as build:
        build.backend = request.param
        yield build


def small_tiers(host=4096, device=1024):
    return [vc.CacheTier("host", host, memory="host"), vc.CacheTier("vram", device, memory="device")]


def test_put_then_read_returns_the_same_bytes(make_cache):
    cache = make_cache(small_tiers())
    data = payload(1, 100)
    cache.put(1, data)
    assert cache.read(1).tobytes() == data
    assert cache.get(1) == vc.CacheEntry(1, 100, 0)
    cache.check()


def test_put_accepts_any_contiguous_buffer(make_cache):
    cache = make_cache(small_tiers())
    floats = np.arange(24, dtype=np.float32).reshape(4, 6)
    cache.put(2, floats)
    assert cache.read(2).view(np.float32).reshape(4, 6).tolist() == floats.tolist()
    cache.put(3, bytearray(b"abc"))
    cache.put(4, memoryview(b"xyz"))
    out = bytearray(3)
    cache.read_into(4, out)
    assert bytes(out) == b"xyz"
    cache.check()


def test_replacement_reads_the_new_bytes(make_cache):
    cache = make_cache(small_tiers())
    cache.put(5, b"old" * 10)
    cache.put(5, b"new!")
    assert cache.read(5).tobytes() == b"new!"
    assert len(cache) == 1
    cache.check()


def test_promotion_moves_the_bytes_to_the_device_tier(make_cache):
    cache = make_cache(small_tiers())
    data = payload(9, 300)
    cache.put(9, data)
    for _ in range(3):
        cache.access(9)
    assert cache.get(9).tier == 1
    assert cache.location(9).tier == 1
    assert cache.read(9).tobytes() == data
    cache.demote(9)
    assert cache.get(9).tier == 0 and cache.read(9).tobytes() == data
    cache.check()


def test_promote_into_a_full_tier_swaps_bytes_correctly(make_cache):
    # The device tier holds exactly one entry: promoting B spills A into the
    # host tier, which only has room once B has left it (a swap).
    cache = make_cache(small_tiers(host=512, device=256))
    a, b = payload(1, 256), payload(2, 256)
    cache.put(1, a)
    cache.put(2, b)
    for _ in range(3):
        cache.access(1)
    assert cache.get(1).tier == 1
    cache.put(3, payload(3, 256))
    for _ in range(3):
        cache.access(2)
    assert cache.get(2).tier == 1
    assert cache.get(1).tier == 0
    assert cache.read(1).tobytes() == a and cache.read(2).tobytes() == b
    cache.check()


def test_evicted_entries_are_reported_after_their_bytes_are_gone(make_cache):
    left = []
    cache = make_cache(small_tiers(host=256, device=256), on_evict=left.append)
    for key in range(4):
        cache.put(key, payload(key, 128))
    assert [entry.key for entry in left] == [0, 1]
    assert 0 not in cache and cache.read(3).tobytes() == payload(3, 128)
    cache.check()


def test_bad_input_raises_and_changes_nothing(make_cache):
    cache = make_cache(small_tiers())
    cache.put(1, b"keep me")
    before = (list(cache), cache.read(1).tobytes(), [t.used for t in cache.tiers])
    with pytest.raises(TypeError, match="Fix:"):
        cache.put(2, 12345)
    with pytest.raises(ValueError, match="Fix:"):
        cache.put(2, np.arange(10, dtype=np.uint8)[::2])
    with pytest.raises(vc.EntryTooLargeError):
        cache.put(1, bytes(5000))
    with pytest.raises(ValueError, match="Fix:"):
        cache.read_into(1, bytearray(3))
    with pytest.raises(TypeError):
        cache.put(True, b"x")
    with pytest.raises(vc.KeyNotFoundError):
        cache.read(99)
    assert (list(cache), cache.read(1).tobytes(), [t.used for t in cache.tiers]) == before
    cache.check()


def put_with_holes(cache, count: int, size: int, every: int) -> None:
    """Put keys 0..count-1 of `size` bytes each, then remove every `every`-th from key 0: segments
    with live entries and free bytes between them."""
    for key in range(count):
        cache.put(key, payload(key, size))
    for key in range(0, count, every):
        cache.remove(key)


def test_cleaning_makes_room_without_evicting(make_cache):
    cache = make_cache(small_tiers(host=4096, device=16))
    put_with_holes(cache, 16, 256, every=2)
    evictions_before = cache.counters()[0]["evictions"]
    cache.put(100, payload(100, 1024))
    counters = cache.counters()[0]
    assert counters["evictions"] == evictions_before
    assert counters["fragmentation_evictions"] == 0
    assert counters["cleaning_bytes"] > 0
    for key in range(1, 16, 2):
        assert cache.read(key).tobytes() == payload(key, 256)
    assert cache.read(100).tobytes() == payload(100, 1024)
    cache.check()


def test_explicit_compaction_gathers_free_bytes_into_free_segments(make_cache):
    cache = make_cache(small_tiers(host=8192, device=16))
    put_with_holes(cache, 32, 200, every=3)
    fragmentation_before = cache.counters()[0]["fragmentation"]
    report = cache.compact(0)
    assert report.moves > 0 and report.bytes_moved > 0
    assert cache.counters()[0]["fragmentation"] < fragmentation_before
    assert cache.compact(0).bytes_moved == 0        # nothing left to gather
    for key in range(32):
        if key % 3:
            assert cache.read(key).tobytes() == payload(key, 200)
    cache.check()


def test_pinned_entries_keep_their_location_through_compaction(make_cache):
    cache = make_cache(small_tiers(host=8192, device=16))
    for key in range(20):
        cache.put(key, payload(key, 256))
    cache.pin(11)
    where = cache.location(11)
    for key in range(0, 11):
        cache.remove(key)
    cache.compact(0)
    assert cache.location(11) == where
    for key in range(11, 20):
        assert cache.read(key).tobytes() == payload(key, 256)
    cache.check()


def test_promote_many_moves_every_entry(make_cache):
    cache = make_cache(small_tiers(host=64 * 1024, device=32 * 1024))
    keys = np.arange(64, dtype=np.uint64)
    for key in keys.tolist():
        cache.put(key, payload(key, 512))
    for _ in range(3):
        for key in keys.tolist():
            cache.record_access(key)
    cache.promote_many(keys)
    assert cache.counters()[1]["promotions"] == 64
    for key in keys.tolist():
        assert cache.get(key).tier == 1 and cache.read(key).tobytes() == payload(key, 512)
    cache.demote_many(keys[:10])
    for key in keys.tolist():
        assert cache.read(key).tobytes() == payload(key, 512)
    cache.check()


def test_use_after_close_raises(make_cache):
    cache = make_cache(small_tiers())
    cache.put(1, b"x")
    cache.close()
    cache.close()
    for use in (lambda: cache.read(1), lambda: cache.put(2, b"y"), lambda: cache.get(1),
                lambda: len(cache), lambda: 1 in cache, lambda: list(cache), lambda: cache.tiers,
                lambda: cache.counters(), lambda: cache.compact(), lambda: cache.promote(1)):
        with pytest.raises(vc.CacheClosedError, match="Fix:"):
            use()


def test_unclosed_cache_warns_and_frees():
    cache = vc.BufferCache(small_tiers(), backend="host")
    cache.put(1, b"x")
    with pytest.warns(ResourceWarning):
        del cache
        gc.collect()


OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 15), st.sampled_from([0, 1, 15, 16, 17, 100, 250, 600, 1500])),
    st.tuples(st.just("read"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("access"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("promote"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("demote"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("pin"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("unpin"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("evict"), st.just(0), st.just(0)),
    st.tuples(st.just("compact"), st.integers(0, 1), st.just(0)),
)


@settings(max_examples=int(__import__("os").environ.get("VC_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPS, max_size=60), spill=st.booleans())
def test_differential_against_tiered_cache_and_a_dict(make_cache, operations, spill):
    left = []
    cache = make_cache(small_tiers(host=2048, device=1024), spill=spill, on_evict=left.append)
    reference = vc.TieredCache(small_tiers(host=2048, device=1024), spill=spill,
                               granularity=cache._backend.alignment)
    model: dict[int, bytes] = {}
    # Pinned entries can leave holes that compaction cannot close; then the cache
    # evicts more than the metadata-only engine would (counted as
    # fragmentation_evictions) and only the byte-level checks still apply.
    diverged = False
    for version, (op, key, size) in enumerate(operations):
        if diverged and op in ("put", "access", "promote", "demote", "remove", "pin", "unpin", "evict"):
            run_on_cache_only(cache, op, key, size, version, model)
            check_bytes(cache, model, left)
            continue
        outcomes = []
        for target in (cache, reference):
            try:
                if op in ("put", "remove") and key in reference and reference.pins(key):
                    # A pin protects the entry from replacement and removal too.
                    if target is reference:
                        raise vc.PinnedError("pinned")
                if op == "put":
                    if target is cache:
                        target.put(key, payload(key, size, version))
                    else:
                        target.insert(key, size)
                elif op == "read":
                    if target is cache and key in model:
                        assert cache.read(key).tobytes() == model[key]
                elif op == "access":
                    outcomes.append(target.access(key) if target is cache else reference_touch(reference, key))
                elif op == "promote":
                    target.promote(key)
                elif op == "demote":
                    target.demote(key)
                elif op == "remove":
                    target.remove(key)
                elif op == "pin":
                    target.pin(key)
                elif op == "unpin":
                    target.unpin(key)
                elif op == "evict":
                    outcomes.append(target.evict_coldest())
                elif op == "compact" and target is cache:
                    cache.compact(key)
                outcomes.append("ok")
            except vc.CacheError as error:
                outcomes.append(type(error))
        if op == "put" and outcomes[0] == "ok":
            model[key] = payload(key, size, version)
        if op == "remove" and outcomes[0] == "ok":
            model.pop(key, None)
        check_bytes(cache, model, left)
        if sum(tier["fragmentation_evictions"] for tier in cache.counters()):
            diverged = True
            continue
        assert outcomes[: len(outcomes) // 2] == outcomes[len(outcomes) // 2:], (op, key, outcomes)
        assert sorted(cache) == sorted(reference) == sorted(model)
        for present in model:
            assert cache.get(present) == reference.get(present)
        assert [(t.used, t.count) for t in cache.tiers] == [(t.used, t.count) for t in reference.tiers]
        reference.check()


def run_on_cache_only(cache, op, key, size, version, model):
    try:
        if op == "put":
            cache.put(key, payload(key, size, version))
            model[key] = payload(key, size, version)
        elif op == "remove":
            cache.remove(key)
            model.pop(key, None)
        elif op == "evict":
            cache.evict_coldest()
        else:
            getattr(cache, op)(key)
    except vc.CacheError:
        pass


def check_bytes(cache, model, left):
    """Every entry that left was reported; every present entry reads back its bytes."""
    for entry in left:
        assert entry.key not in cache
        model.pop(entry.key, None)
    left.clear()
    assert sorted(cache) == sorted(model)
    for present, data in model.items():
        assert cache.read(present).tobytes() == data
    cache.check()


def reference_touch(reference, key):
    """What BufferCache.access does, on the metadata-only cache."""
    entry = reference.get(key)
    if entry is None:
        return -1
    reference.record_access(key)
    reference.promote(key)
    return entry.tier


def test_open_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="Fix:"):
        open_backend("cuda")


def test_out_of_device_memory_at_creation_leaves_nothing_behind(vulkan_device, monkeypatch):
    # Creation allocates each tier's blocks, then the staging buffer: fail each one in turn.
    from device_only import DeviceOnlyBackend
    from vyrecache.vulkan import faults, live_objects
    tiers = [vc.CacheTier("host", 3 << 20, memory="host"), vc.CacheTier("vram", 2 << 20, memory="device")]
    real_allocate = vulkan_device.allocate_block
    calls = []

    def counting_allocate(memory_type_index, size):
        calls.append(size)
        if len(calls) == failing_call:
            faults.fail_next_allocation(1)
        return real_allocate(memory_type_index, size)

    monkeypatch.setattr(vulkan_device, "allocate_block", counting_allocate)
    failing_call = 0
    vulkan_device._staging and vulkan_device.free_block(vulkan_device._staging)
    vulkan_device._staging = None
    vc.BufferCache(tiers, backend=DeviceOnlyBackend(device=vulkan_device)).close()
    total_calls = len(calls)
    assert total_calls >= 3
    for failing_call in range(1, total_calls + 1):
        calls.clear()
        vulkan_device._staging and vulkan_device.free_block(vulkan_device._staging)
        vulkan_device._staging = None
        before = live_objects()
        try:
            with pytest.raises(vc.DeviceOutOfMemoryError, match="Fix:"):
                vc.BufferCache(tiers, backend=DeviceOnlyBackend(device=vulkan_device))
        finally:
            faults.reset()
        assert live_objects()["memory"] <= before["memory"], failing_call
        assert live_objects()["buffers"] <= before["buffers"], failing_call


def test_operations_never_allocate_device_memory(vulkan_device):
    # Every block and the staging buffer are taken at creation, so a pending injected failure
    # is never consumed by puts, reads, moves or compaction: nothing can fail half-way.
    from device_only import DeviceOnlyBackend
    from vyrecache.vulkan import faults
    backend = DeviceOnlyBackend(device=vulkan_device)
    with vc.BufferCache([vc.CacheTier("host", 8 << 20, memory="host"),
                         vc.CacheTier("vram", 1 << 20, memory="device")], backend=backend) as cache:
        faults.fail_next_allocation(1)
        try:
            for key in range(40):
                cache.put(key, payload(key, 200_000))
                cache.access(key % 7)
            cache.promote_many(np.arange(40, dtype=np.uint64))
            cache.compact()
            assert faults.pending_allocation_failures() == 1
        finally:
            faults.reset()
        for key in cache:
            assert cache.read(key).tobytes() == payload(key, 200_000)
        cache.check()


def test_two_hundred_caches_leave_no_vulkan_objects_and_flat_memory():
    import resource
    from vyrecache.vulkan import live_objects
    from vyrecache.vulkan.backend import VulkanBackend
    try:
        backend = VulkanBackend()
    except vc.VulkanUnavailableError as error:
        if __import__("os").environ.get("VYRECACHE_REQUIRE_VULKAN") == "1":
            raise
        pytest.skip(str(error))
    backend.close()
    baseline = {kind: count for kind, count in live_objects().items()}
    rss = []
    for round_ in range(200):
        with vc.BufferCache(small_tiers(1 << 20, 1 << 20), backend="vulkan") as cache:
            cache.put(round_, payload(round_, 4096))
            for _ in range(3):
                cache.access(round_)
            assert cache.read(round_).tobytes() == payload(round_, 4096)
        if round_ in (20, 199):
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert live_objects() == baseline
    assert rss[1] - rss[0] < 16 * 1024, "resident memory grew by %d KiB over 180 caches" % (rss[1] - rss[0])


def test_threads_sharing_a_cache_never_corrupt_bytes(make_cache):
    import threading
    cache = make_cache(small_tiers(host=64 * 1024, device=16 * 1024))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                key = int(rng.integers(0, 40))
                action = rng.integers(0, 4)
                if action == 0:
                    cache.put(key, payload(key, 700))
                elif action == 1:
                    try:
                        assert cache.read(key).tobytes() == payload(key, 700)
                    except vc.KeyNotFoundError:
                        pass
                elif action == 2:
                    cache.access(key)
                else:
                    try:
                        cache.demote(key)
                    except vc.KeyNotFoundError:
                        pass
        except BaseException as error:   # reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for key in cache:
        assert cache.read(key).tobytes() == payload(key, 700)
    cache.check()


def test_the_copy_executor_is_chosen_only_when_a_tier_needs_device_memory(vulkan_device):
    from device_only import DeviceOnlyBackend
    from vyrecache.compaction import CopyCommands, ShaderCopies
    from vyrecache.vulkan.backend import VulkanBackend
    backend = VulkanBackend(device=vulkan_device)          # "auto": nothing measured yet
    assert backend._executor is None
    cache = vc.BufferCache([vc.CacheTier("host", 1 << 20, "host")], backend=backend)
    # Every tier is mapped here (lavapipe), so the copies the storage makes are CPU copies and
    # the copy commands it records itself; no measurement ran.
    assert isinstance(backend.executor, CopyCommands)
    cache.close()
    shader = DeviceOnlyBackend(device=vulkan_device, compaction="shader")
    assert isinstance(shader.executor, ShaderCopies) and shader.transfer_queue() is None
    cache = vc.BufferCache([vc.CacheTier("host", 64 << 10, "host"), vc.CacheTier("vram", 64 << 10, "device")],
                           backend=shader)
    for key in range(20):
        cache.put(key, payload(key, 3000 + key))
        cache.access(key)
        cache.access(key)
        cache.access(key)
    for key in range(20):
        if key in cache:
            assert cache.read(key).tobytes() == payload(key, 3000 + key)
    cache.check()
    cache.close()
    with pytest.raises(ValueError, match="Fix:"):
        VulkanBackend(device=vulkan_device, compaction="fastest")


def test_a_batch_that_fails_part_way_keeps_bytes_and_metadata_together(make_cache):
    class Refuses(vc.TierPolicy):
        def should_promote(self, key, stats):
            if key == 5:
                raise RuntimeError("policy refuses key 5")
            return True

        def eviction_candidate(self, tier, cache):
            return None

    cache = make_cache(small_tiers(host=16384, device=8192), policy=Refuses())
    for key in range(10):
        cache.put(key, payload(key, 500))
    with pytest.raises(RuntimeError, match="refuses"):
        cache.promote_many(np.arange(10, dtype=np.uint64))
    assert cache.get(0).tier == 1            # keys before the failure were promoted
    for key in range(10):
        assert cache.read(key).tobytes() == payload(key, 500)
    cache.check()


def test_host_and_vulkan_backends_give_identical_layouts(vulkan_device):
    from vyrecache.vulkan.backend import VulkanBackend
    rng = np.random.default_rng(7)
    caches = [vc.BufferCache(small_tiers(host=32768, device=8192), backend="host"),
              vc.BufferCache(small_tiers(host=32768, device=8192), backend=VulkanBackend(device=vulkan_device))]
    try:
        for step in range(400):
            key, size, action = int(rng.integers(0, 60)), int(rng.integers(1, 3000)), rng.integers(0, 6)
            for cache in caches:
                try:
                    if action < 3:
                        cache.put(key, payload(key, size, step))
                    elif action == 3:
                        cache.access(key)
                    elif action == 4:
                        cache.remove(key)
                    else:
                        cache.compact(int(key % 2), max_bytes=4096)
                except vc.KeyNotFoundError:
                    pass
            host, device = caches
            assert sorted(host) == sorted(device)
            for present in host:
                a, b = host.location(present), device.location(present)
                assert (a.tier, a.offset, a.size) == (b.tier, b.offset, b.size)
        assert sum(c["compactions"] for c in caches[0].counters()) > 0
    finally:
        for cache in caches:
            cache.close()


def test_large_batches_stream_their_copies_byte_exactly(make_cache):
    # More than 4 MiB moved in one call takes the non-temporal copy path; odd sizes exercise
    # its unaligned heads and tails.
    sizes = [70001 + 37 * key for key in range(80)]           # about 5.5 MiB
    total = sum(sizes) + (1 << 20)
    cache = make_cache([vc.CacheTier("host", total, memory="host"),
                        vc.CacheTier("vram", total, memory="device")],
                       policy=vc.LruPolicy(promote_threshold=0))
    for key, size in enumerate(sizes):
        cache.put(key, payload(key, size))
    keys = np.arange(len(sizes), dtype=np.uint64)
    cache.promote_many(keys)
    assert all(cache.get(key).tier == 1 for key in range(len(sizes)))
    cache.demote_many(keys[::2])
    for key, size in enumerate(sizes):
        assert cache.read(key).tobytes() == payload(key, size)
    cache.check()

