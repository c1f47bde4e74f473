"""Loads the optional C++ CPU extension ``regionc._C`` once.

The extension registers C++ CPU kernels for ``regionc::rms_norm``,
``regionc::fused_add_rms_norm`` and ``regionc::rope`` with
``TORCH_LIBRARY_IMPL(regionc, CPU, m)``. When it is missing (not built, or
``REGIONC_NO_EXTENSION=1``), the op modules register their torch references for
the CPU instead, and this module says so once through ``logging.getLogger("regionc")``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("regionc")

_state: dict[str, object] = {}

#: ops whose CPU kernel the extension provides
CPP_OPS = ("rms_norm", "fused_add_rms_norm", "rope")


def available() -> bool:
    """True when ``regionc._C`` is loaded (its CPU kernels are registered). Loads it on first call."""
    if "ok" in _state:
        return bool(_state["ok"])
    if os.environ.get("REGIONC_NO_EXTENSION") == "1":
        _state["ok"] = False
        _state["why"] = "REGIONC_NO_EXTENSION=1"
    else:
        try:
            import regionc._C  # noqa: F401  (registers the CPU kernels on import)

            _state["ok"] = True
            _state["why"] = ""
        except ImportError as exc:  # not built, or built against another torch
            _state["ok"] = False
            _state["why"] = f"{type(exc).__name__}: {exc}"
    if not _state["ok"]:
        log.info(
            "regionc: C++ CPU extension regionc._C not loaded (%s); CPU ops use torch references",
            _state["why"],
        )
    return bool(_state["ok"])


def reason() -> str:
    """Why the extension is not loaded ('' when it is)."""
    available()
    return str(_state.get("why", ""))
