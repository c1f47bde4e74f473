"""The store across real processes: N workers compile each key once; SIGKILL mid-write; dead lock holders."""

import json
import logging
import os
import signal
import time
from pathlib import Path

from cache_util import make_key, start_worker

from regionc.cache.store import ArtifactStore


def _wait_for(path: Path, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"worker never reached {path.name}"
        time.sleep(0.01)


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_four_processes_compile_each_key_once(tmp_path):
    root, go, counter = tmp_path / "cache", tmp_path / "go", tmp_path / "compiles.log"
    keys = [make_key("piece-0"), make_key("piece-1")]
    workers = [start_worker("compile", root, go, counter, *keys) for _ in range(4)]
    time.sleep(0.3)  # let them all start and block on the go file
    go.touch()
    results = []
    for w in workers:
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
        results.append(json.loads(out))

    compiles = counter.read_text().split("\n")[:-1]
    assert sorted(line.split()[0] for line in compiles) == sorted(keys), compiles  # exactly one per key
    store = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    for key in keys:
        digests = {r[key]["sha256"] for r in results}
        assert len(digests) == 1  # all four hold the bytes of the one compile
        assert sorted(r[key]["source"] for r in results) == ["cache"] * 3 + ["compiled"]
        assert store.load(key) is not None  # verifies checksums
    stats = store.stats()
    assert stats["misses"] == 2 and stats["entries"] == 2 and stats["bad_entries"] == 0
    assert not list(root.rglob("*.tmp"))


def test_sigkill_mid_write_leaves_nothing_loadable(tmp_path):
    root, ready = tmp_path / "cache", tmp_path / "ready"
    fresh, existing = make_key("fresh"), make_key("existing")
    store = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    assert store.save(existing, b"version 1", {})

    for key in (fresh, existing):
        ready.unlink(missing_ok=True)
        writer = start_worker("stall-write", root, ready, key, 3 * 1024 * 1024)
        _wait_for(ready, writer)  # one chunk of the payload is on disk
        _kill(writer)

    assert store.load(fresh) is None  # never committed
    assert store.load(existing) == b"version 1"  # the old entry survives a killed replacement
    assert [e.key for e in store.entries()] == [existing]
    temps = list(root.rglob("*.tmp"))
    assert len(temps) == 2  # the dead writers' partial files, invisible to readers
    # a later clear (or eviction scan) removes temp files once they are old enough
    for t in temps:
        os.utime(t, (time.time() - 7200,) * 2)
    assert store.clear(older_than_days=1) == 0
    assert not list(root.rglob("*.tmp"))
    assert store.save(fresh, b"good", {}) and store.load(fresh) == b"good"


def test_lock_of_a_killed_holder_is_released(tmp_path):
    root, ready, key = tmp_path / "cache", tmp_path / "ready", make_key("locked")
    holder = start_worker("hold-lock", root, ready, key)
    _wait_for(ready, holder)
    _kill(holder)
    store = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=30)
    start = time.monotonic()
    with store.lock(key) as waited:
        assert waited < 2.0
    assert time.monotonic() - start < 2.0


def test_lock_timeout_proceeds_unlocked_with_warning(tmp_path, caplog):
    root, ready, key = tmp_path / "cache", tmp_path / "ready", make_key("stuck")
    holder = start_worker("hold-lock", root, ready, key)  # alive but stuck
    try:
        _wait_for(ready, holder)
        store = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=0.3)
        with caplog.at_level(logging.WARNING, logger="regionc"):
            with store.lock(key) as waited:
                assert 0.25 < waited < 5.0
                assert store.save(key, b"compiled anyway", {})
        assert any("without the lock" in r.getMessage() for r in caplog.records)
        assert store.load(key) == b"compiled anyway"
    finally:
        _kill(holder)
