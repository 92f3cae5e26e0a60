"""``RedisTier``: cache entries in Redis, shared by every process that uses the same URL and namespace.

The tier is a standalone component with the interface a cache needs from a slower, shared tier
below its own: ``write_many`` (queued, never waits for the network), ``fetch_many`` (one round
trip), ``flush``, ``counters``, ``close``.  It fails open: when the server is down, slow or refuses
commands, a round trip costs at most ``timeout`` and then a circuit breaker (``breaker.py``) skips
the server, fetches are misses and writes are dropped, until a trial round trip succeeds.

Fetches and writes have a breaker each, so that a server that refuses writes (out of memory with
``noeviction``, a read-only replica) still serves fetches.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.parse
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import CacheClosedError
from .breaker import CircuitBreaker
from .client import Connection, check_url, parse_startup_nodes
from .format import HEADER_SIZE, key_prefix
from .prefetch import MAX_OUTSTANDING, Prefetches
from .writer import Job, WriteQueue

__all__ = ["RedisTier"]

_KEY_LIMIT = 1 << 64
#: Round trips kept per kind for the latency percentiles.
_LATENCY_SAMPLES = 1024
#: How long close() waits for queued writes before it drops them.
_CLOSE_FLUSH_SECONDS = 5.0

_COUNTER_NAMES = ("hits", "misses", "writes", "dropped", "errors", "corrupt", "bytes_written", "bytes_read")


def _check_keys(keys: Any, what: str = "keys") -> list[int]:
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1 or keys.dtype.kind not in "ui":
            raise TypeError(f"{what} must be a 1-D array of unsigned integers, got an array of dtype {keys.dtype} "
                            f"and shape {keys.shape}. Fix: pass np.asarray(keys, dtype=np.uint64).")
        if keys.dtype.kind == "i" and keys.size and int(keys.min()) < 0:
            raise ValueError(f"{what} holds the negative key {int(keys.min())}; keys are in [0, 2**64). "
                             "Fix: hash your keys into unsigned 64-bit integers.")
        return keys.tolist()
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Iterable):
        raise TypeError(f"{what} must be a sequence of integer keys, got {keys!r}. "
                        "Fix: pass a list of ints or a numpy uint64 array.")
    checked = list(keys)
    for index, key in enumerate(checked):
        if type(key) is not int:
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
                raise TypeError(f"key {key!r} (of type {type(key).__name__}) is not an integer in [0, 2**64). "
                                "Fix: pass ints; hash other keys into unsigned 64-bit integers.")
            key = checked[index] = int(key)
        if not 0 <= key < _KEY_LIMIT:
            raise ValueError(f"key {key!r} is outside [0, 2**64). "
                             "Fix: pass keys in [0, 2**64); hash larger ones into 64 bits.")
    return checked


def _payload_view(key: int, value: Any) -> memoryview:
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(f"the value for key {key} is a {type(value).__name__}, not a bytes-like object. "
                        "Fix: pass bytes, bytearray, memoryview or a numpy array.") from None
    if not view.c_contiguous:
        raise ValueError(f"the value for key {key} is a non-contiguous buffer (shape {view.shape}, strides "
                         f"{view.strides}). Fix: pass np.ascontiguousarray(value).")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _positive_number(name: str, value: Any, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}. Fix: {fix}")
    return float(value)


def _display(url: str) -> str:
    """*url* without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


class RedisTier:
    """Cache entries (uint64 key -> bytes) in Redis or a Redis Cluster.

    Args:
        url: the server, ``redis://HOST:PORT/DB`` (``rediss://`` for TLS, ``unix:///path``); with
            ``cluster=True``, any node of the cluster.
        namespace: the prefix of every Redis key; processes with the same URL and namespace share
            entries.  No whitespace and no braces (which would make a cluster hash tag).
        ttl: seconds an entry lives on the server after it was written, or None (until the server
            evicts it; run it with ``maxmemory`` and ``allkeys-lru``).
        cluster: True to treat *url* as a Redis Cluster node, or the cluster's startup nodes
            (``["host:port", ...]``, redis:// URLs or ``(host, port)`` pairs).
        timeout: seconds one socket operation (connect, send, a reply) may take before the round
            trip counts as failed and the circuit breaker opens.
        max_pending_bytes: most bytes (values with their headers) queued for the writer thread;
            writes beyond it are dropped and counted.

    Raises:
        ValueError, TypeError: an argument is malformed (the message says which and how to fix it).
        ImportError: redis-py is not installed.

    A server that cannot be reached at construction is not an error: the tier warns
    (``RemoteTierWarning``), serves misses and drops writes, and resumes by itself once it answers.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, namespace: str = "vyrecache",
                 ttl: float | None = None, cluster: bool | Sequence[Any] = False, timeout: float = 0.2,
                 max_pending_bytes: int = 64 << 20) -> None:
        self._closed = True  # until construction is complete, so __del__ and close() have nothing to do
        if not isinstance(namespace, str) or not namespace or any(c.isspace() or c in "{}" for c in namespace):
            raise ValueError(f"namespace must be a non-empty str without whitespace or braces, got {namespace!r}. "
                             "Fix: pass a name such as 'vyrecache' or 'myapp-kv'.")
        self._ttl_ms = None if ttl is None else max(1, round(1000 * _positive_number(
            "ttl", ttl, "pass the entry lifetime in seconds, e.g. ttl=3600, or ttl=None to keep entries "
            "until the server evicts them.")))
        self.timeout = _positive_number("timeout", timeout, "pass the longest wait in seconds, e.g. timeout=0.2.")
        if isinstance(max_pending_bytes, bool) or not isinstance(max_pending_bytes, int) or max_pending_bytes <= 0:
            raise ValueError(f"max_pending_bytes must be an int > 0, got {max_pending_bytes!r}. "
                             "Fix: pass a byte count, e.g. max_pending_bytes=64 << 20.")
        if isinstance(cluster, bool):
            url = check_url(url, cluster)
            startup_nodes = None
            if cluster:
                parts = urllib.parse.urlsplit(url)
                startup_nodes = [(parts.hostname or "", parts.port or 6379)]
        else:
            startup_nodes = parse_startup_nodes(cluster)
        self.url = url
        self.namespace = namespace
        self.max_pending_bytes = max_pending_bytes
        self.cluster = startup_nodes is not None
        where = (_display(url) if startup_nodes is None or not isinstance(cluster, Sequence)
                 else "the cluster at " + ", ".join(f"{host}:{port}" for host, port in startup_nodes))
        self._connection = Connection(url, startup_nodes, self.timeout)
        self._errors = self._connection.errors
        self._prefix = key_prefix(namespace)
        self._fetch_breaker = CircuitBreaker(f"{where} for fetches")
        self._write_breaker = CircuitBreaker(f"{where} for writes")
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTER_NAMES, 0)
        self._epoch = 0
        self._latency: dict[str, deque[float]] = {"fetch": deque(maxlen=_LATENCY_SAMPLES),
                                                  "write": deque(maxlen=_LATENCY_SAMPLES)}
        # The thread reaches the tier through a weak reference, so that a tier nobody closed is
        # still collected (and its thread ended) instead of living as long as its thread.
        tier = weakref.ref(self)

        def send(job: Job) -> None:
            alive = tier()
            if alive is not None:
                alive._send(job)

        def send_failed(job: Job, error: BaseException) -> None:
            alive = tier()
            if alive is not None:
                alive._send_failed(job, error)

        self._queue = WriteQueue(send, send_failed, max_pending_bytes, name=f"vyrecache-redis-writer-{namespace}")
        self._pending_writes = self._queue.pending     # served by fetch_many before the server
        self._prefetches = Prefetches(max_pending_bytes)
        self._closed = False
        try:
            self._connection.ping()
        except self._errors as error:
            self._fetch_breaker.failure(error, stacklevel=3)
            self._write_breaker.failure(error, warn=False)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued (waiting up to 5 s), stop the writer thread and disconnect.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._prefetches.clear()
        self._queue.flush(_CLOSE_FLUSH_SECONDS)
        left = self._queue.stop(self.timeout + 1.0)
        if left:
            with self._lock:
                self._counts["dropped"] += sum(len(job.keys) for job in left if job.values is not None)
        self._connection.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            warnings.warn(f"a RedisTier ({_display(self.url)}, namespace {self.namespace!r}) was never closed; "
                          "its queued writes are dropped. Fix: call close(), or use it in a with block.",
                          ResourceWarning, stacklevel=2)
            self._queue.stop(0.0)
            self._connection.close()
        except Exception:
            pass  # at interpreter shutdown the modules used here may be gone already

    def __enter__(self) -> "RedisTier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open circuit" if self._fetch_breaker.is_open else "connected")
        return f"RedisTier({_display(self.url)!r}, namespace={self.namespace!r}, cluster={self.cluster}, {state})"

    def _live(self) -> None:
        if self._closed:
            raise CacheClosedError(f"this RedisTier ({_display(self.url)}, namespace {self.namespace!r}) was closed. "
                                   "Fix: make a new RedisTier, or stop using this one after close().")

    # -- fetches -----------------------------------------------------------------------------------

    def fetch_many(self, keys: Any) -> list[bytes | None]:
        """Return the stored bytes of each key, or None for a miss, in one round trip at most.

        A miss is a key the server does not hold, a value that fails the header check (counted as
        ``corrupt``, and deleted), or any key of a batch whose round trip failed or was skipped
        because the circuit is open.  A key whose write is still queued is served that write's
        bytes (the server may still hold an older value), and a key prefetched (prefetch_many) is
        served what the prefetch brought, waiting for it if it is still under way; neither needs
        the network.
        """
        return [bytes(value) if type(value) is memoryview else value for value in self.fetch_views(keys)]

    def fetch_views(self, keys: Any) -> list[Any]:
        """fetch_many() for a cache that copies each value at once: a value may be a read-only
        memoryview into the reply it came in (bytes-like, not bytes), which spares the copy
        fetch_many makes of it."""
        checked = _check_keys(keys)
        self._live()
        if not checked:
            return []
        found: list[Any] = [None] * len(checked)
        asked: list[int] = []
        pending = self._pending_writes
        if self._prefetches.outstanding():
            depth = self._prefetches.to_read(checked)
            if depth:
                self._read_prefetches(depth)
        held = {} if self._prefetches.idle else self._prefetches.take(checked)
        served = served_bytes = 0
        for index, key in enumerate(checked):
            value = pending.get(key) if pending else None
            if value is not None:
                found[index] = value
                served += 1
                served_bytes += len(value)
            elif key in held:
                found[index] = held[key]
            else:
                asked.append(index)
        if served:
            with self._lock:
                self._counts["hits"] += served
                self._counts["bytes_read"] += served_bytes
        if len(asked) == len(checked):
            return self._round_trip(checked)
        if asked:
            for index, value in zip(asked, self._round_trip([checked[index] for index in asked])):
                found[index] = value
        return found

    def prefetch_many(self, keys: Any) -> None:
        """Send the MGET of *keys* now and return without waiting for the reply; the next
        fetch_many of the same thread reads it (by then it has usually arrived) and serves those
        keys from it without a round trip of its own.  For a caller that knows its next batch's
        keys: their round trip overlaps its work on the current one.

        What a prefetch brings is kept for a second at most, and a write of a key drops it.  Keys
        queued for writing, held or under way already are not asked again; nothing is sent while
        the circuit is open, nor on a cluster or over TLS (there a prefetch does nothing).
        """
        checked = _check_keys(keys)
        self._live()
        pending = self._pending_writes
        prefetches = self._prefetches
        wanted = prefetches.wanted([key for key in checked if key not in pending] if pending else checked)
        if not wanted or self._fetch_breaker.is_open:
            return                          # an open circuit's trial is a fetch's to make
        if len(prefetches.outstanding()) >= MAX_OUTSTANDING:
            self._read_prefetches(1)
        try:
            if self._connection.send_fetch(self._prefix, wanted):
                prefetches.sent(wanted)
        except self._errors as error:
            self._prefetch_failed(error, len(wanted))

    def _read_prefetches(self, count: int | None = None) -> None:
        """Read the replies of the calling thread's prefetches (the oldest *count*, or all)."""
        outstanding = self._prefetches.outstanding()
        while outstanding and (count is None or count > 0):
            batch = outstanding.popleft()
            if count is not None:
                count -= 1
            try:
                found, hits, bytes_read, corrupt = self._connection.receive_fetch(batch.keys, views=True)
            except self._errors as error:
                self._prefetches.received(batch, None)
                lost = sum(len(other.keys) for other in outstanding)
                for other in outstanding:       # the connection is gone, and their replies with it
                    self._prefetches.received(other, None)
                outstanding.clear()
                self._prefetch_failed(error, len(batch.keys) + lost)
                return
            except BaseException:
                self._prefetches.received(batch, None)
                raise
            self._fetch_breaker.success()
            self._prefetches.received(batch, found)
            self._count_fetch(len(batch.keys), hits, bytes_read, corrupt, batch.keys,
                              time.perf_counter() - batch.sent_at)

    def _prefetch_failed(self, error: BaseException, keys: int) -> None:
        self._fetch_breaker.failure(error, stacklevel=4)
        self._lost_track()
        with self._lock:
            self._counts["errors"] += 1
            self._counts["misses"] += keys

    def _round_trip(self, checked: list[int]) -> list[Any]:
        """One MGET (or cluster pipeline) of *checked*, decoded and counted (payloads may be
        memoryviews, as fetch_views says); all misses on failure."""
        missed: list[Any] = [None] * len(checked)
        if not self._fetch_breaker.allow():
            with self._lock:
                self._counts["misses"] += len(checked)
            return missed
        started = time.perf_counter()
        try:
            found, hits, bytes_read, corrupt = self._connection.fetch(self._prefix, checked, views=True)
        except self._errors as error:
            self._fetch_breaker.failure(error)
            self._lost_track()
            with self._lock:
                self._counts["errors"] += 1
                self._counts["misses"] += len(checked)
            return missed
        except BaseException:
            self._fetch_breaker.abandon()
            raise
        elapsed = time.perf_counter() - started
        self._fetch_breaker.success()
        self._count_fetch(len(checked), hits, bytes_read, corrupt, checked, elapsed)
        return found

    def _count_fetch(self, asked: int, hits: int, bytes_read: int, corrupt: list[int], keys: list[int],
                     elapsed: float) -> None:
        with self._lock:
            self._counts["hits"] += hits
            self._counts["misses"] += asked - hits
            self._counts["corrupt"] += len(corrupt)
            self._counts["bytes_read"] += bytes_read
            self._latency["fetch"].append(elapsed)
        if corrupt:
            # Deleted by the writer thread so that a fetch stays one round trip.  A good value
            # written by another process between the GET and the DEL is lost too: one more miss.
            self._queue.submit(Job([keys[index] for index in corrupt], None))

    def _lost_track(self) -> None:
        """A round trip failed: the server may have restarted empty.  A new epoch, and nothing
        prefetched before it is served."""
        with self._lock:
            self._epoch += 1
        self._prefetches.clear()

    @property
    def epoch(self) -> int | None:
        """A number that changes whenever the server may have lost what it stored (a round trip
        failed: it may have restarted empty), or None when the tier has a ttl.

        A cache that placed an entry from this tier's fetch at epoch E, and evicts it unchanged
        while the epoch is still E, need not write it back: it is stored already.  With a ttl
        every write-back is needed, as it renews the entry's expiry.  A server that evicts or
        loses entries without a failed round trip (``maxmemory``, a restart between two round
        trips) is not seen: then such an entry is a miss later, like any server-side eviction.
        """
        return None if self._ttl_ms is not None else self._epoch

    def fetch(self, key: int) -> bytes | None:
        """Return the stored bytes of *key*, or None (see fetch_many)."""
        return self.fetch_many((key,))[0]

    # -- writes ------------------------------------------------------------------------------------

    def write_many(self, keys: Any, values: Sequence[Any]) -> None:
        """Queue each (key, value) pair for the writer thread and return at once.

        Values are copied before this returns, so the caller may reuse its buffers.  A value that
        would take the queue past ``max_pending_bytes``, or any while the write circuit is open, is
        dropped and counted (``dropped``), not raised: the remote tier is only a cache.

        Raises:
            TypeError, ValueError: a key or value is malformed, or keys and values differ in number;
                nothing is queued then.
        """
        checked = _check_keys(keys)
        values = list(values) if not isinstance(values, list) else values
        if len(values) != len(checked):
            raise ValueError(f"write_many got {len(checked)} keys but {len(values)} values. "
                             "Fix: pass one value per key.")
        views = [_payload_view(key, value) for key, value in zip(checked, values)]
        self._live()
        if checked:
            self._queue_payloads(checked, views, copy=True)

    def write_owned(self, keys: list[int], payloads: list[bytes]) -> None:
        """write_many for a cache handing over copies it made for this tier: *keys* a list of ints
        in [0, 2**64) and *payloads* a list of bytes that nobody changes, queued as they are.

        Unlike write_many, nothing is checked or copied; the queue, its limit and the counters are
        the same.
        """
        self._live()
        if keys:
            self._queue_payloads(keys, payloads, copy=False)

    def _queue_payloads(self, keys: list[int], payloads: list[Any], copy: bool) -> None:
        """Queue what fits of *payloads* (copied to bytes first if *copy*); count the rest as dropped."""
        if self._write_breaker.blocked():
            with self._lock:
                self._counts["dropped"] += len(keys)
            return
        if copy:
            payloads = [payload.tobytes() for payload in payloads]    # the one copy of the caller's bytes
        if not self._prefetches.idle:
            self._prefetches.forget(keys)   # what a prefetch brings for these keys is older now
        dropped = len(keys) - self._queue.offer(keys, payloads, HEADER_SIZE)
        if dropped:
            with self._lock:
                self._counts["dropped"] += dropped

    def write(self, key: int, value: Any) -> None:
        """Queue one entry (see write_many)."""
        self.write_many((key,), (value,))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is sent (or dropped); False if *timeout* seconds passed first."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0 or math.isinf(timeout)):
            raise ValueError(f"flush timeout must be a finite number of seconds >= 0 or None, got {timeout!r}. "
                             "Fix: pass the longest wait in seconds (0 only checks), or None to wait until the "
                             "queue is empty.")
        if self._closed:
            return True
        return self._queue.flush(timeout)

    def _send(self, job: Job) -> None:
        """Writer thread: one round trip for *job*."""
        breaker = self._write_breaker
        if not breaker.allow():
            if job.values is not None:
                with self._lock:
                    self._epoch += 1        # a fetch may have served one of these from the queue
                    self._counts["dropped"] += len(job.keys)
            return
        started = time.perf_counter()
        try:
            if job.values is None:
                prefix = self._prefix
                self._connection.delete([prefix + b"%d" % key for key in job.keys])
            else:
                self._connection.set_many(self._prefix, job.keys, job.values, self._ttl_ms)
        except self._errors as error:
            breaker.failure(error)
            self._lost_track()
            with self._lock:
                self._counts["errors"] += 1
                if job.values is not None:
                    self._counts["dropped"] += len(job.keys)
            return
        elapsed = time.perf_counter() - started
        breaker.success()
        if job.values is not None:
            with self._lock:
                self._counts["writes"] += len(job.keys)
                self._counts["bytes_written"] += job.payload_bytes
                self._latency["write"].append(elapsed)

    def _send_failed(self, job: Job, error: BaseException) -> None:
        """Writer thread: *job* failed with an error that is not the server's (a bug, memory)."""
        self._write_breaker.abandon()
        self._lost_track()
        with self._lock:
            self._counts["errors"] += 1
            if job.values is not None:
                self._counts["dropped"] += len(job.keys)

    # -- counters ----------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """Cumulative counts since the tier was made or reset_counters() was called, and the state now.

        ``hits``/``misses``: keys fetched that were served / not served; ``writes``: entries the
        server acknowledged; ``dropped``: entries not written (queue full, circuit open, failed round
        trip); ``errors``: failed round trips; ``corrupt``: stored values that failed the header check
        (also misses); ``bytes_written``/``bytes_read``: payload bytes acknowledged / served.
        ``latency``: ``fetch_p50``, ``fetch_p99``, ``write_p50``, ``write_p99`` in seconds over the
        last 1024 successful round trips of each kind (0.0 before the first).  ``pending_bytes``:
        bytes queued now; ``fetch_circuit_open``/``write_circuit_open``: 1 while the server is skipped.
        """
        with self._lock:
            result: dict[str, Any] = dict(self._counts)
            samples = {kind: sorted(values) for kind, values in self._latency.items()}
        latency = {}
        for kind, ordered in samples.items():
            for name, quantile in (("p50", 0.5), ("p99", 0.99)):
                # nearest rank: the smallest sample with at least that share of samples at or below it
                latency[f"{kind}_{name}"] = (ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]
                                             if ordered else 0.0)
        result["latency"] = latency
        result["pending_bytes"] = self._queue.pending_bytes
        result["fetch_circuit_open"] = int(self._fetch_breaker.is_open)
        result["write_circuit_open"] = int(self._write_breaker.is_open)
        return result

    def reset_counters(self) -> None:
        """Set every cumulative counter to 0 and forget the latency samples."""
        with self._lock:
            self._counts = dict.fromkeys(_COUNTER_NAMES, 0)
            for samples in self._latency.values():
                samples.clear()
