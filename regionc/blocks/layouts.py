"""Hand each piece the tensors other pieces made for it laid out as Dynamo traced them.

A compiled piece asserts its inputs' strides: Inductor specializes on the layout it was traced
with. Inside one ``torch.compile`` graph that layout is only a promise between ops, and Inductor
does not always keep it for a graph's outputs: a ``cat`` whose other operand is empty returns the
operand itself, so WanVACE's patch embedding (``flatten(2).transpose(1, 2)``, then a ``cat`` with
zero rows of padding) leaves Inductor's glue piece with strides ``(3072, 1, 128)`` where Dynamo
traced ``(3072, 24, 1)``. Whole-graph Inductor never shows it; a split graph hands that tensor to a
piece compiled for the traced layout, whose assert fails.

So where a piece reads a tensor another piece returned, the split module passes it through
:func:`as_traced`: the tensor itself when its strides are the traced ones (in every dim the assert
checks, those longer than 1), otherwise a copy laid out as traced, said once in the log. A graph
input needs no such step (Dynamo guards its layout), nor a tensor whose traced strides are symbolic
(Inductor's assert is symbolic too).
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

log = logging.getLogger("regionc")

_said: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()


def traced_layouts(split: torch.fx.GraphModule) -> int:
    """Route every tensor one piece returns and another reads through :func:`as_traced`; returns how
    many edges it routed."""
    routed = 0
    for call in list(split.graph.find_nodes(op="call_module")):
        placeholders = list(split.get_submodule(call.target).graph.find_nodes(op="placeholder"))
        for position, (argument, placeholder) in enumerate(zip(call.args, placeholders)):
            traced = placeholder.meta.get("example_value")
            if not (_returned_by_a_piece(argument) and isinstance(traced, torch.Tensor)):
                continue
            stride = traced.stride()
            if not all(isinstance(s, int) for s in (*stride, *traced.shape)):
                continue
            with split.graph.inserting_before(call):
                laid_out = split.graph.call_function(as_traced, (argument, tuple(stride)))
            laid_out.meta = dict(argument.meta)
            call.update_arg(position, laid_out)
            routed += 1
    if routed:
        split.recompile()
    return routed


def _returned_by_a_piece(node) -> bool:
    return (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is operator.getitem
            and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "call_module")


def as_traced(value: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """``value`` laid out with ``stride`` (a copy only where a dim longer than 1 differs). Loading a saved
    program re-traces its split module symbolically (``GraphModule`` unpickling): there the call records
    itself instead of running."""
    if isinstance(value, torch.fx.Proxy):
        return value.tracer.create_proxy("call_function", as_traced, (value, stride), {})
    if value.stride() == stride or all(a == b or size < 2 for a, b, size in zip(value.stride(), stride, value.shape)):
        return value
    key = (tuple(value.stride()), stride)
    if key not in _said:
        _said.add(key)
        log.info("regionc: a piece returned a %s tensor with strides %s where Dynamo traced %s; it is copied to the "
                 "traced layout for the piece that reads it", tuple(value.shape), key[0], stride)
    return torch.empty_strided(value.shape, stride, dtype=value.dtype, device=value.device).copy_(value)
