"""The version of the code regionc's passes can put into a piece, computed without importing them.

A piece's store key and a saved trace's key hold this version, so they miss as soon as a pass
that can act on this device changes, while editing a kernel that never runs here (or a reason in
the decision table) leaves every cached piece valid. It is the pass machinery's sources and, of
each pass that may swap here (``kernel_choice="always"``, or a decision-table row that swaps on
this device type), its own source, its kernel's and its decision rows, plus the enabled passes,
``kernel_choice`` and the device type.

It lives apart from :mod:`regionc.passes.manager` because a warm start needs the version (for the
keys) but not the passes: importing them registers regionc's ops and imports parts of Inductor,
about half a second of a warm start on an H200 host that a piece which swaps nothing never uses.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from regionc.cache.key import files_hash
from regionc.config import PASS_NAMES, Config
from regionc.passes import decisions

PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: Sources every pass shares (relative to the package): the manager, the graph helpers, the op
#: registration and launch helpers. They shape every rewritten graph, swaps or not.
COMMON_SOURCES = ("passes/manager.py", "passes/_graph.py", "ops/__init__.py", "ops/_utils.py")
#: Per pass: its own source and the op it swaps in (whose Triton kernels Inductor compiles into the piece).
PASS_SOURCES = {
    "rms_norm": ("passes/rms_norm.py", "ops/rms_norm.py"),
    "fused_add_rms_norm": ("passes/fused_add_rms_norm.py", "passes/rms_norm.py", "ops/rms_norm.py"),
    "rope": ("passes/rope.py", "ops/rope.py"),
    "attention": ("passes/attention.py", "ops/attention.py", "ops/attention_hopper.py"),
    "decode_attention": ("passes/decode_attention.py", "ops/decode_attention.py"),
    "skinny_linear": ("passes/skinny_linear.py", "ops/skinny_linear.py"),
    "skinny_swiglu": ("passes/skinny_linear.py", "ops/skinny_linear.py"),
}


@functools.lru_cache(maxsize=None)
def sources_digest(paths: frozenset[str]) -> str:
    """The hash of ``paths`` (relative to the package), once per process and set of files (sources do
    not change under a running process)."""
    return files_hash(PACKAGE_DIR, paths)


def acting_passes(config: Config, device_type: str) -> list[str]:
    """The enabled passes that may swap a kernel in on this device type: all of them under
    ``kernel_choice="always"``, else those with a decision-table row that swaps here."""
    swapping = {op for (device, op, _), d in decisions.DECISIONS.items() if device == device_type and d.swap}
    return [name for name in PASS_NAMES
            if config.pass_enabled(name) and (config.kernel_choice == "always" or name in swapping)]


def passes_version(config: Config, device_type: str) -> str:
    """The passes' version for ``config`` on ``device_type`` (see the module docstring)."""
    acting = acting_passes(config, device_type)
    rows = sorted((op, cls, d.swap) for (device, op, cls), d in decisions.DECISIONS.items()
                  if device == device_type and op in acting)
    sources = [*COMMON_SOURCES, *(path for name in acting for path in PASS_SOURCES[name])]
    enabled = sorted((name, config.pass_enabled(name)) for name in PASS_NAMES)
    h = hashlib.sha256()
    for part in (sources_digest(frozenset(sources)), repr(rows), repr(enabled), config.kernel_choice, device_type):
        h.update(part.encode() + b"\0")
    return h.hexdigest()
