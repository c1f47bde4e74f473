"""The Dynamo backend: ``torch.compile(model, backend="regionc", mode=..., options=...)``.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so no
import is needed; it is deliberately not also ``@register_backend``-ed here, since the
entry-point lookup registers it and a second registration fails as a duplicate.
Dynamo calls :func:`backend` once per graph it captures (a graph break gives several).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch.fx
from torch._dynamo.exc import RestartAnalysis

from regionc.cache import open_store
from regionc.compiler import background
from regionc.compiler.graph import GraphCompiler, device_of
from regionc.compiler.program import make_program
from regionc.config import Config
from regionc.logs import log_once
from regionc.passes import PassManager
from regionc.report import drop_report, new_report

log = logging.getLogger("regionc")


def backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mode: str | None = None,
            options: dict[str, Any] | None = None) -> Callable[..., Any]:
    with background.compile_lock():  # Dynamo's call holds it already; a saved trace's aot_compile may not
        return _compile(gm, example_inputs, Config.build(options, mode))


def _compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config: Config) -> Callable[..., Any]:
    report = new_report()
    trace_s = _dynamo_seconds_so_far()
    if trace_s is not None:
        report.phases["trace"] = trace_s
    passes = PassManager(config, device_of(example_inputs))
    compiler = GraphCompiler(config, store=open_store(config), passes=passes)
    try:
        with report.phase("total"):
            split, pieces, job = compiler.compile(gm, example_inputs, report)
    except RestartAnalysis:
        drop_report(report)  # Dynamo traces the frame again and hands over a new graph
        raise
    program = make_program(gm, split, pieces, example_inputs, config, report, job)
    log.info(report.summary())
    if report.stacks and not report.inlined_regions:
        _say_every_block_was_traced(report)
    return program


def _say_every_block_was_traced(report) -> None:
    """Once per process: Dynamo traced each instance of the repeated blocks (plain
    ``torch.compile``, the full trace), so the trace grows with depth; name what traces one."""
    blocks = ", ".join(f"{path}×{n}" for path, n in report.stacks.items())
    log_once("every-block-traced", "regionc: Dynamo traced every repeated block (%s) before regionc compiled "
             "one, so the trace grows with depth; regionc.compile(model) traces one block per class and, with "
             "the cache on, skips tracing on a warm start", blocks)


def _dynamo_seconds_so_far() -> float | None:
    """Seconds since Dynamo started on this frame: its trace, up to handing us the graph.

    Read from Dynamo's metrics context (a private attribute, so feature-detected): None when
    this torch does not have it.
    """
    try:
        from torch._dynamo.utils import get_metrics_context

        context = get_metrics_context()
        start_ns = getattr(context, "_start_time_ns", 0)
        if context.in_progress() and start_ns:
            return (time.time_ns() - start_ns) / 1e9
    except (ImportError, AttributeError):
        pass
    return None

