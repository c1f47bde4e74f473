"""The persistent artifact store: atomic, locked, checked, private, size-capped.

Layout under ``root`` (root and every directory regionc creates are mode 0700)::

    root/artifacts/<key[:2]>/<key>.entry   one file per entry = the commit unit (see below)
    root/artifacts/<key[:2]>/<key>.hits    one byte appended per load: size = hit count, mtime = last use
    root/artifacts/<key[:2]>/.<key>.*.tmp  an entry being written (its writer holds an flock on it;
                                           one nobody holds is a dead writer's and is removed)
    root/locks/<key>.lock                  per-key inter-process lock (filelock / flock)
    root/misses                            one byte appended per recorded miss
    root/fetches                           one line per entry fetched from the remote tier: its seconds
    root/inductor, root/triton             Inductor's and Triton's own caches (see key.configure_compiler_caches)

Entry file (format 1), little endian::

    b"RGNCART1" | u64 header length | header JSON | payload | sha256 of everything before it (32 bytes)

    header = {"format": 1, "key", "size", "sha256" (of the payload), "factors", "created", "regionc_version",
              "key_from_factors"}

An entry is written to a temp file in its final directory, fsynced, and renamed into place with
``os.replace``: a reader sees the old file, the new file, or none, never a mix (payload and
metadata live in the one file, so they cannot come from different writes). A writer killed
mid-write leaves only a temp file, which no reader ever opens. On load the whole file is checked
(magic, lengths, key, trailer and payload digests); anything wrong is logged with the key,
removed, and reported as a miss. An entry carries the key it was written for: the name in its
header, and, for a key that is the hash of its factors (every compiled piece), factors that hash
to it, so another piece's entry renamed (even with its header's key rewritten) is refused.
Appending one byte per hit/miss keeps the counters exact under concurrency without a lock.

Trust: the root must be the current user's and private, and every directory on the way to it
owned by root or the user and not writable by others (unless sticky, like ``/tmp``); otherwise
nothing under it is read or written. Under a trusted root, nothing regionc writes follows a
symbolic link (``O_NOFOLLOW``, or a temp file renamed in a directory checked to be the user's
own), an entry that is a link is not read, and eviction and ``clear`` step over (and name)
anything that is not an entry file the user owns.

Remote tier (``remote``, :mod:`regionc.cache.remote`): the same API serves it, so callers need not
know it is there. ``load`` looks locally, then fetches from the remote, verifies what it got like
a local file (a bad one is logged, dropped from the remote and reported as a miss) and writes it
locally; ``save`` also publishes put-if-absent; ``lock`` also takes the key's fleet-wide lease
when the entry is in neither tier; ``remove`` also drops a remote entry this process fetched.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import inspect
import json
import logging
import os
import re
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from regionc.cache.key import canonical_json
from regionc.logs import log_once

if TYPE_CHECKING:  # pragma: no cover
    from regionc.cache.remote import RemoteTier

log = logging.getLogger("regionc.cache")

MAGIC = b"RGNCART1"
FORMAT = 1
_PREFIX = struct.Struct("<8sQ")
_DIGEST_LEN = 32
_MAX_HEADER = 16 * 1024 * 1024
_CHUNK = 1 << 20
ENTRY_SUFFIX = ".entry"
HITS_SUFFIX = ".hits"
TMP_SUFFIX = ".tmp"
#: A temp file no writer holds a lock on and untouched for this long belongs to a dead writer.
STALE_TMP_S = 60.0
_KEY_RE = re.compile(r"^[0-9a-f]{16,128}$")
_DEFAULT_MAX_BYTES = 10 * 1024**3

#: Test hook: called after the first chunk of a payload is written (tests stall/kill a writer there).
_after_partial_write: Callable[[], None] | None = None


class CorruptEntry(Exception):
    """An entry file that fails a check; the message says which."""


class CacheError(OSError):
    """The store cannot do what was asked (root untrusted, not writable); the message says why."""


@dataclasses.dataclass
class EntryInfo:
    key: str
    path: str
    size: int  # bytes on disk
    payload_size: int
    created: float
    last_used: float
    hits: int
    factors: dict[str, Any]
    regionc_version: str = ""
    error: str = ""  # non-empty: header unreadable or entry not trusted (load would refuse it)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"regionc: invalid cache key {key!r} (expected 16-128 lowercase hex digits)")
    return key


def _untrusted_reason(st: os.stat_result) -> str | None:
    euid = os.geteuid()
    if st.st_uid != euid:
        return f"owned by uid {st.st_uid}, not the current user (uid {euid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group/world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _subdir_reason(st: os.stat_result) -> str | None:
    """Why a directory regionc keeps under the root (``lstat``-ed) is not its own: the path must not
    be a link, so that what is written into it stays under the trusted root."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    return _untrusted_reason(st)


def make_private_dir(path: Path) -> None:
    """Creates ``path`` (mode 0700) unless it exists; raises OSError unless it is then a real
    directory of the current user that nobody else can write (never a link)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    reason = _subdir_reason(os.lstat(path))
    if reason:
        raise OSError(errno.EPERM, f"{path} is {reason}")


def untrusted_root_reason(root: Path) -> str | None:
    """Why code must not be loaded from under the directory ``root``, or None when it may.

    ``root`` must be the current user's and private, and no directory on the way to it (as named,
    and after resolving links) may let someone else rename or replace what lies below it: each
    must be owned by root or the current user and not group/world-writable, unless it has the
    sticky bit (``/tmp``), which keeps others from renaming what they do not own.
    """
    try:
        st = os.stat(root)
    except OSError as exc:
        return f"not usable: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    reason = _untrusted_reason(st)
    if reason:
        return reason
    euid = os.geteuid()
    for parent in dict.fromkeys([*Path(os.path.abspath(root)).parents, *Path(os.path.realpath(root)).parents]):
        try:
            pst = os.stat(parent)
        except OSError as exc:
            return f"reached through {parent}, which cannot be checked: {exc.strerror or exc}"
        if pst.st_uid not in (0, euid):
            return f"reached through {parent}, owned by uid {pst.st_uid} (neither root nor the current user)"
        if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
            return (f"reached through {parent}, which is group/world-writable without the sticky bit "
                    f"(mode {stat.S_IMODE(pst.st_mode):04o})")
    return None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _append(path: Path | str, data: bytes) -> None:
    """Appends ``data`` to the regular file ``path`` (created 0o600 if missing) and sets its mtime
    to now. Never through a link, never into a FIFO or device (raises OSError instead)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.write(fd, data)
        os.utime(fd)
    finally:
        os.close(fd)


def _unlink(path: Path | str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _lock_temp_file(fd: int) -> None:
    """Holds an flock on a temp file while it is written: the mark of a live writer, which a dead
    one's file lacks (see ``ArtifactStore._remove_dead_writers_temp_files``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        log.debug("regionc: no flock on a temp file here (%s): its age alone marks it as live", exc)


def _filelock_kwargs() -> dict[str, Any]:
    params = inspect.signature(filelock.FileLock.__init__).parameters
    kwargs: dict[str, Any] = {"mode": 0o600}
    if "preserve_lock_file" in params:  # filelock >= 4: native flock only, never a stale soft-lock marker
        kwargs["preserve_lock_file"] = True
    if "is_singleton" in params:
        kwargs["is_singleton"] = False
    return kwargs


_FILELOCK_KWARGS = _filelock_kwargs()


def _factors_key(factors: Any) -> str:
    return hashlib.sha256(canonical_json(factors).encode()).hexdigest()


def encode_entry(key: str, payload: bytes, factors: dict, created: float | None = None) -> list[bytes | memoryview]:
    """The parts of an entry file, in order (joined, they are the file)."""
    from regionc import __version__

    header = json.dumps({
        "format": FORMAT,
        "key": key,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "factors": factors,
        "created": time.time() if created is None else created,
        "regionc_version": __version__,
        "key_from_factors": _factors_key(factors) == key,
    }, sort_keys=True, separators=(",", ":")).encode()
    return [_PREFIX.pack(MAGIC, len(header)) + header, memoryview(payload)]


def decode_entry(data: bytes | memoryview, key: str) -> tuple[dict, memoryview]:
    """``(header, payload)`` of a complete entry file, or :class:`CorruptEntry` saying what is wrong."""
    view = memoryview(data)
    if len(view) < _PREFIX.size + _DIGEST_LEN:
        raise CorruptEntry(f"truncated ({len(view)} bytes)")
    magic, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CorruptEntry(f"bad magic {bytes(magic)!r}")
    if header_len > _MAX_HEADER or _PREFIX.size + header_len + _DIGEST_LEN > len(view):
        raise CorruptEntry(f"truncated or bad header length {header_len}")
    body_end = len(view) - _DIGEST_LEN
    if hashlib.sha256(view[:body_end]).digest() != view[body_end:]:
        raise CorruptEntry("checksum mismatch")
    try:
        header = json.loads(bytes(view[_PREFIX.size:_PREFIX.size + header_len]))
    except ValueError as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptEntry(f"unknown format {header.get('format') if isinstance(header, dict) else header!r}")
    if header.get("key") != key:
        raise CorruptEntry(f"entry is for key {header.get('key')!r}")
    if header.get("key_from_factors") and _factors_key(header.get("factors")) != key:
        raise CorruptEntry(f"its factors are those of key {_factors_key(header.get('factors'))!r}")
    payload = view[_PREFIX.size + header_len:body_end]
    if header.get("size") != len(payload):
        raise CorruptEntry(f"payload is {len(payload)} bytes, header says {header.get('size')}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptEntry("payload sha256 mismatch")
    return header, payload


def read_header(path: Path | str) -> dict:
    """The header of an entry file without reading its payload (for listing)."""
    with open(path, "rb", buffering=0) as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise CorruptEntry("truncated")
        magic, header_len = _PREFIX.unpack(prefix)
        if magic != MAGIC or header_len > _MAX_HEADER:
            raise CorruptEntry("bad magic or header length")
        raw = f.read(header_len)
    if len(raw) < header_len:
        raise CorruptEntry("truncated header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptEntry("header is not an object")
    return header


class ArtifactStore:
    """Compiled-piece payloads on disk, keyed by :func:`regionc.cache.key.piece_key`.

    ``readable``: loads may return entries (the root passes :func:`untrusted_root_reason`).
    ``writable``: saves and locks work; False (after one warning) when the root is read-only,
    cannot be created, or is not trusted; callers then compile in memory and still load.
    ``write=False`` opens an existing root for reading only (``regionc cache ls``/``stats``):
    nothing is created, removed or counted, and ``writable`` stays False.
    ``remote``: the shared tier behind this one (see the module docstring).
    """

    def __init__(self, root: Path | str, max_bytes: int = _DEFAULT_MAX_BYTES, lock_timeout_s: float = 600.0,
                 write: bool = True, remote: RemoteTier | None = None):
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        self.lock_timeout_s = float(lock_timeout_s)
        self.artifacts = self.root / "artifacts"
        self.locks = self.root / "locks"
        self.readable = False
        self.writable = False
        self.problem = ""  # why the store is not readable/writable, for messages
        self.remote = remote
        self._fetched: dict[str, bytes] = {}  # key -> trailing sha256 of the entry this process fetched remotely
        self._log_key = object()
        self._open(write)

    # ------------------------------------------------------------------ setup
    def _warn_once(self, topic: str, msg: str, *args: Any) -> None:
        """A warning the first time this store meets ``topic``; a debug line after that."""
        log_once((self._log_key, topic), msg, *args, level=logging.WARNING, logger=log, repeat_level=logging.DEBUG)

    def _open(self, write: bool) -> None:
        if write and not self.root.is_dir():
            try:
                self.root.mkdir(parents=True, mode=0o700)
                os.chmod(self.root, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                self.problem = f"cannot create {self.root}: {exc.strerror or exc}"
                self._warn_once("open", "regionc: cache disabled: %s; compiling in memory", self.problem)
                return
        reason = untrusted_root_reason(self.root)
        if reason:
            self.problem = f"cache root {self.root} is {reason}"
            self._warn_once("open", "regionc: refusing the cache: %s; compiling in memory", self.problem)
            return
        if write:
            try:
                for sub in (self.artifacts, self.locks):
                    make_private_dir(sub)
                fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=TMP_SUFFIX, dir=self.artifacts)
                os.close(fd)
                os.unlink(probe)
                self.writable = True
            except OSError as exc:
                self.problem = f"cache root {self.root} is not writable: {exc.strerror or exc}"
                self._warn_once("open", "regionc: %s; compiling in memory (existing entries still load)",
                                self.problem)
        try:
            reason = _subdir_reason(os.lstat(self.artifacts))
        except FileNotFoundError:
            reason = None  # an empty root: nothing to read
        if reason:
            self.writable = False
            self.problem = f"{self.artifacts} is {reason}"
            self._warn_once("open", "regionc: refusing the cache: %s; compiling in memory", self.problem)
            return
        self.readable = True
        if self.writable:
            self._remove_dead_writers_temp_files()

    # ------------------------------------------------------------------ paths
    def _shard(self, key: str) -> Path:
        return self.artifacts / key[:2]

    def entry_path(self, key: str) -> Path:
        return self._shard(_check_key(key)) / (key + ENTRY_SUFFIX)

    def _hits_path(self, key: str) -> Path:
        return self._shard(key) / (key + HITS_SUFFIX)

    # ------------------------------------------------------------------ load
    def load(self, key: str) -> bytes | None:
        """The verified payload of ``key``, locally or else from the remote tier, or None (missing,
        refused, or corrupt → removed)."""
        _check_key(key)
        read = self.read_entry(key)
        if read is not None:
            self._touch_hits(key)
            return bytes(read[1])
        return self._fetch(key) if self.remote is not None else None

    def read_entry(self, key: str) -> tuple[memoryview, memoryview] | None:
        """``(entry file, payload)`` of the local entry of ``key`` once verified, or None (missing,
        refused, or corrupt → removed). Counts nothing."""
        if not self.readable:
            return None
        path = self.entry_path(_check_key(key))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(f"refuse:{key}", "regionc: cache entry %s not loaded: %s", key[:16], exc.strerror or exc)
            return None
        try:
            st = os.fstat(fd)
            reason = ("not a regular file" if not stat.S_ISREG(st.st_mode) else None) or _untrusted_reason(st) \
                or _subdir_reason(os.lstat(path.parent))
            if reason:
                self._warn_once(f"refuse:{key}", "regionc: refusing cache entry %s (%s): %s", key[:16], path, reason)
                return None
            buf = bytearray(st.st_size)
            view = memoryview(buf)
            got = 0
            while got < st.st_size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    break
                got += n
            _, payload = decode_entry(view[:got], key)
            return view[:got], payload
        except CorruptEntry as exc:
            log.warning("regionc: cache entry %s is corrupt (%s): removed, will recompile", key, exc)
            self._remove_if_same(path, st)
            return None
        except OSError as exc:
            self._warn_once(f"refuse:{key}", "regionc: cache entry %s not loaded: %s", key[:16], exc)
            return None
        finally:
            os.close(fd)

    def _fetch(self, key: str) -> bytes | None:
        """The payload of ``key`` from the remote tier, verified and written locally; or None."""
        start = time.monotonic()
        data = self.remote.get(key)
        if data is None:
            return None
        try:
            payload = self.save_entry(key, data)
        except CorruptEntry as exc:
            log.warning("regionc: remote cache entry %s is corrupt (%s): dropped from %s, will recompile",
                        key, exc, self.remote.name)
            self.remote.discard(key, bytes(data[-_DIGEST_LEN:]))
            return None
        self._fetched[key] = bytes(data[-_DIGEST_LEN:])
        if self.writable:
            try:
                _append(self.root / "fetches", f"{time.monotonic() - start:.6f}\n".encode())
            except OSError as exc:
                log.debug("regionc: could not record a fetch of %s: %s", key[:16], exc)
        return payload

    def origin(self, key: str) -> str:
        """Where this process got the entry of ``key`` it loaded: "remote" or "cache" (local)."""
        return "remote" if key in self._fetched else "cache"

    def _remove_if_same(self, path: Path, st: os.stat_result) -> None:
        """Remove the bad file unless a writer has replaced it since we opened it."""
        try:
            now = os.stat(path, follow_symlinks=False)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)
        except OSError as exc:
            log.debug("regionc: could not remove bad cache entry %s: %s", path, exc)

    def _touch_hits(self, key: str) -> None:
        """Best effort: one byte appended = one hit; the append updates the last-used time."""
        if not self.writable:
            return
        try:
            _append(self._hits_path(key), b"+")
        except OSError as exc:
            log.debug("regionc: could not record a hit for %s: %s", key[:16], exc)

    def record_miss(self, key: str) -> None:
        """Count a miss (best effort) so ``regionc cache stats`` can show a hit rate."""
        if not self.writable:
            return
        try:
            _append(self.root / "misses", b"-")
        except OSError as exc:
            log.debug("regionc: could not record a miss for %s: %s", key[:16], exc)

    # ------------------------------------------------------------------ save
    def save(self, key: str, payload: bytes, factors: dict) -> bool:
        """Write ``key`` atomically (evicting least recently used entries past ``max_bytes``) and
        publish it to the remote tier; True if either now holds it."""
        _check_key(key)
        parts = encode_entry(key, payload, factors)
        size = sum(len(p) for p in parts) + _DIGEST_LEN
        if size > self.max_bytes:
            self._warn_once("too-big", "regionc: cache entry %s (%d bytes) exceeds cache_max_bytes=%d: not stored",
                            key[:16], size, self.max_bytes)
            return False
        saved = self.writable and self._commit(key, parts)
        if self.remote is None:
            return saved
        entry = b"".join(parts)
        return self.remote.publish(key, entry + hashlib.sha256(entry).digest()) or saved

    def save_entry(self, key: str, data: bytes | memoryview) -> bytes:
        """Verify the entry file ``data`` of ``key`` (from the remote tier, which keeps to
        ``max_bytes``) and write it locally as it is; returns its payload, or raises
        :class:`CorruptEntry` (nothing written then)."""
        _, payload = decode_entry(data, _check_key(key))
        if self.writable:
            self._commit(key, [memoryview(data)[:-_DIGEST_LEN]])
        return bytes(payload)

    def _commit(self, key: str, parts: list[bytes | memoryview]) -> bool:
        """Writes ``parts`` and their sha256 as the entry file of ``key``: temp file, fsync, rename."""
        shard = self._shard(key)
        tmp = None
        try:
            make_private_dir(shard)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=TMP_SUFFIX, dir=shard)
            try:
                _lock_temp_file(fd)
                digest = hashlib.sha256()
                for part in parts:
                    for offset in range(0, len(part), _CHUNK):
                        chunk = part[offset:offset + _CHUNK]
                        digest.update(chunk)
                        _write_all(fd, chunk)
                        if _after_partial_write is not None:
                            _after_partial_write()
                _write_all(fd, digest.digest())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, shard / (key + ENTRY_SUFFIX))
            tmp = None
        except OSError as exc:
            self._warn_once("save", "regionc: could not write cache entry %s under %s: %s (compiled code stays "
                            "in memory)", key[:16], self.root, exc.strerror or exc)
            return False
        finally:
            if tmp is not None:
                try:
                    _unlink(tmp)
                except OSError:
                    pass
        try:  # a fresh entry counts as just used (the hits file's mtime is the last-use time)
            _append(self._hits_path(key), b"")
        except OSError as exc:
            log.debug("regionc: could not mark %s as used: %s", key[:16], exc)
        try:
            self.evict(protect=key)
        except OSError as exc:
            log.debug("regionc: eviction failed: %s", exc)
        return True

    # ------------------------------------------------------------------ lock
    @contextmanager
    def lock(self, key: str) -> Iterator[float]:
        """Per-key inter-process lock, and the key's fleet-wide lease when there is a remote tier and
        no local entry; yields the seconds spent waiting for them.

        Past ``lock_timeout_s`` in all it logs a warning and yields unlocked (the holder may be stuck;
        a dead holder's flock is released by the kernel and its lease expires, so this is for live
        but stuck ones).
        """
        _check_key(key)
        with self._local_lock(key) as waited:
            if self.remote is None or (self.readable and os.path.exists(self.entry_path(key))):
                yield waited
                return
            with self.remote.lease(key, max(0.0, self.lock_timeout_s - waited)) as remote_waited:
                yield waited + remote_waited

    @contextmanager
    def _local_lock(self, key: str) -> Iterator[float]:
        if not self.writable:
            yield 0.0
            return
        path = self.locks / f"{key}.lock"
        lock = filelock.FileLock(str(path), timeout=self.lock_timeout_s, **_FILELOCK_KWARGS)
        start = time.monotonic()
        acquired = False
        try:
            # created here, never through a link (older filelock versions open it O_TRUNC, following links)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600))
            lock.acquire()
            acquired = True
        except filelock.Timeout:
            log.warning("regionc: waited %.0fs for another process compiling cache entry %s; compiling without "
                        "the lock", time.monotonic() - start, key[:16])
        except OSError as exc:
            self._warn_once("lock", "regionc: cache lock for %s failed (%s); compiling without it", key[:16], exc)
        waited = time.monotonic() - start
        try:
            yield waited
        finally:
            if acquired:
                lock.release()

    # ------------------------------------------------------------------ listing, eviction, clearing
    def _skip(self, path: Path, reason: str) -> None:
        self._warn_once(f"skip:{path}", "regionc: %s is not a cache entry this user owns (%s): left alone",
                        path, reason)

    def _shards(self) -> Iterator[Path]:
        """The shard directories under ``artifacts``; anything else there is named once and left alone."""
        try:
            children = sorted(self.artifacts.iterdir())
        except FileNotFoundError:
            return
        for shard in children:
            try:
                reason = _subdir_reason(os.lstat(shard))
            except FileNotFoundError:
                continue
            if reason is None:
                yield shard
            elif not shard.name.endswith(TMP_SUFFIX):  # another process's writability probe
                self._skip(shard, reason)

    def _scan(self) -> Iterator[tuple[str, Path, os.stat_result, float]]:
        """``(key, path, stat, last_used)`` of every entry file: a regular file named ``<key>.entry``."""
        if not self.readable:
            return
        for shard in self._shards():
            for path in sorted(shard.iterdir()):
                name = path.name
                if not name.endswith(ENTRY_SUFFIX) or not _KEY_RE.match(name[:-len(ENTRY_SUFFIX)]):
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    self._skip(path, "not a regular file")
                    continue
                key = name[:-len(ENTRY_SUFFIX)]
                last_used = st.st_mtime
                try:
                    last_used = max(last_used, os.lstat(self._hits_path(key)).st_mtime)
                except OSError:
                    pass
                yield key, path, st, last_used

    def _owned(self, path: Path, st: os.stat_result) -> bool:
        """Eviction and ``clear`` remove only entry files of the current user."""
        if st.st_uid == os.geteuid():
            return True
        self._skip(path, f"owned by uid {st.st_uid}")
        return False

    def _remove_file(self, path: Path) -> bool:
        """Unlinks ``path`` (a file, or a link but never what it points to); a directory, or anything
        else that cannot be removed, is named once and left alone."""
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._skip(path, exc.strerror or str(exc))
            return False

    def _remove_dead_writers_temp_files(self) -> None:
        """Removes temp files of writers that died mid-write (a killed compile leaves one behind).

        A writer holds an flock on its temp file until it renames it, so one that nobody holds and
        nobody wrote to for ``STALE_TMP_S`` is a dead writer's. Where the file system has no flock,
        the age alone decides (a live writer that loses its file fails its save with a warning).
        """
        now = time.time()
        for directory in (self.artifacts, *self._shards()):
            for path in directory.glob("*" + TMP_SUFFIX):
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_TMP_S:
                        continue
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                except OSError:
                    pass  # no flock here: the age decides
                finally:
                    os.close(fd)
                if self._remove_file(path):
                    log.info("regionc: removed %s, left by a writer that died mid-write", path)

    def entries(self) -> list[EntryInfo]:
        """Every entry, most recently used first (headers only; payloads are not read)."""
        result = []
        for key, path, st, last_used in self._scan():
            try:
                hits = os.lstat(self._hits_path(key)).st_size
            except OSError:
                hits = 0
            info = EntryInfo(key=key, path=str(path), size=st.st_size, payload_size=0, created=st.st_mtime,
                             last_used=last_used, hits=hits, factors={})
            reason = _untrusted_reason(st)
            if reason:
                info.error = reason
            else:
                try:
                    header = read_header(path)
                    info.payload_size = int(header.get("size", 0))
                    info.created = float(header.get("created", st.st_mtime))
                    info.factors = header.get("factors") or {}
                    info.regionc_version = str(header.get("regionc_version", ""))
                    if header.get("key") != key:
                        info.error = "header names another key"
                except (OSError, CorruptEntry, ValueError, TypeError) as exc:
                    info.error = f"corrupt: {exc}"
            result.append(info)
        result.sort(key=lambda e: e.last_used, reverse=True)
        return result

    def _misses(self) -> int:
        try:
            return os.stat(self.root / "misses").st_size
        except OSError:
            return 0

    def _fetches(self) -> tuple[int, float]:
        """How many entries were fetched from the remote tier, and the seconds that took."""
        try:
            lines = (self.root / "fetches").read_bytes().split()
        except OSError:
            return 0, 0.0
        seconds = []
        for line in lines:
            try:
                seconds.append(float(line))
            except ValueError:
                continue
        return len(seconds), sum(seconds)

    def stats(self) -> dict[str, Any]:
        """Counts since the last full ``clear``: ``hits`` loaded from this cache, ``fetched`` from
        the remote tier (``fetch_s`` seconds), ``misses`` compiled."""
        entries = self.entries()
        hits = sum(e.hits for e in entries)
        misses = self._misses()
        fetched, fetch_s = self._fetches()
        return {
            "root": str(self.root),
            "readable": self.readable,
            "writable": self.writable,
            "problem": self.problem,
            "entries": len(entries),
            "bad_entries": sum(1 for e in entries if e.error),
            "bytes": sum(e.size for e in entries),
            "max_bytes": self.max_bytes,
            "hits": hits,
            "fetched": fetched,
            "fetch_s": fetch_s,
            "misses": misses,
            "hit_rate": (hits + fetched) / (hits + fetched + misses) if hits + fetched + misses else None,
            "oldest_created": min((e.created for e in entries), default=None),
            "last_used": max((e.last_used for e in entries), default=None),
        }

    def remove(self, key: str) -> bool:
        """Drop one entry (e.g. one that verified but its artifact failed to load), and its copy in
        the remote tier if that is where this process got it."""
        fetched = self._fetched.pop(_check_key(key), None)
        if fetched is not None:
            self.remote.discard(key, fetched)
        return self.writable and self._remove_entry(key, self.entry_path(key))

    def _remove_entry(self, key: str, path: Path) -> bool:
        removed = self._remove_file(path)  # the entry file first: from here on no reader can load it
        self._remove_file(self._hits_path(key))
        lock_path = self.locks / f"{key}.lock"
        if os.path.isfile(lock_path) and not os.path.islink(lock_path):
            # Only if nobody holds it. A racing process may still end up with a lock on the
            # unlinked inode: the worst case is one duplicate compile, never a bad entry.
            lock = filelock.FileLock(str(lock_path), timeout=0, **_FILELOCK_KWARGS)
            try:
                with lock:
                    _unlink(lock_path)
            except (filelock.Timeout, OSError):
                pass
        return removed

    def evict(self, protect: str | None = None) -> int:
        """Remove least recently used entries until the total is at most ``max_bytes``.

        Counts and removes only the current user's entry files; anything else is left alone."""
        if not self.writable:
            return 0
        scanned = [item for item in self._scan() if self._owned(item[1], item[2])]
        total = sum(st.st_size for _, _, st, _ in scanned)
        evicted = 0
        for key, path, st, _ in sorted(scanned, key=lambda item: item[3]):
            if total <= self.max_bytes:
                break
            if key == protect:
                continue
            if self._remove_entry(key, path):
                evicted += 1
                log.info("regionc: evicted cache entry %s (%d bytes, least recently used)", key[:16], st.st_size)
                total -= st.st_size
        return evicted

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove entries not used for ``older_than_days`` days (all when None); returns how many.

        Also removes dead writers' temp files and orphan hit counters; clearing everything resets
        the miss and fetch counters. Only the current user's entry files are removed; anything else is named
        and left alone. Raises :class:`CacheError` when the store is not writable.
        """
        if not self.writable:
            raise CacheError(errno.EACCES, f"regionc: cannot clear the cache: {self.problem or 'not writable'}")
        cutoff = None if older_than_days is None else time.time() - float(older_than_days) * 86400.0
        self._remove_dead_writers_temp_files()
        removed = 0
        live = set()
        for key, path, st, last_used in list(self._scan()):
            if (cutoff is None or last_used < cutoff) and self._owned(path, st):
                removed += self._remove_entry(key, path)
            else:
                live.add(key)
        for shard in self._shards():  # hit counters whose entry is gone
            for path in shard.glob("*" + HITS_SUFFIX):
                key = path.name[:-len(HITS_SUFFIX)]
                if key not in live and not os.path.lexists(shard / (key + ENTRY_SUFFIX)):
                    self._remove_file(path)
        if cutoff is None:
            self._remove_file(self.root / "misses")
            self._remove_file(self.root / "fetches")
        return removed
