"""Opening the cache for a compile: one trust decision per root, for every directory that holds code.

The store (:class:`~regionc.cache.store.ArtifactStore`) decides whether a root may be used: it
must be the user's and private, and reached only through directories no one else can write.
Inductor's and Triton's own caches hold compiled code too (Inductor's ``.so`` and ``.py`` files,
Triton's kernels), so they follow the same decision: they go under the root only when the store
can both read and write it. A refused or read-only root gets them a private directory of this
process instead (removed at exit), never the refused or read-only path; a read-only root still
serves the store's entries.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from regionc.cache import build_keys
from regionc.cache.remote import RemoteTier
from regionc.cache.store import ArtifactStore, make_private_dir

if TYPE_CHECKING:  # pragma: no cover
    from regionc.config import Config

log = logging.getLogger("regionc.cache")

#: Inductor's and Triton's cache variables, and the directory each gets under a cache root.
COMPILER_CACHES = (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"))

#: Values this process put into the cache env vars (a later compile with another root may move them).
_SET_BY_REGIONC: dict[str, str] = {}
_private_root: Path | None = None


def open_store(config: Config) -> ArtifactStore | None:
    """The artifact store of ``config`` (None when the cache is off); points Inductor's and Triton's
    caches by its trust decision and makes this process's build keys cheap
    (:mod:`regionc.cache.build_keys`)."""
    if not config.cache:
        return None
    remote = remote_tier(config.remote_cache, config.cache_max_bytes) if config.remote_cache else None
    store = ArtifactStore(config.cache_root, config.cache_max_bytes, config.lock_timeout_s, remote=remote)
    configure_compiler_caches(store)
    if store.readable:  # a root the store refuses (foreign, group-writable) is not read for keys either
        build_keys.prepare(config.cache_root)
    return store


@functools.lru_cache(maxsize=None)
def remote_tier(url: str, max_bytes: int) -> RemoteTier:
    """One tier per URL in a process: a remote that failed stays off (one warning), and the
    connections are shared by every store opened on it."""
    return RemoteTier(url, max_bytes)


def configure_compiler_caches(store: ArtifactStore) -> None:
    """Put Inductor's and Triton's caches under ``store.root`` (``inductor/``, ``triton/``) when the
    store is readable and writable and those directories are the user's own, else in a private
    directory of this process.

    Leaves a variable alone when the user set it. Inductor writes its *default* into
    ``TORCHINDUCTOR_CACHE_DIR`` on first use, so a value equal to that default counts as unset.
    """
    inductor_default = None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default = os.path.abspath(default_cache_dir())
    except Exception:  # noqa: BLE001 - moved in another torch version: treat any value as user-set
        pass

    def unset(var: str) -> bool:
        current = os.environ.get(var)
        return current is None or current == _SET_BY_REGIONC.get(var) or (
            var == "TORCHINDUCTOR_CACHE_DIR" and os.path.abspath(current) == inductor_default)

    for var, name in COMPILER_CACHES:
        if not unset(var):
            continue
        path = store.root / name
        problem = store.problem if not (store.readable and store.writable) else _not_private(path)
        if problem:
            path = _private_dir(name, problem)
        os.environ[var] = _SET_BY_REGIONC[var] = str(path)
        log.debug("regionc: %s=%s", var, path)


def _not_private(path: Path) -> str:
    """Empty when ``path`` is (now) a private directory of the user, else why not."""
    try:
        make_private_dir(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return ""


def _private_dir(name: str, problem: str) -> Path:
    """``name`` under this process's private directory, created (0700) on first use with one warning."""
    global _private_root
    if _private_root is None:
        _private_root = Path(tempfile.mkdtemp(prefix="regionc-"))
        atexit.register(shutil.rmtree, _private_root, ignore_errors=True)
        log.warning("regionc: Inductor's and Triton's caches go to %s, private to this process (%s)",
                    _private_root, problem)
    path = _private_root / name
    path.mkdir(mode=0o700, exist_ok=True)
    return path
