"""Worker process for the cache tests (run as a script; imports no torch).

    cache_worker.py compile ROOT GO_FILE COUNTER KEY...   lock/load/compile/save dance per key; prints JSON
    cache_worker.py stall-write ROOT READY KEY SIZE         saves, stalling forever after the first chunk
    cache_worker.py hold-lock ROOT READY KEY                takes the key's lock and sleeps forever

With CACHE_WORKER_REMOTE=URL the store has that remote tier (leases of CACHE_WORKER_LEASE_S seconds).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from regionc.cache import remote as remote_mod
from regionc.cache import store as store_mod
from regionc.cache.store import ArtifactStore


def open_store(root: str) -> ArtifactStore:
    url = os.environ.get("CACHE_WORKER_REMOTE")
    remote_mod.LEASE_S = float(os.environ.get("CACHE_WORKER_LEASE_S", remote_mod.LEASE_S))
    remote = remote_mod.RemoteTier(url, 1 << 30) if url else None
    return ArtifactStore(Path(root), max_bytes=1 << 30, lock_timeout_s=30, remote=remote)


def _wait_for(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.005)


def compile_mode(root: str, go: str, counter: str, keys: list[str]) -> None:
    store = open_store(root)
    _wait_for(go)
    result = {}
    for key in keys:
        with store.lock(key) as waited:
            payload = store.load(key)
            source = store.origin(key)
            if payload is None:
                store.record_miss(key)
                time.sleep(0.5)  # the "compile"
                fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.write(fd, f"{key} {os.getpid()}\n".encode())
                os.close(fd)
                payload = f"artifact {key} compiled by pid {os.getpid()}\n".encode() * 5000
                assert store.save(key, payload, {"fingerprint": key, "pid_is_not_a_factor": True})
                source = "compiled"
        result[key] = {"sha256": hashlib.sha256(payload).hexdigest(), "source": source, "waited": waited}
    print(json.dumps(result))


def stall_write_mode(root: str, ready: str, key: str, size: int) -> None:
    store = open_store(root)

    def stall() -> None:
        Path(ready).touch()
        time.sleep(3600)

    store_mod._after_partial_write = stall
    store.save(key, b"x" * size, {"fingerprint": "stalled"})


def hold_lock_mode(root: str, ready: str, key: str) -> None:
    store = open_store(root)
    with store.lock(key):
        Path(ready).touch()
        time.sleep(3600)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "compile":
        compile_mode(rest[0], rest[1], rest[2], rest[3:])
    elif mode == "stall-write":
        stall_write_mode(rest[0], rest[1], rest[2], int(rest[3]))
    elif mode == "hold-lock":
        hold_lock_mode(rest[0], rest[1], rest[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
