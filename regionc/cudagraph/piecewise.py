"""CUDA graphs over a split graph: one graph over all pieces, or one per piece, sharing one pool.

``cudagraph_mode="full"`` (default) captures the whole split module — every piece's compiled code
in a row — as one graph per shape: one launch per forward, as full-graph ``reduce-overhead``
does, while the pieces stay separately compiled and cached. If that capture fails (a piece
syncs with the host, reads CPU tensors, ...), regionc logs it and switches to
``"piecewise"``: each piece in a :class:`PieceGraphRunner` of its own, so only the pieces that
cannot be captured run without a graph (vLLM's FULL_AND_PIECEWISE makes the same trade).

Static inputs are the graph inputs Dynamo marked as static addresses (parameters and
buffers of inlined modules, a KV cache among them) and the inputs the graph writes in place (a cache
created while Dynamo traced is never marked, and a copy of it would lose the write): they are used
where they are, and graphs are kept per set of them. Everything else is an activation.
Values a non-last piece hands straight to the user are declared, so the runner clones them.
A dynamic batch dim is padded to the capture sizes when :func:`plan_padding` finds it safe;
otherwise every batch size gets graphs of its own exact shape.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

from regionc.blocks.split import Piece
from regionc.blocks.writes import mutated_placeholders
from regionc.cudagraph.padding import NotPaddable, PaddingPlan, flatten, plan_padding
from regionc.cudagraph.runner import GraphPool, PieceGraphRunner

log = logging.getLogger("regionc")


@dataclasses.dataclass(frozen=True)
class CudagraphPlan:
    """What the graph runners need to know about a split graph, decided once from Dynamo's graph.

    Plain data (indices, specs, a sympy symbol), so a saved trace can rebuild the runners
    without the fake tensors the decisions were made on.
    """

    static_indices: tuple[int, ...]  # graph inputs Dynamo marked as static addresses (weights, buffers)
    padding: PaddingPlan | None  # None: every batch size gets graphs of its own exact shape
    padding_note: str  # the report's line on padding
    mutated_inputs: frozenset[int]  # graph inputs written in place
    piece_mutated_inputs: dict[str, frozenset[int]]  # the same, per piece (in the piece's arg order)
    device: torch.device | None


def plan_cudagraphs(gm: torch.fx.GraphModule, split: torch.fx.GraphModule, pieces: Sequence[Piece],
                    example_inputs: Sequence[Any], config) -> CudagraphPlan:
    """``gm``: the Dynamo graph ``split`` was made from (it carries the shapes padding is decided on)."""
    mutated = frozenset(mutated_placeholders(gm))
    static_indices = tuple(
        i for i, value in enumerate(example_inputs)
        if isinstance(value, torch.Tensor)
        and (torch._dynamo.utils.get_static_address_type(value) is not None or i in mutated)
    )
    padding, note = None, ""
    if config.capture_sizes:
        try:
            padding = plan_padding(gm, split, pieces, static_indices)
        except NotPaddable as exc:
            log.info("regionc: CUDA graphs are captured per exact batch size, without padding: %s", exc)
            note = f"off: {exc}"
        else:
            note = (f"batch size {padding.symbol} padded to {list(config.capture_sizes)}" if padding
                    else "off: no dynamic batch dim")
    return CudagraphPlan(
        static_indices=static_indices, padding=padding, padding_note=note,
        mutated_inputs=mutated,
        piece_mutated_inputs={p.name: frozenset(mutated_placeholders(split._modules[p.name])) for p in pieces},
        device=_cuda_device(example_inputs))


def install_cudagraphs(split: torch.fx.GraphModule, pieces: Sequence[Piece], plan: CudagraphPlan, config, report,
                       backend=None) -> Callable[..., Any]:
    """``split`` with its compiled pieces installed, run under CUDA graphs as ``plan`` says.
    ``backend``: the pool's CUDA calls (tests pass a fake)."""
    if plan.padding_note:
        report.note_cudagraphs(padding=plan.padding_note)
    pool = GraphPool(config, report, device=plan.device, backend=backend)
    static_indices = list(plan.static_indices)
    whole = None
    if config.cudagraph_mode == "full":
        whole = PieceGraphRunner(
            split.forward, name="all pieces", pool=pool, config=config, report=report,
            static_input_indices=static_indices,
            dynamic_inputs=plan.padding.graph_spec if plan.padding else None,
            is_last=True, mutated_inputs=set(plan.mutated_inputs))
    report.note_cudagraphs(mode="full" if whole is not None else "piecewise")
    if whole is None or not whole.capturable:
        _graph_each_piece(split, pieces, plan, pool, config, report)

    statics_of = _picker(static_indices)
    padding = plan.padding

    def run_with_graphs(*args):
        nonlocal whole
        if whole is not None and not whole.capturable:
            log.warning("regionc: one CUDA graph over all pieces could not be captured; graphing each piece instead")
            report.note_cudagraphs(mode="piecewise (full capture failed)")
            whole = None
            _graph_each_piece(split, pieces, plan, pool, config, report)
            pool.restart()
        size = padding.runtime_size(args) if padding else None
        with pool.forward(size=size, statics=statics_of(args)):
            return whole(*args) if whole is not None else split(*args)

    run_with_graphs.regionc_pool = pool
    return run_with_graphs


def _graph_each_piece(split: torch.fx.GraphModule, pieces: Sequence[Piece], plan: CudagraphPlan,
                      pool: GraphPool, config, report) -> None:
    graph_inputs = list(split.graph.find_nodes(op="placeholder"))
    static_graph_inputs = {graph_inputs[i] for i in plan.static_indices}
    returned = _values_returned_to_user(split)
    calls = {node.target: node for node in split.graph.find_nodes(op="call_module")}
    for position, piece in enumerate(pieces):
        call = calls[piece.name]
        fn = split.__dict__.get(piece.name) or split.get_submodule(piece.name)
        split.__dict__[piece.name] = PieceGraphRunner(
            fn, name=f"{piece.name} ({piece.label})", pool=pool, config=config, report=report,
            static_input_indices={i for i, arg in enumerate(call.args) if arg in static_graph_inputs},
            dynamic_inputs=plan.padding.specs[piece.name] if plan.padding else None,
            is_last=position == len(pieces) - 1,
            user_output_indices=returned.get(call, None),
            mutated_inputs=set(plan.piece_mutated_inputs[piece.name]),
        )


def _values_returned_to_user(split: torch.fx.GraphModule) -> dict[torch.fx.Node, set[int]]:
    """For each piece call, the output indices that flow directly into the graph's outputs."""
    output = next(iter(split.graph.find_nodes(op="output")))
    returned: dict[torch.fx.Node, set[int]] = {}
    for value in flatten(output.args):
        if isinstance(value, torch.fx.Node) and value.target is operator.getitem:
            call, index = value.args
            if isinstance(call, torch.fx.Node) and call.op == "call_module":
                returned.setdefault(call, set()).add(index)
    return returned


def _picker(indices: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``args -> tuple(args[i] for i in indices)`` at C speed (hundreds of weights per forward)."""
    if not indices:
        return lambda args: ()
    if len(indices) == 1:
        return lambda args: (args[indices[0]],)
    return operator.itemgetter(*indices)


def _cuda_device(example_inputs: Sequence[Any]) -> torch.device | None:
    for value in example_inputs:
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            return value.device
    return None
