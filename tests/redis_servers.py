"""Redis servers for the tests, each started on a free loopback port and always stopped.

Every server runs as a child process bound to 127.0.0.1, without persistence (``--save ''
--appendonly no``), in a temporary directory.  The fixtures stop what they started even when the
test fails.  Without redis-server (or redis-py) the tests that need one are skipped, unless the
environment variable CI is set: there a missing server is a broken install, and the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_SECONDS = 10.0


def require_redis() -> None:
    """Skip the test (fail it under CI) when redis-server, redis-cli or redis-py is missing."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    reason = None
    if missing:
        reason = (f"{' and '.join(missing)} not found. Fix: apt-get install redis-server redis-tools "
                  "(scripts/install-system-deps.sh does it).")
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            reason = "redis-py is not installed. Fix: pip install 'vyrecache[redis]'."
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the Redis tests must run: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port(with_bus: bool = False) -> int:
    """A TCP port free on 127.0.0.1 now (and, *with_bus*, its cluster bus port + 10000 too)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port pair found")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on 127.0.0.1:port."""

    def __init__(self, directory: Path, port: int | None = None, *options: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(with_bus="--cluster-enabled" in options)
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def start(self) -> "RedisServer":
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.log),
                   "--daemonize", "no", *self.options]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_SECONDS
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text()[-2000:] if self.log.exists() else "(no log)"
                raise RuntimeError(f"redis-server on port {self.port} did not start: {log}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-run, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def client(self):  # type: ignore[no-untyped-def]
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


class ServerPool:
    """Starts servers on demand and stops all of them at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []

    def start(self, *options: str, port: int | None = None) -> RedisServer:
        server = RedisServer(self.directory / f"s{len(self.servers)}", port, *options)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[ServerPool]:
    """A pool whose servers are stopped when the test ends, pass or fail."""
    require_redis()
    pool = ServerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def redis_server(redis_servers: ServerPool) -> RedisServer:
    """One plain server for the test."""
    return redis_servers.start()


class RedisCluster:
    """Three masters, no replicas, on loopback."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.servers]


def start_cluster(pool: ServerPool, masters: int = 3) -> RedisCluster:
    servers = [pool.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          "--cluster-node-timeout", "5000") for _ in range(masters)]
    created = subprocess.run(["redis-cli", "--cluster", "create",
                              *[f"127.0.0.1:{server.port}" for server in servers],
                              "--cluster-replicas", "0", "--cluster-yes"],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=60, text=True)
    if created.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
    deadline = time.monotonic() + 30
    for server in servers:
        client = server.client()
        try:
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster node on port {server.port} never reported cluster_state:ok")
                time.sleep(0.05)
        finally:
            client.close()
    return RedisCluster(servers)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One three-master cluster for the session, stopped at its end."""
    require_redis()
    pool = ServerPool(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield start_cluster(pool)
    finally:
        pool.stop_all()
