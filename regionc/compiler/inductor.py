"""Compile one piece through Inductor, and turn the result into bytes and back.

``torch._inductor.standalone_compile`` runs the full ``compile_fx`` path
(AOTAutograd included, so backward works) and returns an artifact that can be
serialized; a serialized artifact is what regionc's disk cache stores. The bytes are
only valid for the exact torch build that wrote them (the cache key holds it).

Where torch has it, the compile runs in standalone_compile's ``aot`` mode: the artifact is the
compiled function itself (AOTAutograd's bundled entry: Inductor's code and the Triton kernels),
serialized directly. The default mode instead snapshots every cache artifact the process has
recorded (``save_cache_artifacts``) after the compile, and a load writes them all back into
Inductor's on-disk caches and looks the entry up there: work on both the cold and the warm path.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

log = logging.getLogger("regionc")


#: Inductor settings every piece is compiled with, under the user's ``inductor_config`` (which
#: overrides them). Pointwise kernels take Inductor's first heuristic config instead of two configs,
#: each compiled and then benchmarked on the first call: on an H100 that benchmarking alone cost
#: 0.2 s of a 32-layer cold start (on the critical path), and the prefill was no slower without it
#: (benchmarks/results/h100-s7/). Inductor's full-graph default keeps the second config; regionc
#: compiles few pieces, so their first call matters more.
PIECE_DEFAULTS: dict[str, Any] = {"triton.autotune_pointwise": False}


@dataclasses.dataclass
class CompiledPiece:
    fn: Callable[..., Any]
    payload: bytes | None  # None when the artifact cannot be serialized (then it is not cached)
    serialize_s: float  # of the compile's time, what turning the artifact into ``payload`` took


def compile_piece(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                  config_patches: dict[str, Any]) -> CompiledPiece:
    """Compile ``gm`` for inputs like ``example_inputs`` (fake tensors / SymInts of Dynamo's trace).

    Symbolic dims come from the ambient Dynamo tracing context, so one artifact serves
    every size the guards admit.
    """
    if any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in example_inputs):
        start_compile_workers()

    def standalone_compile(mode: dict[str, Any]):
        return torch._inductor.standalone_compile(
            gm, list(example_inputs), dynamic_shapes="from_tracing_context",
            options={"config_patches": config_patches}, **mode)

    try:
        artifact = standalone_compile(_AOT_MODE)
    except RuntimeError as exc:
        if not _AOT_MODE or "aot" not in str(exc):
            raise
        # aot mode needs AOTAutograd's bundled cache entry, which some graphs do not get (an op
        # the cache bypasses): the default mode may still compile them
        log.warning("regionc: aot-mode compile failed (%s: %s); compiling again in the default mode",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        artifact = standalone_compile({})
    start = time.perf_counter()
    payload = _serialize(artifact)
    return CompiledPiece(artifact, payload, time.perf_counter() - start)


_AOT_MODE = {"aot": True} if "aot" in inspect.signature(torch._inductor.standalone_compile).parameters else {}


def start_compile_workers() -> None:
    """Start Inductor's Triton compile workers now, if they are not running yet.

    Inductor compiles a graph's Triton kernels in its subprocess pool only once the pool is up;
    until then it compiles them one by one in this process. Its own Dynamo backend starts the
    pool the moment it is called, so the workers are up by the time the kernels are generated;
    ``standalone_compile`` does not. Without this, a cold regionc compile on the H100 spent ~2 s
    more in Triton's front end than per-block ``torch.compile``. Idempotent and cheap once started.
    """
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:  # pragma: no cover - a torch without the pool
        return
    maybe_warm_pool()


def load_piece(payload: bytes) -> Callable[..., Any]:
    """Rebuild a compiled piece from :func:`compile_piece`'s payload (raises if it is unusable)."""
    with tempfile.TemporaryDirectory(prefix="regionc-load-") as tmp:
        path = os.path.join(tmp, "artifact.bin")
        with open(path, "wb") as f:
            f.write(payload)
        return torch._inductor.CompiledArtifact.load(path=path, format="binary")


def _serialize(artifact: Any) -> bytes | None:
    saveable = getattr(artifact, "is_saveable", None)
    if saveable is not None and not saveable():
        return None
    with tempfile.TemporaryDirectory(prefix="regionc-save-") as tmp:
        path = os.path.join(tmp, "artifact.bin")
        try:
            artifact.save(path=path, format="binary")
        except Exception as exc:  # noqa: BLE001 - not serializable: the caller keeps it in memory only
            log.warning("regionc: a compiled piece cannot be serialized, so it is not cached (%s: %s)",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None
        with open(path, "rb") as f:
            return f.read()
