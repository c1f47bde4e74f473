"""Wrap every piece of a split graph in a :class:`PieceGraphRunner` sharing one pool.

Static inputs are the graph inputs Dynamo marked as static addresses (parameters and
buffers of inlined modules, a KV cache among them); everything else is an activation.
Values a non-last piece hands straight to the user are declared, so the runner clones them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

from regionc.cudagraph.mutation import mutated_placeholders
from regionc.cudagraph.runner import GraphPool, PieceGraphRunner
from regionc.regions.split import Piece


def wrap_pieces_in_cudagraphs(split: torch.fx.GraphModule, pieces: Sequence[Piece], example_inputs: Sequence[Any],
                              config, report) -> Callable[..., Any]:
    graph_inputs = list(split.graph.find_nodes(op="placeholder"))
    static_graph_inputs = {
        node for node, value in zip(graph_inputs, example_inputs)
        if isinstance(value, torch.Tensor) and torch._dynamo.utils.get_static_address_type(value) is not None
    }
    returned = _values_returned_to_user(split)
    calls = {node.target: node for node in split.graph.find_nodes(op="call_module")}
    pool = GraphPool(config, report, device=_cuda_device(example_inputs))
    for position, piece in enumerate(pieces):
        call = calls[piece.name]
        fn = split.__dict__.get(piece.name) or split.get_submodule(piece.name)
        split.__dict__[piece.name] = PieceGraphRunner(
            fn, name=f"{piece.name} ({piece.label})", pool=pool, config=config, report=report,
            static_input_indices={i for i, arg in enumerate(call.args) if arg in static_graph_inputs},
            is_last=position == len(pieces) - 1,
            user_output_indices=returned.get(call, None),
            mutated_inputs=mutated_placeholders(split._modules[piece.name]),
        )

    def run_with_graphs(*args):
        with pool.forward(size=None):
            return split(*args)

    run_with_graphs.regionc_pool = pool
    return run_with_graphs


def _values_returned_to_user(split: torch.fx.GraphModule) -> dict[torch.fx.Node, set[int]]:
    """For each piece call, the output indices that flow directly into the graph's outputs."""
    output = next(iter(split.graph.find_nodes(op="output")))
    returned: dict[torch.fx.Node, set[int]] = {}
    for value in _flatten(output.args):
        if isinstance(value, torch.fx.Node) and value.target is operator.getitem:
            call, index = value.args
            if isinstance(call, torch.fx.Node) and call.op == "call_module":
                returned.setdefault(call, set()).add(index)
    return returned


def _flatten(value) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _flatten(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _flatten(v)]
    return [value]


def _cuda_device(example_inputs: Sequence[Any]) -> torch.device | None:
    for value in example_inputs:
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            return value.device
    return None
