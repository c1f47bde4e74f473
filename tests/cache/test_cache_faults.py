"""The store under planted links, foreign things under entry names, dead writers and renamed entries."""

import hashlib
import json
import logging
import os
import struct
import time
from pathlib import Path

import pytest
from cache_util import make_key, start_worker
from test_cache_processes import _kill, _wait_for

from regionc.cache.key import canonical_json
from regionc.cache.store import MAGIC, STALE_TMP_S, ArtifactStore


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _entry(root: Path, key: str, suffix: str = ".entry") -> Path:
    return root / "artifacts" / key[:2] / f"{key}{suffix}"


# ---------------------------------------------------------------------------- links
def test_writes_never_follow_planted_links(store, root, tmp_path):
    """Failure 3: the hit and miss counters were written through links planted in the cache."""
    key = make_key("a")
    assert store.save(key, b"payload", {})
    targets = {}
    for name, path in [("hits", _entry(root, key, ".hits")), ("misses", root / "misses"),
                       ("lock", root / "locks" / f"{key}.lock")]:
        target = tmp_path / f"target-{name}"
        target.write_bytes(b"precious")
        os.utime(target, (1_000_000, 1_000_000))
        path.unlink(missing_ok=True)
        path.symlink_to(target)
        targets[name] = target

    assert store.load(key) == b"payload"  # counts a hit
    store.record_miss(key)
    assert store.save(key, b"payload 2", {})  # marks the entry as used
    with store.lock(key):
        pass
    for name, target in targets.items():
        assert target.read_bytes() == b"precious" and target.stat().st_mtime == 1_000_000, name


def test_linked_shard_is_neither_written_nor_read(store, root, tmp_path):
    key = make_key("b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    _entry(root, key).parent.symlink_to(elsewhere)
    assert store.save(key, b"payload", {}) is False
    assert list(elsewhere.iterdir()) == []
    assert ArtifactStore(root, 1 << 20, 1).save(key, b"payload", {}) is False


# ---------------------------------------------------------------------------- things that are not entries
def _fill(root: Path, keys: list[str], size: int, start: float) -> None:
    for i, key in enumerate(keys):
        assert ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=1).save(key, os.urandom(size), {})
        for suffix in (".entry", ".hits"):
            os.utime(_entry(root, key, suffix), (start + i, start + i))


def test_eviction_keeps_the_cap_past_a_directory_under_an_entry_name(root, caplog):
    """Failure 5: a directory named like an entry stopped eviction (the cap was no longer kept)."""
    blocker = make_key("blocker")
    _entry(root, blocker).mkdir(parents=True)
    (_entry(root, blocker) / "inside").write_bytes(b"x" * 1000)
    os.utime(_entry(root, blocker), (1, 1))  # the least recently used "entry"
    cap = 150_000
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for round_ in range(3):
            keys = [make_key(f"round{round_}-{i}") for i in range(3)]
            _fill(root, keys, 40_000, time.time() - 1000 + 10 * round_)
            store = ArtifactStore(root, max_bytes=cap, lock_timeout_s=1)
            assert store.save(make_key(f"new{round_}"), os.urandom(40_000), {})
            assert store.stats()["bytes"] <= cap
    assert _entry(root, blocker).is_dir() and (_entry(root, blocker) / "inside").exists()  # left alone
    assert any(str(_entry(root, blocker)) in m and "left alone" in m for m in _warnings(caplog))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_eviction_and_clear_leave_other_users_entries_alone(store, root):
    foreign, mine = make_key("foreign"), make_key("mine")
    assert store.save(foreign, b"f" * 1000, {}) and store.save(mine, b"m" * 1000, {})
    os.chown(_entry(root, foreign), 12345, 12345)
    assert store.clear() == 1
    assert _entry(root, foreign).exists() and not _entry(root, mine).exists()


def test_a_directory_under_an_entry_name_is_refused_not_loaded(store, root, caplog):
    key = make_key("dir")
    _entry(root, key).mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.load(key) is None
    assert any("not a regular file" in m for m in _warnings(caplog))


# ---------------------------------------------------------------------------- dead writers
def test_a_dead_writers_temp_file_is_removed_on_the_next_open(tmp_path, caplog):
    """Failure 7: temp files of killed writers stayed forever (nothing removed them)."""
    root = tmp_path / "cache"
    writers = []
    for name in ("dead", "alive"):
        ready = tmp_path / f"ready-{name}"
        writer = start_worker("stall-write", root, ready, make_key(name), 3 * 1024 * 1024)
        _wait_for(ready, writer)
        writers.append(writer)
    dead, alive = writers
    try:
        _kill(dead)
        temps = {p.name.split(".")[1]: p for p in root.rglob("*.tmp")}
        assert set(temps) == {make_key("dead"), make_key("alive")}
        for path in temps.values():
            os.utime(path, (time.time() - STALE_TMP_S - 10,) * 2)
        with caplog.at_level(logging.INFO, logger="regionc"):
            ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=1)  # the next run opens the store
        assert not temps[make_key("dead")].exists()
        assert temps[make_key("alive")].exists()  # its writer still holds it
        assert any("died mid-write" in r.getMessage() for r in caplog.records)
    finally:
        _kill(alive)
    ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=1)
    assert not list(root.rglob("*.tmp"))


def test_a_fresh_temp_file_is_kept(store, root):
    """Where there is no flock, only the age tells a live writer: a recent temp file stays."""
    key = make_key("fresh")
    temp = _entry(root, key).parent / f".{key}.abc.tmp"
    temp.parent.mkdir(mode=0o700)
    temp.write_bytes(b"half")
    ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=1)
    assert temp.exists()


# ---------------------------------------------------------------------------- renamed entries
def test_another_pieces_entry_under_this_key_is_refused(store, root, caplog):
    """Failure 8: another piece's valid entry, renamed with its header's key changed to match (checksums
    recomputed), was loaded; the model's call then raised ValueError. Its factors still name its own key."""
    factors_a, factors_b = {"fingerprint": "piece-a"}, {"fingerprint": "piece-b"}
    key_a, key_b = (hashlib.sha256(canonical_json(f).encode()).hexdigest() for f in (factors_a, factors_b))
    assert store.save(key_a, b"code of a", factors_a) and store.save(key_b, b"code of b", factors_b)
    data = _entry(root, key_b).read_bytes()
    _, header_len = struct.unpack_from("<8sQ", data)
    header = json.loads(data[16:16 + header_len])
    raw = json.dumps({**header, "key": key_a}).encode()
    body = struct.pack("<8sQ", MAGIC, len(raw)) + raw + data[16 + header_len:-32]
    _entry(root, key_a).write_bytes(body + hashlib.sha256(body).digest())

    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.load(key_a) is None
    assert any(key_a in m and f"factors are those of key '{key_b}'" in m for m in _warnings(caplog))
    assert not _entry(root, key_a).exists()  # removed: the next compile writes the right one
    assert store.load(key_b) == b"code of b"


def test_keys_not_derived_from_factors_still_load(store):
    key = make_key("saved trace")  # e.g. a saved trace's key: its factors do not hash to it
    assert store.save(key, b"trace", {"saved_trace": {"fn": "forward"}})
    assert store.load(key) == b"trace"
