"""The connection to Redis: URL checks, a standalone or cluster client, and the four commands the tier sends.

redis-py is imported here and only when a tier is made, so ``import vyrecache`` works without it.
Every client is made with a socket timeout and connect timeout of the tier's ``timeout`` and with
redis-py's own retries switched off: the tier's circuit breaker decides when to try again, so a
failing round trip costs one timeout, never a retry loop's worth.

Round trips, per batch:

* a single server: one ``MGET`` for a fetch, one ``MSET`` (or a pipeline of ``SET ... PX`` when a
  TTL is set) for a write, one ``DEL`` for deletions.  On a plain socket, fetches and writes are
  sent and their replies read by ``_core/remote_format`` (``mget``, ``send_writes``, with writes
  framed by ``frame_writes``: the values as they are, between small pieces of framing), on a
  connection of redis-py's pool that each thread keeps.  A thread that waits for the socket
  gives the GIL away and then waits for the busiest other thread to hand it back; redis-py does
  that after every read and every value sent, these once per round trip (TLS keeps redis-py's);
* a cluster: one pipeline of ``GET``/``SET``/``DEL`` commands, which redis-py's cluster client
  splits into one pipeline per master, sent to all of them before any reply is read.  Entries carry
  no hash tag (see ``format.py``), so a batch's keys lie on every master and cannot share one MGET.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import weakref
from collections.abc import Sequence
from typing import Any

from .._core.remote_format import decode_many, encode, frame_writes, mget, mget_receive, mget_send, send_writes

__all__ = ["Connection", "check_url", "import_redis", "parse_startup_nodes"]

_SCHEMES = ("redis", "rediss", "unix")


def import_redis() -> Any:
    """Return the ``redis`` module, or raise ImportError saying how to install it."""
    try:
        import redis
    except ImportError as exc:
        raise ImportError("vyrecache.RedisTier needs redis-py, which is not installed. "
                          "Fix: pip install 'vyrecache[redis]' (or pip install redis).") from exc
    return redis


def check_url(url: object, cluster: bool) -> str:
    """Return *url* if it is a Redis URL redis-py can use, else raise ValueError naming what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'redis://127.0.0.1:6379/0', got {url!r}. "
                        "Fix: pass the server's address as a redis:// URL.")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise ValueError(f"url {url!r} is not a valid Redis URL ({exc}). "
                         "Fix: use redis://HOST:PORT/DB, e.g. 'redis://127.0.0.1:6379/0'.") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"url {url!r} has scheme {parts.scheme!r}, not one of {', '.join(_SCHEMES)}. "
                         "Fix: use redis://HOST:PORT/DB (rediss:// for TLS, unix:///path/to/socket).")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"url {url!r} names no socket path. Fix: use unix:///path/to/redis.sock.")
        if cluster:
            raise ValueError(f"url {url!r} is a Unix socket, which a Redis Cluster cannot use. "
                             "Fix: give a cluster node's redis://HOST:PORT, or cluster=False.")
        return url
    if not parts.hostname:
        raise ValueError(f"url {url!r} names no host. Fix: use redis://HOST:PORT/DB, e.g. "
                         "'redis://127.0.0.1:6379/0'.")
    if port == 0:
        raise ValueError(f"url {url!r} has port 0. Fix: give the server's port (6379 by default).")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"url {url!r} has database {database!r}, not a number. "
                         "Fix: end the URL with /0 (or another database number), or with nothing.")
    if cluster and database not in ("", "0"):
        raise ValueError(f"url {url!r} selects database {database}, but a Redis Cluster has only database 0. "
                         "Fix: drop the /DB part of the URL or end it with /0.")
    return url


def parse_startup_nodes(nodes: object) -> list[tuple[str, int]]:
    """Return cluster startup nodes as (host, port) pairs; accepts "host:port", redis:// URLs and pairs."""
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence) or not nodes:
        raise ValueError(f"cluster startup nodes must be a non-empty list, got {nodes!r}. "
                         "Fix: pass cluster=['127.0.0.1:7000', '127.0.0.1:7001'] or cluster=True.")
    pairs = []
    for node in nodes:
        host: object
        port: object
        if isinstance(node, str):
            text = node if "://" in node else f"redis://{node}"
            try:
                parts = urllib.parse.urlsplit(check_url(text, cluster=True))
                host, port = parts.hostname, parts.port or 6379
            except ValueError:
                raise ValueError(f"cluster startup node {node!r} is not 'host:port' or a redis:// URL. "
                                 "Fix: write it like '127.0.0.1:7000'.") from None
        elif isinstance(node, tuple) and len(node) == 2:
            host, port = node
        else:
            raise ValueError(f"cluster startup node {node!r} is not 'host:port', a redis:// URL or a "
                             "(host, port) pair. Fix: write it like '127.0.0.1:7000'.")
        if not isinstance(host, str) or not host or type(port) is not int or not 0 < port < 65536:
            raise ValueError(f"cluster startup node {node!r} needs a host name and a port in 1-65535. "
                             "Fix: write it like '127.0.0.1:7000'.")
        pairs.append((host, port))
    return pairs


class Connection:
    """One standalone or cluster client.  Methods raise ``self.errors`` when a round trip fails."""

    def __init__(self, url: str, startup_nodes: list[tuple[str, int]] | None, timeout: float) -> None:
        redis = import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self._redis_module = redis
        self.cluster = startup_nodes is not None
        self._startup_nodes = startup_nodes
        self._timeout = timeout
        self._no_retry = Retry(NoBackoff(), 0)
        #: What a failed round trip raises: every redis-py error, socket errors, the cluster
        #: client's own exception (which is no RedisError), and the ValueError redis-py lets out
        #: when a node dies while a connection's buffer is read ("I/O operation on closed file").
        #: Arguments are checked before a round trip, so these come from the server side only.
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, ValueError)
        if self.cluster:
            from redis.cluster import RedisClusterException
            self.errors += (RedisClusterException,)
            self._client: Any = None  # made by the first round trip: the cluster client connects at once
            self._cluster_lock = threading.Lock()
        else:
            options = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=self._no_retry,
                           retry_on_timeout=False, health_check_interval=0)
            self._client = redis.Redis.from_url(url, **options)
            self._held = threading.local()   # each thread's kept connection per client, see _held_connection
            # The writer thread has a client (and connection pool) of its own, so that a fetch
            # never waits for a connection that is sending a round trip of writes.
            self._write_client = redis.Redis.from_url(url, **options)
            # Prefetches have theirs too: a reply left unread for the next step on it never stands
            # in front of the reply of a fetch that cannot wait.
            self._prefetch_client = redis.Redis.from_url(url, **options)

    def _cluster_client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._cluster_lock:  # the writer thread and a fetching thread may both find it missing
            return self._make_cluster_client()

    def _make_cluster_client(self) -> Any:
        if self._client is None:
            from redis.cluster import ClusterNode, RedisCluster
            assert self._startup_nodes is not None
            options: dict[str, Any] = {}
            if int(self._redis_module.__version__.split(".")[0]) < 6:
                options["cluster_error_retry_attempts"] = 0  # before 6.0 the cluster client ignores `retry` here
            self._client = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in self._startup_nodes],
                                        socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                                        retry=self._no_retry, require_full_coverage=False, **options)
        return self._client

    def _discard_cluster_client(self) -> None:
        # After a failure the cluster's layout may have changed (a node gone, a failover): the next
        # trial starts from the startup nodes again rather than from a stale slot map.
        with self._cluster_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass  # a client whose node is gone may fail to close; it is dropped either way

    def _cluster_pipeline(self, command: str, names: list[bytes], values: list[bytes] | None = None,
                          ttl_ms: int | None = None) -> list[Any]:
        try:
            pipe = self._cluster_client().pipeline(transaction=False)
            for index, name in enumerate(names):
                if command == "GET":
                    pipe.get(name)
                elif command == "SET":
                    assert values is not None
                    pipe.set(name, values[index], px=ttl_ms)
                else:
                    pipe.delete(name)
            return pipe.execute(raise_on_error=True)
        except self.errors:
            self._discard_cluster_client()
            raise
        except AttributeError as error:
            # redis-py's cluster client reads a reply through a connection its own disconnect
            # just emptied ('NoneType' object has no attribute 'readline') when a node dies in
            # the middle of a connect: the node is gone, as for the ValueError above.  Only here,
            # around redis-py's own calls, so that no other AttributeError passes for one.
            self._discard_cluster_client()
            raise self._redis_module.ConnectionError(f"a cluster node went away mid-read: {error}") from error

    def ping(self) -> None:
        if self.cluster:
            self._cluster_pipeline("GET", [b"vyrecache:ping"])
        else:
            self._client.ping()

    def mget(self, names: list[bytes]) -> list[bytes | None]:
        if self.cluster:
            return self._cluster_pipeline("GET", names)
        return self._client.execute_command("MGET", *names)

    def fetch(self, prefix: bytes, keys: list[int], views: bool = False) -> tuple[list[Any], int, int, list[int]]:
        """The payloads stored under ``prefix + str(key)``, checked: (values, hits, bytes, corrupt
        indices), as ``decode_many`` returns them (with *views*, payloads may be read-only
        memoryviews into the reply instead of bytes).  On a single server over a plain socket the
        whole round trip runs in C without the GIL (``remote_format.mget``); otherwise redis-py's
        MGET or cluster pipeline, then ``decode_many``."""
        if not self.cluster:
            connection = self._held_connection(self._client)
            sock = getattr(connection, "_sock", None)
            if type(sock) is socket.socket:
                try:
                    return mget(sock.fileno(), prefix, keys, self._timeout, views)
                except BaseException:
                    connection.disconnect()     # a reply may be left half read: never reuse it
                    raise
        names = [prefix + b"%d" % key for key in keys]
        stored = self.mget(names)
        found = stored if type(stored) is list else list(stored)
        hits, nbytes, corrupt = decode_many(keys, found)
        return found, hits, nbytes, corrupt

    def set_many(self, prefix: bytes, keys: list[int], payloads: list[bytes], ttl_ms: int | None) -> None:
        """Store each payload, with its header, under ``prefix + str(key)``."""
        if self.cluster:
            names = [prefix + b"%d" % key for key in keys]
            values = [encode(key, payload) for key, payload in zip(keys, payloads)]
            self._cluster_pipeline("SET", names, values, ttl_ms)
            return
        buffers, replies = frame_writes(prefix, keys, payloads, ttl_ms)
        connection = self._held_connection(self._write_client)
        try:
            sock = getattr(connection, "_sock", None)
            if type(sock) is socket.socket:
                send_writes(sock.fileno(), buffers, replies, self._timeout)
                return
            connection.send_packed_command(buffers, check_health=False)    # TLS: redis-py's socket
            for _ in range(replies):
                connection.read_response()
        except BaseException:
            connection.disconnect()     # replies may be left unread: never reuse the connection
            raise

    def send_fetch(self, prefix: bytes, keys: list[int]) -> bool:
        """Send the MGET of a fetch on the calling thread's connection without reading its reply
        (receive_fetch reads it); False, sending nothing, where that is not possible (a cluster,
        TLS)."""
        if self.cluster:
            return False
        connection = self._held_connection(self._prefetch_client)
        sock = getattr(connection, "_sock", None)
        if type(sock) is not socket.socket:
            return False
        try:
            mget_send(sock.fileno(), prefix, keys, self._timeout)
        except BaseException:
            connection.disconnect()
            raise
        return True

    def receive_fetch(self, keys: list[int], views: bool = False) -> tuple[list[Any], int, int, list[int]]:
        """The reply of the oldest MGET send_fetch sent on this thread's connection (like fetch)."""
        connection = self._held_connection(self._prefetch_client)
        sock = getattr(connection, "_sock", None)
        try:
            if type(sock) is not socket.socket:
                raise ConnectionError("the connection a prefetch was sent on is gone")
            return mget_receive(sock.fileno(), keys, self._timeout, views)
        except BaseException:
            connection.disconnect()
            raise

    def _held_connection(self, client: Any) -> Any:
        """The calling thread's own connection of *client*'s pool, connected.

        Taken from the pool once and kept: the pool's checks on every checkout (a poll of the
        socket for stray data) would give up the GIL and wait to get it back once more per round
        trip.  Every round trip reads its whole reply, and a failed one disconnects the
        connection, so a kept connection is always clean; the next round trip reconnects it.
        """
        held = self._held.__dict__
        name = str(id(client))
        connection = held.get(name)
        if connection is None:
            pool = client.connection_pool
            connection = held[name] = pool.get_connection()
            # back to the pool when the thread is gone, so that threads that come and go leak nothing
            weakref.finalize(threading.current_thread(), pool.release, connection)
        elif getattr(connection, "_sock", None) is None:
            connection.connect()
        return connection

    def delete(self, names: list[bytes]) -> None:
        if self.cluster:
            self._cluster_pipeline("DEL", names)
        else:
            self._write_client.execute_command("DEL", *names)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
        for name in ("_write_client", "_prefetch_client"):
            other = getattr(self, name, None)
            setattr(self, name, None)
            if other is not None:
                other.close()
