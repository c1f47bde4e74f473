"""Torch's and Triton's build keys, without hashing their installations again in every process.

Inductor keys its caches on ``torch_key()`` (a sha256 of every torch source file) and on
``triton_key()`` (which also hashes the ~500 MB ``libtriton.so``); regionc's keys hold
``torch_key()`` too. Both are computed from scratch in each new process, on the first call's
critical path: 0.25–0.44 s and ~0.4 s of a 32-layer first call on the H100 host, cold or warm
(``benchmarks/results/h100-s5/profile-32L-regionc_compile-*.log``). :func:`prepare` (run once per
process, before the first key is needed) removes both from that path:

- ``torch_key``: remembered on disk, in ``<cache root>/build_keys/``, under a *stamp* of the files
  it hashes: each module file's path, size and mtime, the test Python itself uses to trust a
  ``.pyc``. A process that finds its stamp hands the remembered value to Inductor through
  ``torch_key.set`` (the hook Inductor has for prepopulating it), so neither regionc nor Inductor
  hashes torch again. Any file added, removed or rewritten gives a new stamp, hence a fresh hash.
  Stamping costs ~0.05 s (stat of ~2,300 files) against the hash's 0.25 s or more.
- ``triton_key`` is a plain ``lru_cache`` with no such hook, so it is started in a background
  thread instead: its work is file reads and sha256 over 1 MB chunks, both of which release the
  GIL, so it overlaps the Dynamo trace that comes first.
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

from regionc.cache.key import _sha256

log = logging.getLogger("regionc.cache")

_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
#: Suffixes of the files ``torch_key()`` hashes (modules: sources and extensions).
_MODULE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES + importlib.machinery.EXTENSION_SUFFIXES)

_prepared = False
_lock = threading.Lock()


def prepare(cache_root: Path | None) -> None:
    """Make this process's build keys cheap (once per process; later calls return at once).

    ``cache_root``: regionc's cache root, where the remembered ``torch_key`` lives; None (cache
    off) skips the disk and only starts ``triton_key`` in the background.
    """
    global _prepared
    with _lock:
        if _prepared:
            return
        _prepared = True
    _start_triton_key()
    if cache_root is not None:
        _load_or_remember_torch_key(Path(cache_root))


def install_stamp(root: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every module file under ``root``, plus every
    file of ``_inductor/`` (Inductor hashes a few non-module files there too); ``__pycache__``
    is skipped. Over-inclusive on purpose: an extra file can only cause a fresh hash."""
    lines = []
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for item in it:
                if item.is_dir(follow_symlinks=False):
                    if item.name != "__pycache__":
                        stack.append(Path(item.path))
                elif item.name.endswith(_MODULE_SUFFIXES) or "_inductor" in Path(item.path).relative_to(root).parts:
                    st = item.stat()
                    lines.append(f"{os.path.relpath(item.path, root)}|{st.st_size}|{st.st_mtime_ns}")
    lines.sort()
    return _sha256("\n".join(lines))


def _torch_key_function():
    """Inductor's ``torch_key`` when it can be prepopulated (has ``.set``), else None."""
    try:
        from torch._inductor.codecache import torch_key
    except ImportError:
        return None
    return torch_key if callable(getattr(torch_key, "set", None)) else None


def _load_or_remember_torch_key(cache_root: Path) -> None:
    import torch

    torch_key = _torch_key_function()
    if torch_key is None:
        log.debug("regionc: this torch's torch_key() cannot be prepopulated; it is hashed as usual")
        return
    torch_root = Path(torch.__file__).resolve().parent
    try:
        stamp = install_stamp(torch_root)
    except OSError as exc:
        log.debug("regionc: cannot stamp %s (%s); torch_key() is hashed as usual", torch_root, exc)
        return
    memo = cache_root / "build_keys" / f"torch_key-{_sha256(torch.__version__ + '|' + stamp)[:32]}"
    remembered = _read_memo(memo)
    if remembered is not None:
        try:
            torch_key.set(bytes.fromhex(remembered))
            log.debug("regionc: torch_key() from %s (torch's files unchanged since it was hashed)", memo)
        except (AssertionError, RuntimeError):  # already computed in this process: nothing to save
            pass
        return
    _write_memo(memo, torch_key().hex())


def _read_memo(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("regionc: cannot read %s (%s)", path, exc)
        return None
    if _HEX_KEY.match(text):
        return text
    log.warning("regionc: %s does not hold a build key; hashing torch again and rewriting it", path)
    return None


def _write_memo(path: Path, value: str) -> None:
    """Atomic: a reader sees the old file, the new one or none (temp file + ``os.replace``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("regionc: cannot remember torch_key() in %s (%s)", path, exc)


def _start_triton_key() -> None:
    try:
        from triton.runtime.cache import triton_key
    except ImportError:
        try:  # where older tritons keep it (torch looks in both places too)
            from triton.compiler.compiler import triton_key
        except ImportError:  # no triton: nothing to hash
            return

    def run() -> None:
        try:
            triton_key()
        except Exception as exc:  # noqa: BLE001 - the caller will compute it and see the error
            log.debug("regionc: background triton_key() failed: %s", exc)

    threading.Thread(target=run, name="regionc-triton-key", daemon=True).start()
