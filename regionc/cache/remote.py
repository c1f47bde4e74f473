"""The shared remote tier of the artifact cache: entries in Redis, one compiler per key across hosts.

The local store stays the front (see :class:`regionc.cache.store.ArtifactStore`, which calls this
tier): a lookup goes local → remote → compile; an entry fetched from the remote is verified by the
store exactly as a local file is (magic, lengths, checksums, the key it was written for, factors
that hash to it) and written to the local cache; a compiled entry is published put-if-absent
(``SET NX``), so a published entry never changes. Redis holds the same bytes as a local entry file::

    regionc:entry:<key>   an entry file
    regionc:lease:<key>   a random token of the process compiling <key>; expires LEASE_S after its
                          last renewal

One compiler per key across the fleet: a process that finds the entry neither locally nor
remotely takes the key's lease (``SET NX PX``) before compiling and renews it from a thread while
it compiles; the others wait (within ``lock_timeout_s``) until the entry appears, or take the
lease when it expires (its holder died) or is released without an entry (the piece fell back to
eager). Waiting is polling: one ``EXISTS`` and one ``SET NX`` per poll per waiting process.

Failure: the first error or timeout talking to Redis (unreachable, slow, failing, refused login)
logs one warning and turns the tier off for the rest of the process, which goes on with its local
cache. Every call has a socket timeout (``SOCKET_TIMEOUT_S`` unless the URL sets
``socket_timeout``) and no retries, so a slow remote costs start-up one timeout at most.

Credentials come from the URL (``redis://user:password@host:6379/0``) or, when it has no
password, from ``REDISCLI_AUTH`` (the variable ``redis-cli`` reads); messages name the remote by
:func:`redact` only. Trust: an entry is code (Inductor's pickled artifact and compiled kernels), so
whoever can write to the Redis can run code on every host that reads it: the checks catch
corruption, not a malicious writer. Use a Redis only the fleet can reach, with a password, and TLS
(``rediss://``) across networks.

Imports neither torch nor, until a tier is built, the ``redis`` client.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from regionc.logs import log_once

log = logging.getLogger("regionc.cache")

SCHEMES = ("redis", "rediss", "unix")
ENTRY_PREFIX = "regionc:entry:"
LEASE_PREFIX = "regionc:lease:"
#: A lease lives this long after its last renewal (renewed every third of it while compiling).
LEASE_S = 30.0
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
_POLL_S = (0.05, 1.0)  # first and longest pause between two looks at another process's lease

# Compare-and-act on one key, atomic in Redis: renew or release only our own lease; drop an entry
# only if it still is the one we judged (same trailing sha256), never a replacement written since.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_DISCARD = ("if redis.call('getrange', KEYS[1], -32, -1) == ARGV[1] then return redis.call('del', KEYS[1]) end "
            "return 0")


def url_problem(url: str) -> str:
    """Why ``url`` is not a remote cache URL regionc can use ("" when it is)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in SCHEMES:
        return f"scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
    if parts.scheme == "unix" and not parts.path:
        return "unix:// needs a socket path"
    if parts.scheme != "unix" and not parts.hostname:
        return "no host"
    return ""


def redact(url: str) -> str:
    """``url`` without user, password and query: what messages may show."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


class RemoteTier:
    """A Redis holding entry files and leases; every method degrades to "nothing there" once the
    remote has failed (``problem`` says why)."""

    def __init__(self, url: str, max_bytes: int):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ImportError("regionc: option remote_cache is set but the redis client is not installed "
                              "(pip install redis)") from None
        self.name = redact(url)
        self.max_bytes = int(max_bytes)
        self.problem = ""
        self._errors = (redis.RedisError, OSError)
        self._log_key = object()
        kwargs: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S,
                                  "retry": Retry(NoBackoff(), 0)}
        if not urlsplit(url).password and os.environ.get("REDISCLI_AUTH"):
            kwargs["password"] = os.environ["REDISCLI_AUTH"]
        self._redis = redis.Redis.from_url(url, **kwargs)  # options in the URL's query win over kwargs
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._discard = self._redis.register_script(_DISCARD)

    @property
    def enabled(self) -> bool:
        return not self.problem

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None after turning the tier off with one warning."""
        if self.problem:
            return None
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            if not self.problem:
                self.problem = f"{type(exc).__name__}: {exc}"
                log.warning("regionc: remote cache %s failed while %s (%s); using the local cache only from now on",
                            self.name, what, self.problem)
            return None

    # ------------------------------------------------------------------ entries
    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` (unverified: the store checks them), or None when there
        are none or they exceed ``max_bytes`` (checked before they are downloaded)."""
        name = ENTRY_PREFIX + key
        size = self._call(f"looking up entry {key[:16]}", self._redis.strlen, name)
        if not size:
            return None
        if size > self.max_bytes:
            log_once((self._log_key, "too-big", key), "regionc: remote cache entry %s is %d bytes, over "
                     "cache_max_bytes=%d: not fetched, compiling here", key[:16], size, self.max_bytes,
                     level=logging.WARNING, logger=log)
            return None
        data = self._call(f"fetching entry {key[:16]}", self._redis.get, name)
        return None if data is None or len(data) > self.max_bytes else data

    def has(self, key: str) -> bool:
        return bool(self._call(f"looking up entry {key[:16]}", self._redis.exists, ENTRY_PREFIX + key))

    def publish(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless something is there already; True if it was stored."""
        return bool(self._call(f"publishing entry {key[:16]}", self._redis.set, ENTRY_PREFIX + key, data, nx=True))

    def discard(self, key: str, trailer: bytes) -> None:
        """Drop the entry of ``key`` if it still ends in ``trailer`` (its last 32 bytes, the sha256 of
        a good entry): a bad or unusable one, so that the next compile's put-if-absent replaces it."""
        self._call(f"dropping entry {key[:16]}", self._discard, keys=[ENTRY_PREFIX + key], args=[trailer])

    def keys(self) -> Iterator[str]:
        """Every entry key in the remote (``SCAN``: entries added meanwhile may or may not show)."""
        names = self._call("listing entries", lambda: list(self._redis.scan_iter(ENTRY_PREFIX + "*", count=1000)))
        for name in names or ():
            yield name.decode()[len(ENTRY_PREFIX):]

    def stats(self) -> dict[str, Any]:
        keys = list(self.keys())
        sizes = self._call("sizing entries", lambda: self._pipeline_strlen(keys)) or []
        return {"remote": self.name, "remote_entries": len(keys), "remote_bytes": sum(sizes),
                "remote_problem": self.problem}

    def _pipeline_strlen(self, keys: list[str]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.strlen(ENTRY_PREFIX + key)
        return pipe.execute()

    # ------------------------------------------------------------------ leases
    @contextmanager
    def lease(self, key: str, timeout_s: float) -> Iterator[float]:
        """Holds the fleet-wide lease of ``key`` while the body runs, unless the entry is already in
        the remote (or appears while waiting); yields the seconds spent waiting for another holder.

        Past ``timeout_s`` it logs a warning and yields without the lease (the holder may be stuck).
        """
        start = time.monotonic()
        token = secrets.token_hex(16)
        name = LEASE_PREFIX + key
        pause = _POLL_S[0]
        held = False
        while self.enabled and not self.has(key):
            if self._call(f"taking the lease of {key[:16]}", self._redis.set, name, token, nx=True,
                          px=int(LEASE_S * 1000)):
                held = True
                break
            if time.monotonic() - start >= timeout_s:
                log.warning("regionc: waited %.0fs for another process compiling cache entry %s (remote %s); "
                            "compiling without the lease", time.monotonic() - start, key[:16], self.name)
                break
            time.sleep(min(pause, max(0.0, start + timeout_s - time.monotonic())))
            pause = min(pause * 2, _POLL_S[1])
        waited = time.monotonic() - start
        if not held:
            yield waited
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(name, token, stop), name=f"regionc-lease-{key[:8]}",
                                   daemon=True)
        renewer.start()
        try:
            yield waited
        finally:
            stop.set()
            renewer.join()
            self._call(f"releasing the lease of {key[:16]}", self._release, keys=[name], args=[token])

    def _keep(self, name: str, token: str, stop: threading.Event) -> None:
        """Renews the lease until ``stop``; a lease lost meanwhile (this process stalled past its
        expiry) costs at most a second compile elsewhere, which put-if-absent makes harmless."""
        while not stop.wait(LEASE_S / 3):
            if not self._call("renewing a lease", self._renew, keys=[name], args=[token, int(LEASE_S * 1000)]):
                return
