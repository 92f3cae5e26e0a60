"""BufferCache with a remote tier on a real redis-server: victims leave tier 0 for Redis and come
back on a local miss with their bytes, another cache (another process) shares them, and a server
that goes away costs misses, never errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import vyrecache as vc

from helpers import closing_caches
from redis_servers import require_redis  # noqa: F401  (the fixtures below start their own servers)

pytestmark = pytest.mark.redis


def payload(key: int, size: int = 4096) -> bytes:
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(params=["host", "vulkan"])
def make_cache(request, redis_server):
    if request.param == "vulkan":
        request.getfixturevalue("require_vulkan")

    def new_cache(namespace="c", **options):
        remote = vc.RedisTier(redis_server.url, namespace=namespace, timeout=0.5)
        return vc.BufferCache([vc.CacheTier("host", 64 << 10, "host"), vc.CacheTier("vram", 16 << 10, "device")],
                              backend=request.param, remote=remote, **options)

    with closing_caches(new_cache) as build:
        yield build


def _written_back(cache) -> list[int]:
    """Put 60 keys, 240 KiB through a 64 KiB tier, and wait for the write-backs: the keys that
    left for Redis (most of them)."""
    for key in range(60):
        cache.put(key, payload(key))
    assert cache.flush(5.0)
    return [key for key in range(60) if key not in cache]


def test_victims_go_to_redis_and_come_back_with_their_bytes(make_cache):
    cache = make_cache()
    gone = _written_back(cache)
    assert len(gone) > 30
    assert cache.remote_counters()["writes"] >= len(gone)
    hits_before = cache.counters()[0]["hits"]
    assert cache.access(gone[0]) == 0           # a remote hit lands in tier 0, as a put would
    assert cache.read(gone[0]).tobytes() == payload(gone[0])
    assert cache.counters()[0]["hits"] == hits_before + 1
    assert cache.read(gone[1]).tobytes() == payload(gone[1])       # read() looks there too
    out = np.zeros((3, 4096), dtype=np.uint8)
    found = cache.read_many(np.array(gone[2:5], dtype=np.uint64), out)
    assert found.all() and out[0].tobytes() == payload(gone[2])
    tiers = cache.access_many(np.array(gone[5:8] + [10**6], dtype=np.uint64))
    assert tiers.tolist()[:3] == [0, 0, 0] and tiers[3] == -1
    assert cache.get(10**6) is None             # get and `in` stay local
    cache.check()


def test_write_through_writes_every_put(make_cache):
    cache = make_cache(namespace="through", remote_write="through")
    for key in range(5):
        cache.put(key, payload(key))
    assert cache.flush(5.0)
    assert cache.remote_counters()["writes"] >= 5


def test_another_process_reads_what_this_cache_evicted(make_cache, redis_server):
    cache = make_cache(namespace="shared")
    gone = _written_back(cache)[:5]
    code = textwrap.dedent(f"""
        import numpy as np, vyrecache as vc
        remote = vc.RedisTier({redis_server.url!r}, namespace="shared")
        with vc.BufferCache([vc.CacheTier("host", 64 << 10, "host")], backend="host", remote=remote) as other:
            for key in {gone!r}:
                expected = np.random.default_rng(key).integers(0, 256, 4096, dtype=np.uint8).tobytes()
                assert other.read(key).tobytes() == expected, key
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_a_server_that_dies_costs_misses_not_errors(make_cache, redis_server):
    cache = make_cache(namespace="dies")
    redis_server.kill()
    started = time.monotonic()
    with pytest.warns(vc.RemoteTierWarning):
        for key in range(60):
            cache.put(key, payload(key))
            cache.access(key + 1000)            # a local miss: the remote tier is only misses now
    assert time.monotonic() - started < 30
    assert len(cache) > 0
    cache.check()


def test_a_remote_tier_must_look_like_one():
    with pytest.raises(TypeError, match="Fix"):
        vc.BufferCache([vc.CacheTier("host", 4096, "host")], backend="host", remote=object())
    with pytest.raises(ValueError, match="Fix"):
        vc.BufferCache([vc.CacheTier("host", 4096, "host")], backend="host", remote=None,
                       remote_write="sometimes")


def _placed_by_remote_hits(cache, raw, namespace, count):
    """Keys that left `cache` for Redis and came back by a remote hit, then deleted from Redis, so
    that what is in Redis later is what the cache wrote back."""
    gone = _written_back(cache)[:count]
    for key in gone:
        assert cache.access(key) == 0
        raw.delete(b"%s:v1:%d" % (namespace.encode(), key))
    return gone


def _push_out(cache, keys):
    for key in range(1000, 1060):
        cache.put(key, payload(key))
    assert cache.flush(5.0)
    assert not any(key in cache for key in keys)


def test_a_victim_a_remote_hit_placed_is_not_written_back_unless_it_changed(make_cache, redis_server):
    cache = make_cache(namespace="clean")
    raw = redis_server.client()
    clean, changed, leased = _placed_by_remote_hits(cache, raw, "clean", 3)
    cache.put(changed, payload(changed + 1))
    with cache.lease(leased, writable=True):
        pass                                    # may have written the bytes in place
    _push_out(cache, [clean, changed, leased])
    assert raw.get(b"clean:v1:%d" % clean) is None                  # stored already: not sent again
    assert cache.read(changed).tobytes() == payload(changed + 1)   # written back, and read back
    assert cache.read(leased).tobytes() == payload(leased)
    cache.check()


@pytest.mark.parametrize("call", ["put", "put_many"])
def test_an_entry_put_with_write_back_false_never_reaches_the_remote_tier(make_cache, redis_server, call):
    cache = make_cache(namespace=f"local{call}", remote_write="through")
    raw = redis_server.client()
    keys = list(range(60))
    if call == "put":
        for key in keys:
            cache.put(key, payload(key), write_back=key % 2 == 0)
    else:
        cache.put_many(np.array(keys[0::2], dtype=np.uint64), [payload(key) for key in keys[0::2]])
        cache.put_many(np.array(keys[1::2], dtype=np.uint64), [payload(key) for key in keys[1::2]],
                       write_back=False)
    with cache.lease(keys[-1], writable=True):
        pass                                    # a lease does not make it remote-worthy
    for key in range(1000, 1060):
        cache.put(key, payload(key))            # every one of them is evicted
    assert cache.flush(5.0)
    assert not any(key in cache for key in keys)
    for key in keys:
        stored = raw.get(b"local%s:v1:%d" % (call.encode(), key))
        assert (stored is None) == (key % 2 == 1), key
    cache.put(1, payload(2))                    # a put without it: written back when it leaves
    for key in range(2000, 2060):
        cache.put(key, payload(key))
    assert cache.flush(5.0)
    assert cache.read(1).tobytes() == payload(2)
    cache.check()


@pytest.mark.parametrize("call", ["put", "put_many"])
@pytest.mark.parametrize("flag", ["no", 0, None])
def test_a_write_back_that_is_not_a_bool_is_refused_and_changes_nothing(call, flag):
    with vc.BufferCache([vc.CacheTier("host", 64 << 10, "host")], backend="host") as cache:
        cache.put(1, payload(1))
        with pytest.raises(TypeError, match=rf"{call}\(write_back=...\) takes True or False, got {flag!r}"):
            if call == "put":
                cache.put(2, payload(2), write_back=flag)
            else:
                cache.put_many(np.array([2], dtype=np.uint64), [payload(2)], write_back=flag)
        assert sorted(cache) == [1] and cache.read(1).tobytes() == payload(1)
        cache.check()


def test_with_a_ttl_or_after_a_failed_round_trip_every_victim_is_written_back(redis_servers):
    server = redis_servers.start()
    raw = server.client()
    for options, fail in (({"ttl": 60}, False), ({}, True)):
        namespace = f"renew{fail}"
        remote = vc.RedisTier(server.url, namespace=namespace, timeout=0.5, **options)
        with vc.BufferCache([vc.CacheTier("host", 64 << 10, "host")], backend="host", remote=remote) as cache:
            key, = _placed_by_remote_hits(cache, raw, namespace, 1)
            if fail:
                server.pause()
                with pytest.warns(vc.RemoteTierWarning):
                    remote.fetch_many([10**6])          # times out: the server may have lost its entries
                server.resume()
                time.sleep(0.3)                         # past the breaker's first back-off
            _push_out(cache, [key])
            assert raw.get(b"%s:v1:%d" % (namespace.encode(), key)) is not None, options


def test_an_evicted_entry_read_back_at_once_is_its_newest_bytes(make_cache, redis_server):
    cache = make_cache(namespace="newest")
    cache.put(1, payload(1))
    for key in range(100, 160):
        cache.put(key, payload(key))
    assert cache.flush(5.0) and 1 not in cache
    cache.put(1, payload(2))                    # a new value for the key Redis holds an old one of
    redis_server.pause()                        # its write-back cannot be sent
    try:
        for key in range(200, 260):
            cache.put(key, payload(key))
        assert 1 not in cache
        assert cache.read(1).tobytes() == payload(2)     # the queued write-back, not Redis's copy
    finally:
        redis_server.resume()


def test_prefetch_brings_absent_keys_in_one_round_trip_before_they_are_accessed(make_cache, redis_server):
    cache = make_cache(namespace="prefetch")
    gone = _written_back(cache)[:5]
    raw = redis_server.client()
    raw.config_resetstat()
    cache.prefetch(np.array(gone + [10**6] + [key for key in range(60) if key in cache][:3], dtype=np.uint64))
    tiers = cache.access_many(np.array(gone + [10**6], dtype=np.uint64))
    assert tiers.tolist() == [0] * 5 + [-1]
    assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 1
    assert all(cache.read(key).tobytes() == payload(key) for key in gone)
    with pytest.raises(ValueError, match="Fix"):
        cache.prefetch([-1])
    cache.check()


def test_prefetch_without_a_remote_tier_does_nothing():
    with vc.BufferCache([vc.CacheTier("host", 64 << 10, "host")], backend="host") as cache:
        cache.prefetch([1, 2, 3])
        assert len(cache) == 0


@pytest.mark.parametrize("decode_write_back", [False, True])
def test_the_remote_demo_keeps_its_decode_blocks_local_unless_asked(redis_server, capsys, decode_write_back):
    from vyrecache.cli import main
    from vyrecache.cli.workload import DECODE_KEY_BASE

    raw = redis_server.client()
    raw.flushall()
    args = ["demo", "--backend", "host", "--entries", "300", "--requests", "600", "--duration", "30",
            "--host-size", "512KiB", "--device-size", "128KiB", "--block-size", "4KiB", "--json", "--quiet",
            "--remote", redis_server.url] + (["--decode-write-back"] if decode_write_back else [])
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"]["checked"] > 0 and result["verified"]["mismatched"] == 0
    assert result["remote"]["hits"] > 0 and result["remote"]["errors"] == 0
    stored = [int(name.rsplit(b":", 1)[1]) for name in raw.scan_iter(b"vyrecache-demo-0:v1:*")]
    assert any(key < DECODE_KEY_BASE for key in stored)            # evicted prefix blocks
    assert any(key >= DECODE_KEY_BASE for key in stored) == decode_write_back
