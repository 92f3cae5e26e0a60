"""RedisTier against real redis-server processes (see redis_servers.py): round trips, sharing
between processes, crashes and restarts, server-side eviction, corrupt values, a full write queue,
a three-master cluster, and bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import vyrecache as vc
from vyrecache.remote.format import HEADER_SIZE, encode, key_prefix

from redis_servers import free_port, require_redis

pytestmark = pytest.mark.redis

TIMEOUT = 0.2
# Generous bound on one call of a tier whose server misbehaves: a round trip costs at most the
# socket timeout twice (connect, then reply), plus scheduling noise on a loaded 2-core machine.
CALL_BOUND = 4 * TIMEOUT + 0.5


def payload(key: int, size: int) -> bytes:
    return np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8).tobytes()


def wait_until(predicate, seconds: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def tier(redis_server):
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="t") as made:
        yield made


def test_import_vyrecache_does_not_import_redis():
    code = "import sys, vyrecache; vyrecache.RedisTier; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_many_entries_round_trip_including_empty_and_16_kib_values(tier):
    sizes = [0, 1, 15, 16 << 10, 1000, 0, 16 << 10]
    keys = list(range(10, 10 + 700))
    values = [payload(key, sizes[key % len(sizes)]) for key in keys]
    tier.write_many(keys, values)
    assert tier.flush(10)
    assert tier.fetch_many(keys) == values
    assert tier.fetch(keys[0]) == values[0]
    counts = tier.counters()
    assert counts["writes"] == len(keys) and counts["dropped"] == 0 and counts["errors"] == 0
    assert counts["hits"] == len(keys) + 1 and counts["misses"] == 0
    assert counts["bytes_written"] == sum(map(len, values))
    assert counts["bytes_read"] == sum(map(len, values)) + len(values[0])
    assert 0 < counts["latency"]["fetch_p50"] <= counts["latency"]["fetch_p99"] < 5
    assert 0 < counts["latency"]["write_p50"] <= counts["latency"]["write_p99"] < 5


def test_values_may_be_any_contiguous_buffer_and_are_copied_at_write(tier):
    array = np.arange(1000, dtype=np.float32)
    buffer = bytearray(b"abc" * 100)
    tier.write_many(np.array([1, 2, 2**64 - 1], dtype=np.uint64), [array, buffer, memoryview(b"top")])
    buffer[:] = b"x" * len(buffer)  # the queued copy must not see this
    assert tier.flush(10)
    assert tier.fetch_many([1, 2, 2**64 - 1]) == [array.tobytes(), b"abc" * 100, b"top"]


def test_missing_keys_are_misses_and_a_fetch_is_one_round_trip(tier, redis_server):
    tier.write_many([1, 2], [b"one", b"two"])
    assert tier.flush(10)
    raw = redis_server.client()
    raw.config_resetstat()
    assert tier.fetch_many(list(range(100))) == [None, b"one", b"two"] + [None] * 97
    stats = raw.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert not any(name in stats for name in ("cmdstat_get", "cmdstat_del"))
    assert tier.counters()["misses"] == 98 and tier.counters()["hits"] == 2


def test_stored_under_the_documented_key_with_a_header(tier, redis_server):
    tier.write(77, b"payload")
    assert tier.flush(10)
    stored = redis_server.client().get(b"t:v1:77")
    assert stored is not None and stored[:4] == b"VYRC" and stored[HEADER_SIZE:] == b"payload"
    assert len(stored) == HEADER_SIZE + len(b"payload")


def test_ttl_expires_entries(redis_server):
    with vc.RedisTier(redis_server.url, ttl=0.3, timeout=TIMEOUT) as tier:
        tier.write(5, b"short-lived")
        assert tier.flush(10)
        assert 0 < redis_server.client().pttl(b"vyrecache:v1:5") <= 300
        assert tier.fetch(5) == b"short-lived"
        assert wait_until(lambda: tier.fetch(5) is None, 5)


def test_another_process_with_the_same_namespace_shares_entries(redis_server):
    script = textwrap.dedent(f"""
        import vyrecache as vc
        with vc.RedisTier({redis_server.url!r}, namespace="shared") as tier:
            tier.write_many(range(200), [bytes([k % 256]) * k for k in range(200)])
            assert tier.flush(10)
            assert tier.counters()["writes"] == 200, tier.counters()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with vc.RedisTier(redis_server.url, namespace="shared") as tier, \
            vc.RedisTier(redis_server.url, namespace="other") as other:
        assert tier.fetch_many(range(200)) == [bytes([k % 256]) * k for k in range(200)]
        assert other.fetch_many(range(200)) == [None] * 200


def test_corrupt_truncated_and_foreign_values_are_never_served_and_are_deleted(tier, redis_server):
    keys = list(range(1, 9))
    tier.write_many(keys, [payload(key, 4096) for key in keys])
    assert tier.flush(10)
    raw = redis_server.client()
    prefix = key_prefix("t")
    name = {key: prefix + b"%d" % key for key in keys}
    good = raw.get(name[1])
    raw.set(name[1], good[:-1])                                   # truncated payload
    raw.set(name[2], good[: HEADER_SIZE - 3])                     # truncated header
    flipped = bytearray(raw.get(name[3]))
    flipped[HEADER_SIZE + 100] ^= 0x01
    raw.set(name[3], bytes(flipped))                              # one flipped bit
    raw.set(name[4], raw.get(name[5]))                            # another key's value, copied
    raw.set(name[6], b"some other program's value")               # foreign
    raw.set(name[7], good[:4] + b"\x02\x00" + good[6:])           # a future format version
    raw.set(name[8], b"")                                         # empty
    raw.config_resetstat()
    found = tier.fetch_many(keys)
    assert found[4] == payload(5, 4096)
    assert found[:4] == [None] * 4 and found[5:] == [None] * 3
    counts = tier.counters()
    assert counts["corrupt"] == 7 and counts["hits"] == 1 and counts["misses"] == 7
    assert tier.flush(10)
    assert raw.exists(*[name[key] for key in keys if key != 5]) == 0
    assert raw.exists(name[5]) == 1
    assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 1
    assert tier.fetch_many(keys)[4] == payload(5, 4096) and tier.counters()["corrupt"] == 7


def test_a_full_write_queue_drops_new_writes_and_counts_them(redis_server):
    value = payload(1, 16 << 10)
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, max_pending_bytes=64 << 10) as tier:
        started = time.perf_counter()
        tier.write_many(range(100), [value] * 100)
        assert time.perf_counter() - started < 1.0
        fit = (64 << 10) // (HEADER_SIZE + len(value))
        assert tier.counters()["dropped"] == 100 - fit
        tier.write(1000, payload(2, 1 << 20))  # larger than the whole queue
        assert tier.flush(10)
        counts = tier.counters()
        assert counts["writes"] == fit and counts["dropped"] == 100 - fit + 1
        assert counts["pending_bytes"] == 0
        found = tier.fetch_many(range(100))
        assert found[:fit] == [value] * fit and found[fit:] == [None] * (100 - fit)
        tier.write(2000, value)  # room again once the queue has drained
        assert tier.flush(10) and tier.fetch(2000) == value


def test_server_side_lru_evictions_are_misses(redis_servers):
    server = redis_servers.start("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    with vc.RedisTier(server.url, timeout=1.0) as tier:
        keys = list(range(1000))
        for start in range(0, 1000, 100):
            tier.write_many(keys[start:start + 100], [payload(key, 16 << 10) for key in keys[start:start + 100]])
            assert tier.flush(10)
        found = tier.fetch_many(keys)
        counts = tier.counters()
        assert counts["errors"] == 0 and counts["corrupt"] == 0 and counts["writes"] == 1000
        assert 0 < counts["hits"] < 1000 and counts["hits"] + counts["misses"] == 1000
        assert all(value is None or value == payload(key, 16 << 10) for key, value in zip(keys, found))
        assert server.client().info("stats")["evicted_keys"] > 0


def test_sigkill_mid_run_costs_bounded_time_then_the_tier_resumes_after_restart(redis_servers):
    server = redis_servers.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vc.RedisTier(server.url, timeout=TIMEOUT) as tier:
            tier.write_many(range(50), [b"before"] * 50)
            assert tier.flush(10) and tier.fetch(3) == b"before"
            server.kill()
            slowest = 0.0
            deadline = time.monotonic() + 1.5
            operations = served = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                found = tier.fetch_many(range(50))
                # misses, but for the writes of the last iteration that the writer thread has not
                # settled yet: a queued write is served its own bytes
                assert set(found) <= {None, b"during"}
                served += sum(value is not None for value in found)
                tier.write_many(range(50), [b"during"] * 50)
                slowest = max(slowest, time.perf_counter() - started)
                operations += 1
            assert slowest < CALL_BOUND
            assert operations > 10  # with the circuit open, calls are immediate
            assert tier.flush(CALL_BOUND * 3)
            assert tier.fetch_many(range(50)) == [None] * 50    # dropped writes are not served
            counts = tier.counters()
            assert counts["errors"] >= 1 and counts["dropped"] >= 50 and counts["hits"] == 1 + served
            assert counts["fetch_circuit_open"] == 1
            restarted = redis_servers.start(port=server.port)

            def resumed() -> bool:
                tier.write(1, b"after")
                tier.flush(CALL_BOUND * 3)
                return tier.fetch(1) == b"after"
            assert wait_until(resumed, 10)
            assert tier.counters()["fetch_circuit_open"] == 0
            assert restarted.client().get(b"vyrecache:v1:1") is not None
    opened = [w for w in caught if issubclass(w.category, vc.RemoteTierWarning)]
    assert 1 <= len(opened) <= 2, [str(w.message) for w in caught]  # once per outage and breaker
    assert "Fix:" in str(opened[0].message)


def test_a_stalled_server_costs_one_timeout_then_fetches_are_immediate_misses(redis_server):
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT) as tier:
        tier.write(9, b"nine")
        assert tier.flush(10)
        redis_server.pause()
        try:
            with pytest.warns(vc.RemoteTierWarning):
                started = time.perf_counter()
                assert tier.fetch(9) is None
                assert time.perf_counter() - started < CALL_BOUND
            started = time.perf_counter()
            for _ in range(100):
                assert tier.fetch(9) is None
            assert time.perf_counter() - started < 0.5  # no network wait, room for a busy machine
            assert tier.counters()["errors"] == 1
        finally:
            redis_server.resume()
        assert wait_until(lambda: tier.fetch(9) == b"nine", 10)


def test_the_writer_thread_survives_any_error(tier):
    original = tier._connection.set_many
    failures = iter([ZeroDivisionError("boom"), MemoryError(), KeyboardInterrupt()])

    def failing(*args):
        error = next(failures, None)
        if error is not None:
            raise error
        return original(*args)

    tier._connection.set_many = failing
    for key in range(3):
        tier.write(key, b"lost")
        assert tier.flush(10)
    assert tier._queue.alive
    counts = tier.counters()
    assert counts["errors"] == 3 and counts["dropped"] == 3 and counts["writes"] == 0
    tier.write(7, b"kept")
    assert tier.flush(10) and tier.fetch(7) == b"kept"
    assert tier.counters()["write_circuit_open"] == 0


def test_a_server_refusing_writes_opens_only_the_write_circuit(redis_servers):
    server = redis_servers.start("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    with vc.RedisTier(server.url, timeout=TIMEOUT) as tier:
        tier.write(1, b"small")
        assert tier.flush(10)
        with pytest.warns(vc.RemoteTierWarning, match="for writes"):
            for start in range(0, 400, 20):
                tier.write_many(range(100 + start, 120 + start), [payload(start, 16 << 10)] * 20)
                tier.flush(10)
        counts = tier.counters()
        assert counts["errors"] >= 1 and counts["dropped"] > 0 and counts["write_circuit_open"] == 1
        assert tier.fetch(1) == b"small" and tier.counters()["fetch_circuit_open"] == 0


def test_close_is_idempotent_and_sends_what_is_queued(redis_server):
    tier = vc.RedisTier(redis_server.url)
    tier.write_many(range(100), [b"v"] * 100)
    tier.close()
    tier.close()
    assert redis_server.client().dbsize() == 100
    assert tier.counters()["writes"] == 100
    with pytest.raises(vc.CacheClosedError, match="Fix:"):
        tier.fetch(1)
    with pytest.raises(vc.CacheClosedError, match="Fix:"):
        tier.write(1, b"x")
    assert tier.flush() is True
    assert "closed" in repr(tier)


def test_reset_counters(tier):
    tier.write(1, b"x")
    assert tier.flush(10)
    tier.fetch_many([1, 2])
    tier.reset_counters()
    counts = tier.counters()
    assert all(counts[name] == 0 for name in ("hits", "misses", "writes", "bytes_read", "bytes_written"))
    assert counts["latency"] == {"fetch_p50": 0.0, "fetch_p99": 0.0, "write_p50": 0.0, "write_p99": 0.0}


def test_concurrent_fetches_and_writes_from_many_threads(tier):
    errors: list[BaseException] = []

    def work(base: int) -> None:
        try:
            for _ in range(20):
                keys = list(range(base, base + 50))
                tier.write_many(keys, [b"%d" % key for key in keys])
                tier.flush(10)
                found = tier.fetch_many(keys)
                assert found == [b"%d" % key for key in keys]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(1000 * index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert tier.counters()["hits"] == 4 * 20 * 50


# -- the cluster -------------------------------------------------------------------------------------

def test_cluster_round_trip_spreads_keys_over_all_three_masters(redis_cluster):
    keys = list(range(300))
    values = [payload(key, (key % 4) * 4096) for key in keys]
    with vc.RedisTier(cluster=redis_cluster.nodes, namespace="c", timeout=1.0) as tier:
        tier.write_many(keys, values)
        assert tier.flush(10)
        assert tier.fetch_many(keys) == values
        assert tier.fetch_many([10_000, 10_001]) == [None, None]
        counts = tier.counters()
        assert counts["writes"] == 300 and counts["hits"] == 300 and counts["errors"] == 0
    per_master = []
    for server in redis_cluster.servers:
        client = server.client()
        per_master.append(sum(1 for _ in client.scan_iter(match="c:v1:*", count=1000)))
        client.close()
    assert sum(per_master) == 300 and all(count > 50 for count in per_master), per_master


def test_cluster_true_uses_the_url_as_a_startup_node(redis_cluster):
    with vc.RedisTier(f"redis://{redis_cluster.nodes[1]}", cluster=True, namespace="c1", timeout=1.0) as tier:
        tier.write_many(range(50), [b"x" * key for key in range(50)])
        assert tier.flush(10)
        assert tier.fetch_many(range(50)) == [b"x" * key for key in range(50)]


def test_cluster_corrupt_values_are_deleted(redis_cluster):
    import redis
    with vc.RedisTier(cluster=redis_cluster.nodes, namespace="c2", timeout=1.0) as tier:
        tier.write_many(range(20), [b"good"] * 20)
        assert tier.flush(10)
        raw = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.servers[0].port)
        for key in range(0, 20, 2):
            raw.set(b"c2:v1:%d" % key, b"garbage")
        assert tier.fetch_many(range(20)) == [None, b"good"] * 10
        assert tier.counters()["corrupt"] == 10
        assert tier.flush(10)
        assert all(raw.get(b"c2:v1:%d" % key) is None for key in range(0, 20, 2))
        raw.close()


@pytest.mark.slow
def test_a_cluster_master_killed_mid_run_costs_bounded_time_and_the_tier_resumes(redis_servers):
    from redis_servers import start_cluster
    cluster = start_cluster(redis_servers)
    victim = cluster.servers[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vc.RemoteTierWarning)
        with vc.RedisTier(cluster=cluster.nodes, namespace="k", timeout=TIMEOUT) as tier:
            tier.write_many(range(100), [b"v%d" % key for key in range(100)])
            assert tier.flush(10) and tier.fetch_many(range(100)) == [b"v%d" % key for key in range(100)]
            victim.kill()
            slowest = 0.0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                started = time.perf_counter()
                found = tier.fetch_many(range(100))
                tier.write_many(range(100, 200), [b"w"] * 100)  # other keys: a queued write is served
                slowest = max(slowest, time.perf_counter() - started)
                assert found.count(None) >= 1  # the victim's share, at least, is missed
            assert slowest < 2 * CALL_BOUND
            assert tier.counters()["errors"] >= 1
            victim.start()  # same port and directory: it rejoins with its nodes.conf, without its entries

            def resumed() -> bool:
                tier.write_many(range(100), [b"x%d" % key for key in range(100)])
                tier.flush(5)
                return tier.fetch_many(range(100)) == [b"x%d" % key for key in range(100)]
            assert wait_until(resumed, 30, step=0.2)


# -- bad arguments and unreachable servers ----------------------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:6379", "scheme 'http'"),
    ("127.0.0.1:6379", "scheme"),
    ("redis://127.0.0.1:notaport/0", "not a valid Redis URL"),
    ("redis://127.0.0.1:70000/0", "not a valid Redis URL"),
    ("redis:///0", "names no host"),
    ("redis://127.0.0.1:6379/db", "database 'db'"),
    ("redis://127.0.0.1:0/0", "port 0"),
])
def test_malformed_urls_raise_value_error_naming_the_url(url, words):
    require_redis()
    with pytest.raises(ValueError, match="Fix:") as raised:
        vc.RedisTier(url)
    assert words in str(raised.value) and repr(url) in str(raised.value)


@pytest.mark.parametrize("arguments, words", [
    ({"url": 6379}, "url must be a str"),
    ({"namespace": ""}, "namespace"),
    ({"namespace": "a b"}, "namespace"),
    ({"namespace": "{tag}"}, "braces"),
    ({"ttl": 0}, "ttl"),
    ({"ttl": float("inf")}, "ttl"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"max_pending_bytes": 0}, "max_pending_bytes"),
    ({"max_pending_bytes": 1.5}, "max_pending_bytes"),
    ({"cluster": []}, "startup nodes"),
    ({"cluster": ["127.0.0.1:x"]}, "'127.0.0.1:x'"),
    ({"cluster": [("127.0.0.1", "7000")]}, "needs a host name and a port"),
    ({"url": "redis://127.0.0.1:7000/3", "cluster": True}, "only database 0"),
])
def test_bad_arguments_raise_with_a_fix(arguments, words):
    require_redis()
    with pytest.raises((ValueError, TypeError), match="Fix:") as raised:
        vc.RedisTier(**arguments)
    assert words in str(raised.value)


def test_bad_keys_and_values_raise_and_queue_nothing(tier):
    for keys, error in (([-1], ValueError), ([2**64], ValueError), ([1.0], TypeError), ([True], TypeError),
                        (["1"], TypeError), ("12", TypeError), (np.array([-1]), ValueError),
                        (np.array([1.0]), TypeError)):
        with pytest.raises(error, match="Fix:"):
            tier.fetch_many(keys)
        with pytest.raises(error, match="Fix:"):
            tier.write_many(keys, [b"x"] * (len(keys) if not isinstance(keys, str) else 2))
    with pytest.raises(TypeError, match="key 1 is a str, not a bytes-like.*Fix:"):
        tier.write(1, "text")
    with pytest.raises(ValueError, match="non-contiguous.*Fix:"):
        tier.write(1, np.arange(10)[::2])
    with pytest.raises(ValueError, match="2 keys but 1 values.*Fix:"):
        tier.write_many([1, 2], [b"x"])
    assert tier.flush(10)
    assert tier.counters()["writes"] == 0 and tier.counters()["dropped"] == 0
    assert tier.fetch_many([]) == [] and tier.write_many([], []) is None
    for timeout in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="flush timeout.*Fix:"):
            tier.flush(timeout)
    assert tier.flush(0) is True


def test_an_unreachable_server_warns_and_serves_misses_until_it_comes_up(redis_servers):
    port = free_port()
    with pytest.warns(vc.RemoteTierWarning, match=f"127.0.0.1:{port}.*Fix:"):
        started = time.perf_counter()
        tier = vc.RedisTier(f"redis://127.0.0.1:{port}/0", timeout=TIMEOUT)
    with tier:
        assert time.perf_counter() - started < CALL_BOUND
        assert tier.fetch(1) is None
        tier.write(1, b"dropped")
        assert tier.counters()["dropped"] == 1 and tier.counters()["misses"] == 1
        redis_servers.start(port=port)

        def works() -> bool:
            tier.write(2, b"late")
            tier.flush(5)
            return tier.fetch(2) == b"late"
        assert wait_until(works, 10)


def test_an_unroutable_host_costs_at_most_the_timeout():
    require_redis()
    started = time.perf_counter()
    with pytest.warns(vc.RemoteTierWarning):
        tier = vc.RedisTier("redis://192.0.2.1:6379/0", timeout=TIMEOUT)  # TEST-NET-1, never routed
    with tier:
        assert time.perf_counter() - started < CALL_BOUND
        started = time.perf_counter()
        assert tier.fetch_many(range(10)) == [None] * 10
        assert time.perf_counter() - started < 0.5  # the circuit is open: no network wait at all


def test_an_unreachable_cluster_warns_and_serves_misses():
    require_redis()
    port = free_port()
    with pytest.warns(vc.RemoteTierWarning):
        tier = vc.RedisTier(cluster=[f"127.0.0.1:{port}"], timeout=TIMEOUT)
    with tier:
        assert tier.fetch(1) is None and tier.counters()["misses"] == 1


def test_missing_redis_py_gives_an_import_error_with_the_fix():
    code = textwrap.dedent("""
        import sys
        sys.modules['redis'] = None
        import vyrecache as vc
        try:
            vc.RedisTier()
        except ImportError as error:
            assert 'Fix: pip install' in str(error), error
        else:
            raise SystemExit('no ImportError')
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


# -- the value format, without a server ----------------------------------------------------------------

def test_the_header_is_the_documented_struct_and_every_field_is_checked():
    from vyrecache.remote.format import HEADER, decode, decode_many, xxh64
    body = b"some payload"
    value = HEADER.pack(b"VYRC", 1, 0, 42, len(body), xxh64(body)) + body
    assert encode(42, memoryview(body)) == value
    assert decode(42, value) == body and decode(42, encode(42, memoryview(b""))) == b""
    fields = [b"VYRX", 2, 1, 43, len(body) + 1, xxh64(body) ^ 1]
    for position, wrong in enumerate(fields):
        parts = [b"VYRC", 1, 0, 42, len(body), xxh64(body)]
        parts[position] = wrong
        assert decode(42, HEADER.pack(*parts) + body) is None, position
    assert decode(42, value + b"x") is None and decode(42, value[:-1]) is None and decode(42, "text") is None
    values = [value, None, b"junk", value]
    assert decode_many([42, 42, 42, 7], values) == (1, len(body), [2, 3])
    assert values == [body, None, None, None]
    assert value[HEADER_SIZE:] == body and len(value) == HEADER_SIZE + len(body)  # still whole


def test_decoding_in_place_never_changes_a_value_someone_else_holds():
    from vyrecache.remote.format import decode_many
    payloads = [bytes([n]) * (16 << 10) for n in range(8)]
    fresh = [encode(n, memoryview(payloads[n])) for n in range(8)]
    kept = fresh[2], fresh[5]
    batch = [bytes(bytearray(value)) if n not in (2, 5) else value for n, value in enumerate(fresh)]
    del fresh
    assert decode_many(list(range(8)), batch) == (8, 8 * (16 << 10), [])
    assert batch == payloads
    assert kept[0][HEADER_SIZE:] == payloads[2] and kept[1][HEADER_SIZE:] == payloads[5]
    assert len(kept[0]) == len(kept[1]) == HEADER_SIZE + (16 << 10)


def test_xxh64_matches_the_published_test_vectors():
    from vyrecache.remote.format import xxh64
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"abc") == 0x44BC2CF5AD770999
    data = bytes(range(256)) * 3
    assert xxh64(data) != xxh64(data[:-1]) != xxh64(data, 1)


def test_a_tier_nobody_closed_is_collected_with_a_resource_warning_and_its_thread_ends(redis_server):
    import gc
    tier = vc.RedisTier(redis_server.url)
    tier.write(1, b"x")
    assert tier.flush(10)
    queue = tier._queue
    with pytest.warns(ResourceWarning, match="never closed.*Fix:"):
        del tier
        gc.collect()
    assert wait_until(lambda: not queue.alive, 5)


# -- the write path, queued writes, prefetches and the C round trips ---------------------------------

def test_a_queued_write_is_served_before_it_is_sent_and_the_server_is_not_asked(redis_server):
    raw = redis_server.client()
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="q") as tier:
        tier.write(1, b"old")
        assert tier.flush(10)
        redis_server.pause()            # the writer cannot send: the new value stays queued
        try:
            tier.write(1, b"new")
            assert tier.fetch_many([1]) == [b"new"]     # never the server's older b"old"
            assert tier.counters()["hits"] == 1
        finally:
            redis_server.resume()
        assert tier.flush(10)
        raw.config_resetstat()
        assert tier.fetch(1) in (b"new", b"old")        # sent, or dropped by a timed-out round trip
        assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 1


def test_a_write_is_sent_without_a_flush_within_the_linger(redis_server):
    raw = redis_server.client()
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="linger") as tier:
        tier.write(3, b"soon")
        assert wait_until(lambda: raw.get(b"linger:v1:3") is not None, 2.0)


def test_prefetched_keys_cost_no_round_trip_of_their_own(redis_server):
    raw = redis_server.client()
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="pf") as tier:
        tier.write_many(range(10), [payload(key, 4096) for key in range(10)])
        assert tier.flush(10)
        raw.config_resetstat()
        tier.prefetch_many(range(20))
        assert tier.fetch_many(range(20)) == [payload(key, 4096) for key in range(10)] + [None] * 10
        assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 1      # the prefetch's
        assert tier.fetch_many(range(10)) == [payload(key, 4096) for key in range(10)]
        assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 2      # taken: asked again
        counts = tier.counters()
        assert counts["hits"] == 20 and counts["misses"] == 10


def test_a_fetch_reads_only_the_prefetches_it_needs_and_a_later_reply_stays_whole(redis_server):
    """Two prefetches answered before either is read: the fetch of the first batch's keys reads
    that reply alone (never into the one behind it), the second stays under way while other keys
    are fetched, and is served whole later."""
    raw = redis_server.client()
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="pf2") as tier:
        values = {key: payload(key, 1000 + 97 * key) for key in range(40)}
        tier.write_many(list(values), list(values.values()))
        assert tier.flush(10)
        tier.prefetch_many(range(0, 20))
        tier.prefetch_many(list(range(20, 40)) + [10**6])
        assert wait_until(lambda: raw.info("commandstats")["cmdstat_mget"]["calls"] >= 2, 2.0)
        time.sleep(0.05)                          # both replies wait on the socket
        assert tier.fetch_many(range(0, 20)) == [values[key] for key in range(0, 20)]
        assert len(tier._prefetches.outstanding()) == 1      # the second batch is not read yet
        assert tier.fetch_many([10**7, 3]) == [None, values[3]]   # a round trip of its own, meanwhile
        assert tier.fetch_many(list(range(20, 40)) + [10**6]) == [values[key] for key in range(20, 40)] + [None]
        counts = tier.counters()
        assert counts["errors"] == 0 and counts["corrupt"] == 0
        assert raw.info("commandstats")["cmdstat_mget"]["calls"] == 3


def test_fetch_many_returns_bytes_and_fetch_views_views_that_outlive_their_round_trip(redis_server):
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="views") as tier:
        values = {key: payload(key, 500 + key) for key in range(8)}
        tier.write_many(list(values), list(values.values()))
        assert tier.flush(10)
        tier.prefetch_many(range(4))
        fetched = tier.fetch_many(range(8))               # half from the prefetch, half asked
        assert fetched == [values[key] for key in range(8)]
        assert all(type(value) is bytes for value in fetched)
        tier.prefetch_many(range(4))
        views = tier.fetch_views(list(range(8)) + [99])
        assert views[-1] is None and all(type(view) is memoryview and view.readonly for view in views[:-1])
        tier.fetch_many(range(8))                         # later round trips leave them as they were
        assert [bytes(view) for view in views[:-1]] == [values[key] for key in range(8)]


def test_a_write_after_a_prefetch_wins_over_what_the_prefetch_brought(redis_server):
    with vc.RedisTier(redis_server.url, timeout=TIMEOUT, namespace="pfw") as tier:
        tier.write(5, b"before")
        assert tier.flush(10)
        tier.prefetch_many([5])
        tier.write(5, b"after")
        assert tier.fetch(5) == b"after"
        assert tier.flush(10)
        assert tier.fetch(5) == b"after"


def test_prefetch_checks_its_keys_and_a_closed_tier_refuses(redis_server):
    tier = vc.RedisTier(redis_server.url, timeout=TIMEOUT)
    with pytest.raises(ValueError, match="Fix"):
        tier.prefetch_many([-1])
    with pytest.raises(TypeError, match="Fix"):
        tier.prefetch_many("abc")
    tier.close()
    with pytest.raises(vc.CacheClosedError, match="Fix"):
        tier.prefetch_many([1])


def test_a_prefetch_from_a_dead_server_is_misses_within_the_timeout(redis_servers):
    server = redis_servers.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vc.RemoteTierWarning)
        with vc.RedisTier(server.url, timeout=TIMEOUT) as tier:
            tier.write(1, b"x")
            assert tier.flush(10)
            server.kill()
            started = time.monotonic()
            tier.prefetch_many([1, 2])
            assert tier.fetch_many([1, 2]) == [None, None]
            assert time.monotonic() - started < CALL_BOUND * 2
            assert tier.counters()["errors"] >= 1


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_c_round_trips_speak_both_protocols_with_empty_and_large_values(redis_server, protocol):
    values = [b"", b"x", payload(1, 16 << 10), payload(2, 3 << 20), b"\r\n$-1\r\n_\r\n"]
    url = f"{redis_server.url}?protocol={protocol}"
    with vc.RedisTier(url, timeout=2.0, namespace=f"p{protocol}") as tier:
        tier.write_many(range(len(values)), values)
        assert tier.flush(10)
        assert tier.fetch_many([99] + list(range(len(values))) + [100]) == [None] + values + [None]
    with vc.RedisTier(url, timeout=2.0, namespace=f"p{protocol}ttl", ttl=60) as tier:
        tier.write_many(range(len(values)), values)
        assert tier.flush(10)
        assert tier.fetch_many(range(len(values))) == values
        assert 0 < redis_server.client().pttl(f"p{protocol}ttl:v1:3".encode()) <= 60_000


def test_frame_writes_is_the_resp_of_one_mset_or_a_pipeline_of_set_px():
    from vyrecache._core.remote_format import frame_writes
    buffers, replies = frame_writes(b"n:v1:", [7, 10], [b"ab", b""])
    assert replies == 1 and b"".join(buffers) == (
        b"*5\r\n$4\r\nMSET\r\n$6\r\nn:v1:7\r\n$34\r\n" + encode(7, b"ab")
        + b"\r\n$7\r\nn:v1:10\r\n$32\r\n" + encode(10, b"") + b"\r\n")
    assert buffers[1] is not None and any(buffer is not None and buffer == b"ab" for buffer in buffers)
    buffers, replies = frame_writes(b"n:v1:", [7], [b"ab"], 1500)
    assert replies == 1 and b"".join(buffers) == (
        b"*5\r\n$3\r\nSET\r\n$6\r\nn:v1:7\r\n$34\r\n" + encode(7, b"ab") + b"\r\n$2\r\nPX\r\n$4\r\n1500\r\n")
    with pytest.raises(TypeError, match="Fix"):
        frame_writes(b"n:", [1], [bytearray(b"x")])
    with pytest.raises(ValueError, match="Fix"):
        frame_writes(b"n:", [1, 2], [b"x"])


def test_a_server_answering_garbage_is_a_failed_round_trip_not_an_error():
    """A fake server that answers every command with an error reply: the C reader reports it, the
    tier counts it and opens its circuit, and the connection is not reused."""
    import socket as socket_module
    listener = socket_module.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(0.1)
                while not stop.is_set():
                    try:
                        data = connection.recv(65536)
                    except OSError:
                        continue
                    if not data:
                        break
                    # redis-py's handshake and the tier's PING succeed; every MGET gets an error
                    connection.sendall(b"+PONG\r\n" if b"MGET" not in data.upper() else b"-ERR no\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vc.RemoteTierWarning)
            with vc.RedisTier(f"redis://127.0.0.1:{port}/0?protocol=2", timeout=TIMEOUT) as tier:
                assert tier.fetch_many([1, 2]) == [None, None]
                counts = tier.counters()
                assert counts["errors"] == 1 and counts["misses"] == 2 and counts["fetch_circuit_open"] == 1
    finally:
        stop.set()
        thread.join(5)
        listener.close()
