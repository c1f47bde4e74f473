"""The fusion passes as one Inductor post-grad custom pass, and what they did.

``PassManager(config, device)`` builds one :class:`RegioncGraphPass` (a ``CustomGraphPass``)
and hands it to Inductor through ``post_grad_custom_post_pass`` (after Inductor's own
post-grad passes, so it sees the graph Inductor is about to lower). Its ``uuid()`` is the version
of the code the passes can put into a piece on this device (regionc/passes/version.py), which
Inductor's FX cache and regionc's keys both hold.

Order inside one graph: find RMSNorms → fuse the ones on a residual add → plain RMSNorms →
RoPE (q and k pairs) → decode attention over a KV cache → attention (an SDPA the decode pass took is gone
before the attention pass looks) → linears over few rows (a SwiGLU's gate/up and their product as one
call where ``skinny_swiglu`` is on). ``take_matches()`` / ``take_skips()`` return what happened since
the last call (the compiler calls them after each piece). Matches are only counted
when the pass runs: a piece loaded from regionc's store or Inductor's FX cache reports none.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass

import regionc.ops  # noqa: F401  (the passes insert torch.ops.regionc.*)
from regionc.config import PASS_NAMES, Config
from regionc.passes import (
    attention,
    decisions,
    decode_attention,
    fused_add_rms_norm,
    rms_norm,
    rope,
    skinny_linear,
    version,
)
from regionc.passes._graph import finish

log = logging.getLogger("regionc")

#: Called with every graph after the passes ran (tests assert on the rewritten graph).
_graph_hooks: list[Callable[[torch.fx.Graph], None]] = []


@contextlib.contextmanager
def graph_hook(fn: Callable[[torch.fx.Graph], None]):
    """Call ``fn(graph)`` on every post-grad graph after regionc's passes, inside the block."""
    _graph_hooks.append(fn)
    try:
        yield fn
    finally:
        _graph_hooks.remove(fn)


class _Context:
    """What a pass asks while it runs: may I swap here? It records the match or the skip."""

    def __init__(self, owner: PassManager):
        self.owner = owner

    def allow(self, op: str, desc: str, *, device: torch.device, rows: int | None = None,
              gqa_expanded: bool = False, weights: int = 1, narrow: bool = False, width: int = 0) -> bool:
        owner = self.owner
        if owner.kernel_choice == "always":
            owner._record_match(op)
            return True
        cls = decisions.shape_class(op, rows=rows, gqa_expanded=gqa_expanded, weights=weights, narrow=narrow,
                                    width=width)
        decision = decisions.decide(device.type, op, cls)
        if decision.swap:
            owner._record_match(op)
            return True
        owner._record_skip(f"{desc}: kept ({cls}): {decision.reason}")
        return False

    def on(self, name: str) -> bool:
        """Whether the pass ``name`` is enabled (a module that runs two passes asks per rewrite)."""
        return self.owner.enabled[name]

    def skip(self, op: str, message: str) -> None:
        self.owner._record_skip(message)


class RegioncGraphPass(CustomGraphPass):
    """The post-grad pass Inductor calls with each piece's graph."""

    def __init__(self, owner: PassManager):
        self.owner = owner
        self._uuid = owner.uuid()

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.owner.run(graph)

    def uuid(self) -> Any:
        return self._uuid


class PassManager:
    """regionc's fusion passes for one config and device."""

    def __init__(self, config: Config, device: torch.device | str | None = None):
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.enabled = {name: config.pass_enabled(name) for name in PASS_NAMES}
        self.kernel_choice = config.kernel_choice
        self._lock = threading.Lock()
        self._matches: Counter[str] = Counter()
        self._skips: list[str] = []
        self._pass = RegioncGraphPass(self) if any(self.enabled.values()) else None

    # ------------------------------------------------------------------ Inductor side
    def uuid(self) -> str:
        """The passes' version (regionc/passes/version.py): Inductor's FX cache and regionc's keys hold it."""
        return version.passes_version(self.config, self.device.type)

    def acting_passes(self) -> list[str]:
        return version.acting_passes(self.config, self.device.type)

    def inductor_config_patches(self) -> dict[str, Any]:
        """Inductor config patches that install the passes ({} when every pass is off)."""
        if self._pass is None:
            return {}
        return {"post_grad_custom_post_pass": self._pass}

    def run(self, graph: torch.fx.Graph) -> None:
        """Rewrite one post-grad graph in place. Never raises: a failing pass logs and leaves
        the graph as Inductor would have compiled it without regionc's passes."""
        on = self.enabled
        ctx = _Context(self)
        try:
            if on["rms_norm"] or on["fused_add_rms_norm"]:
                norms = self._find(rms_norm, graph)
                if on["fused_add_rms_norm"]:
                    norms = fused_add_rms_norm.run(graph, ctx, norms)
                if on["rms_norm"]:
                    rms_norm.run(graph, ctx, norms)
                finish(graph)
            for name, module in (("rope", rope), ("decode_attention", decode_attention), ("attention", attention)):
                if on[name]:
                    module.run(graph, ctx, self._find(module, graph))
                    finish(graph)
            if on["skinny_linear"] or on["skinny_swiglu"]:
                skinny_linear.run(graph, ctx, self._find(skinny_linear, graph))
                finish(graph)
        except Exception:
            if self.config.strict:
                raise
            log.warning("regionc: a fusion pass failed on a graph; compiling it with the passes it "
                        "completed", exc_info=True)
            # a half-rewritten graph is still a valid graph (each rewrite is atomic); reorder/clean it
            with contextlib.suppress(Exception):
                finish(graph)
        for hook in list(_graph_hooks):
            hook(graph)

    def _find(self, module, graph: torch.fx.Graph) -> list:
        """``module.find(graph)``'s matches, with its skip reasons recorded in the report."""
        found, skips = module.find(graph)
        for s in skips:
            self._record_skip(s)
        return found

    # ------------------------------------------------------------------ report side
    def _record_match(self, op: str) -> None:
        with self._lock:
            self._matches[op] += 1

    def _record_skip(self, message: str) -> None:
        with self._lock:
            self._skips.append(message)

    def take_matches(self) -> dict[str, int]:
        """Matches per pattern since the last call."""
        with self._lock:
            out, self._matches = dict(self._matches), Counter()
        return out

    def take_skips(self) -> list[str]:
        """Patterns seen but not swapped since the last call, each with its reason."""
        with self._lock:
            out, self._skips = self._skips, []
        return out
