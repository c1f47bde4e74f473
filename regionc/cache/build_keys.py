"""``torch_key()`` remembered on disk, so a new process does not hash torch's sources again.

Inductor keys its caches on ``torch_key()``, a sha256 of every torch source file, and regionc's
keys hold it too. Each process computes it from scratch on the first call's critical path:
0.25–0.44 s on the H100 host, cold or warm (``benchmarks/results/compile_profile/h100-2026-11-25-32L-*.log``).
:func:`prepare` (once per process, before the first key is needed) remembers it in
``<cache root>/build_keys/`` under a *stamp* of the files it hashes: each module file's path, size
and mtime, the test Python itself uses to trust a ``.pyc``. A process that finds its stamp hands
the remembered value to Inductor through ``torch_key.set`` (the hook Inductor has for
prepopulating it), so neither regionc nor Inductor hashes torch again. Any file added, removed or
rewritten gives a new stamp, hence a fresh hash. Stamping stats the files of torch's packages:
0.05 s on the CPU dev machine, 0.11 s on the H100 host, whose install links its directories.

``triton_key()`` (0.4 s, mostly hashing the 500 MB ``libtriton.so``) has no such hook. Starting it
in a background thread was measured and dropped: its package walk imports Triton modules, and
the main thread waited on it (``trace_key`` went from 0.34 s to 0.7–1.2 s on the H100,
``benchmarks/results/compile_time/h100-2026-11-25-bg-triton-key.json``).
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
from regionc.cache.store import _untrusted_reason

log = logging.getLogger("regionc.cache")

_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
#: Suffixes of the files ``torch_key()`` hashes (modules: sources and extensions).
_MODULE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES + importlib.machinery.EXTENSION_SUFFIXES)

_prepared = False
_lock = threading.Lock()


def prepare(cache_root: Path | None) -> None:
    """Hand Inductor the remembered ``torch_key()`` (or remember it); once per process.

    ``cache_root``: regionc's cache root, where the remembered key lives; None (cache off) does
    nothing.
    """
    global _prepared
    with _lock:
        if _prepared or cache_root is None:
            return
        _prepared = True
    _load_or_remember_torch_key(Path(cache_root))


def install_stamp(root: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every module file in the packages under
    ``root`` (``root`` itself and each directory with an ``__init__.py``, as ``torch_key()``'s
    walk goes), plus every file under ``_inductor/`` (Inductor hashes a few non-module files
    there). Symbolic links are followed (some installs link their directories and files), each
    directory once; ``__pycache__`` is skipped. Over-inclusive on purpose: an extra file can only
    cause a fresh hash."""
    lines = []
    seen = set()
    stack = [(root, False)]
    while stack:
        directory, inductor = stack.pop()
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            for item in it:
                if item.is_dir():
                    if item.name == "__pycache__":
                        continue
                    below_inductor = inductor or (directory == root and item.name == "_inductor")
                    if below_inductor or os.path.exists(os.path.join(item.path, "__init__.py")):
                        stack.append((Path(item.path), below_inductor))
                elif inductor or item.name.endswith(_MODULE_SUFFIXES):
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
        untrusted = _untrusted_reason(os.stat(path))
        if untrusted:  # only a file this user wrote and nobody else can change
            log.warning("regionc: ignoring %s: it is %s", path, untrusted)
            return None
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
