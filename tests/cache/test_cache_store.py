"""ArtifactStore in one process: roundtrip, corruption, permissions, unwritable roots, LRU, clear."""

import errno
import hashlib
import json
import logging
import os
import struct
import time
from pathlib import Path

import pytest
from cache_util import make_key

from regionc.cache import store as store_mod
from regionc.cache.store import MAGIC, ArtifactStore, CacheError

IS_ROOT = os.geteuid() == 0


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- roundtrip
def test_roundtrip_and_format(store, root):
    key = make_key("a")
    payload = os.urandom(3 * 1024 * 1024 + 17)  # > 1 chunk
    factors = {"fingerprint": "fp", "input_meta": [{"dtype": "torch.float16", "shape": [2, "s0"]}]}
    assert store.load(key) is None
    assert store.save(key, payload, factors)
    assert store.load(key) == payload

    path = root / "artifacts" / key[:2] / f"{key}.entry"
    data = path.read_bytes()
    magic, header_len = struct.unpack_from("<8sQ", data)
    assert magic == MAGIC
    header = json.loads(data[16:16 + header_len])
    assert header["key"] == key and header["size"] == len(payload) and header["factors"] == factors
    assert header["sha256"] == hashlib.sha256(payload).hexdigest() and header["regionc_version"]
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    # private: 0700 directories, 0600 files, no temp files left behind
    for d in (root, root / "artifacts", root / "artifacts" / key[:2], root / "locks"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(root.rglob("*.tmp"))

    (info,) = store.entries()
    assert info.key == key and info.factors == factors and info.hits == 1 and not info.error
    stats = store.stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 0
    store.record_miss(make_key("b"))
    assert store.stats()["misses"] == 1
    # a second store object (another process later) sees the same state
    again = ArtifactStore(root, max_bytes=1 << 30, lock_timeout_s=5)
    assert again.load(key) == payload and again.stats()["hits"] == 2


def test_save_replaces_existing_entry(store):
    key = make_key("a")
    assert store.save(key, b"one", {})
    assert store.save(key, b"two", {})
    assert store.load(key) == b"two"


def test_invalid_keys_rejected(store):
    for bad in ("../../etc/passwd", "ABCDEF0123456789", "", "abc"):
        with pytest.raises(ValueError):
            store.load(bad)


# ---------------------------------------------------------------------------- corruption
def _rewrite_header(data: bytes, edit) -> bytes:
    """Re-encode an entry with an edited header and a *valid* trailer (so only the header check can fail)."""
    _, header_len = struct.unpack_from("<8sQ", data)
    header = json.loads(data[16:16 + header_len])
    payload = data[16 + header_len:-32]
    raw = edit(header)
    raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    body = struct.pack("<8sQ", MAGIC, len(raw)) + raw + payload
    return body + hashlib.sha256(body).digest()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


CORRUPTIONS = {
    "truncated_payload": lambda d: d[:len(d) // 2],
    "truncated_to_zero": lambda d: b"",
    "random_bytes": lambda d: os.urandom(len(d)),
    "payload_bit_flip": lambda d: _flip(d, len(d) - 100),
    "wrong_trailer_checksum": lambda d: d[:-32] + bytes(32),
    "garbled_meta_json": lambda d: _rewrite_header(d, lambda h: b"{not json"),
    "meta_wrong_key": lambda d: _rewrite_header(d, lambda h: {**h, "key": make_key("other")}),
    "meta_wrong_sha256": lambda d: _rewrite_header(d, lambda h: {**h, "sha256": "0" * 64}),
    "meta_wrong_size": lambda d: _rewrite_header(d, lambda h: {**h, "size": h["size"] + 1}),
    "bad_magic": lambda d: b"NOTRGNC!" + d[8:],
    "huge_header_length": lambda d: d[:8] + struct.pack("<Q", 1 << 60) + d[16:],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_entry_detected_removed_and_replaced(store, root, caplog, kind):
    key = make_key("victim")
    payload = os.urandom(200_000)
    assert store.save(key, payload, {"fingerprint": "fp"})
    path = root / "artifacts" / key[:2] / f"{key}.entry"
    path.write_bytes(CORRUPTIONS[kind](path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.load(key) is None
    assert any(key in m and "corrupt" in m for m in _warnings(caplog)), _warnings(caplog)
    assert not path.exists()  # removed
    assert store.load(key) is None  # now a plain miss
    assert store.save(key, payload, {"fingerprint": "fp"})
    assert store.load(key) == payload


# ---------------------------------------------------------------------------- permissions
@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_entry_owned_by_another_user_is_refused(store, root, caplog):
    key = make_key("foreign")
    assert store.save(key, b"payload", {})
    path = root / "artifacts" / key[:2] / f"{key}.entry"
    os.chown(path, 12345, 12345)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.load(key) is None
    assert any("refusing" in m and "uid 12345" in m for m in _warnings(caplog))
    assert path.exists()  # refused, not deleted
    assert store.entries()[0].error.startswith("owned by uid 12345")


@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_root_owned_by_another_user_is_refused(root, caplog):
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        s = ArtifactStore(root, max_bytes=1 << 20, lock_timeout_s=1)
    assert not s.readable and not s.writable and "uid 12345" in s.problem
    assert len(_warnings(caplog)) == 1


def test_group_writable_entry_dir_is_refused(store, root, caplog):
    key = make_key("shared")
    assert store.save(key, b"payload", {})
    os.chmod(root / "artifacts" / key[:2], 0o770)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.load(key) is None
    assert any("group/world-writable" in m for m in _warnings(caplog))


def test_group_writable_entry_file_is_refused(store, root):
    key = make_key("shared")
    assert store.save(key, b"payload", {})
    os.chmod(root / "artifacts" / key[:2] / f"{key}.entry", 0o620)
    assert store.load(key) is None


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_group_or_world_writable_root_is_refused(root, caplog, mode):
    root.mkdir()
    os.chmod(root, mode)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        s = ArtifactStore(root, max_bytes=1 << 20, lock_timeout_s=1)
        key = make_key("x")
        assert s.load(key) is None and s.save(key, b"p", {}) is False
        with s.lock(key) as waited:
            assert waited == 0.0
    assert not s.readable and not s.writable
    assert len(_warnings(caplog)) == 1 and "group/world-writable" in _warnings(caplog)[0]
    assert not (root / "artifacts").exists()  # nothing created in an untrusted root


def test_symlinked_entry_is_not_followed(store, root, tmp_path):
    key = make_key("link")
    assert store.save(key, b"payload", {})
    path = root / "artifacts" / key[:2] / f"{key}.entry"
    target = tmp_path / "elsewhere"
    os.replace(path, target)
    path.symlink_to(target)
    assert store.load(key) is None


# ---------------------------------------------------------------------------- unwritable roots
@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 0500 does not stop root from writing "
                                    "(test_read_only_root_simulated covers this case)")
def test_read_only_root_chmod(root, caplog):
    key = make_key("ro")
    assert ArtifactStore(root, 1 << 20, 1).save(key, b"shipped", {})
    for d in (root / "artifacts" / key[:2], root / "artifacts", root / "locks", root):
        os.chmod(d, 0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="regionc"):
            s = ArtifactStore(root, 1 << 20, 1)
            assert s.readable and not s.writable
            assert s.load(key) == b"shipped"
            assert s.save(make_key("new"), b"x", {}) is False
        assert len(_warnings(caplog)) == 1
    finally:
        for d in (root, root / "artifacts", root / "locks", root / "artifacts" / key[:2]):
            os.chmod(d, 0o700)


def _read_only_fs(monkeypatch, root: Path, err: int = errno.EROFS) -> None:
    """Make every create/write under ``root`` fail like a read-only mount (works as root too)."""
    real_open, real_mkdir = os.open, os.mkdir
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def fake_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(root)) and flags & write_flags:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise OSError(err, os.strerror(err), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_root_simulated(root, monkeypatch, caplog, err):
    key = make_key("shipped")
    assert ArtifactStore(root, 1 << 20, 1).save(key, b"prebuilt", {"fingerprint": "fp"})
    _read_only_fs(monkeypatch, root, err)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        s = ArtifactStore(root, 1 << 20, 1)
        assert s.readable and not s.writable
        assert s.load(key) == b"prebuilt"  # a shipped read-only cache still serves loads
        assert s.save(make_key("new"), b"x", {}) is False
        s.record_miss(make_key("new"))
        with s.lock(make_key("new")) as waited:
            assert waited == 0.0
    assert len(_warnings(caplog)) == 1 and "not writable" in _warnings(caplog)[0]
    with pytest.raises(CacheError):
        s.clear()


def test_root_that_cannot_be_created(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with caplog.at_level(logging.WARNING, logger="regionc"):
        s = ArtifactStore(blocker / "cache", 1 << 20, 1)
        key = make_key("k")
        assert s.load(key) is None and s.save(key, b"p", {}) is False
    assert not s.readable and not s.writable and len(_warnings(caplog)) == 1


def test_disk_full_during_save(store, root, monkeypatch, caplog):
    """ENOSPC in the middle of writing: save returns False, one warning, no temp file, old entry intact."""
    key = make_key("big")
    assert store.save(key, b"old", {})
    real_write = os.write

    def full_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(root)) and len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert store.save(key, os.urandom(50_000), {}) is False
        assert store.save(make_key("other"), os.urandom(50_000), {}) is False
    monkeypatch.undo()
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert not list(root.rglob("*.tmp"))
    assert store.load(key) == b"old"


# ---------------------------------------------------------------------------- LRU and clear
def _set_last_used(root: Path, key: str, when: float) -> None:
    for suffix in (".entry", ".hits"):
        path = root / "artifacts" / key[:2] / f"{key}{suffix}"
        if path.exists():
            os.utime(path, (when, when))


def test_lru_eviction_past_max_bytes(root):
    entry_size = 100_000
    s = ArtifactStore(root, max_bytes=3 * entry_size + 3 * 2000, lock_timeout_s=1)
    a, b, c, d = (make_key(n) for n in "abcd")
    now = time.time()
    for i, key in enumerate((a, b, c)):
        assert s.save(key, os.urandom(entry_size), {"n": i})
        _set_last_used(root, key, now - 1000 + i)  # a oldest, then b, then c
    assert s.load(a) is not None  # using a makes b the least recently used
    assert s.save(d, os.urandom(entry_size), {})
    assert s.load(b) is None
    assert all(s.load(k) is not None for k in (a, c, d))
    assert s.stats()["bytes"] <= s.max_bytes


def test_entry_larger_than_cap_is_not_stored(root, caplog):
    s = ArtifactStore(root, max_bytes=10_000, lock_timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert s.save(make_key("huge"), os.urandom(20_000), {}) is False
    assert "exceeds cache_max_bytes" in _warnings(caplog)[0]


def test_clear_older_than_and_all(store, root):
    old, new = make_key("old"), make_key("new")
    assert store.save(old, b"o", {}) and store.save(new, b"n", {})
    store.record_miss(old)
    _set_last_used(root, old, time.time() - 10 * 86400)
    stale_tmp = root / "artifacts" / old[:2] / f".{old}.abc.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (time.time() - 7200,) * 2)
    fresh_tmp = root / "artifacts" / new[:2] / f".{new}.abc.tmp"  # maybe a live writer: kept
    fresh_tmp.write_bytes(b"half")

    assert store.clear(older_than_days=5) == 1
    assert store.load(old) is None and store.load(new) == b"n"
    assert not stale_tmp.exists() and fresh_tmp.exists()
    assert not (root / "artifacts" / old[:2] / f"{old}.hits").exists()
    assert store.stats()["misses"] == 1
    assert store.clear() == 1
    assert store.entries() == [] and store.stats()["misses"] == 0


def test_concurrent_replacement_is_not_deleted_as_corrupt(store, root, monkeypatch):
    """A reader that found a bad file must not delete a good one a writer renamed in meanwhile."""
    key = make_key("race")
    assert store.save(key, b"good", {})
    path = root / "artifacts" / key[:2] / f"{key}.entry"
    path.write_bytes(b"garbage" * 10)
    real_decode = store_mod.decode_entry

    def decode_then_writer_replaces(data, k):
        ArtifactStore(root, 1 << 30, 1).save(key, b"fresh", {})  # another process commits
        return real_decode(data, k)

    monkeypatch.setattr(store_mod, "decode_entry", decode_then_writer_replaces)
    assert store.load(key) is None
    monkeypatch.undo()
    assert store.load(key) == b"fresh"
