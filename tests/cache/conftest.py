"""Fixtures of the cache tests: a fresh store root per test; a real Redis for the remote tier."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from regionc.cache.store import ArtifactStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(root: Path) -> ArtifactStore:
    s = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    assert s.readable and s.writable
    return s


class RedisServer:
    """A ``redis-server`` of the machine's packages on a free local port, in its own directory."""

    def __init__(self, directory: Path):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        pytest.importorskip("redis")
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = self._wait_until_up()

    def _wait_until_up(self):
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.client.flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test alone (it stops it)."""
    server = RedisServer(tmp_path / "own-redis")
    yield server
    server.stop()
