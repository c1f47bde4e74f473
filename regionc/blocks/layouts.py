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
(Inductor's assert is symbolic too); an input the piece writes in place keeps the assert (a copy would
take the write, and later readers would miss it).
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

from regionc.blocks.writes import mutated_placeholders

log = logging.getLogger("regionc")

_said: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()


def traced_layouts(split: torch.fx.GraphModule) -> int:
    """Route every tensor one piece returns and another reads through :func:`as_traced`, once per tensor
    and layout (an attention mask that every layer reads is checked once); returns how many checks it added.
    An input the reading piece writes in place is left alone: a copy would take the write."""
    checks: dict[tuple[torch.fx.Node, tuple[int, ...]], torch.fx.Node] = {}
    for call in list(split.graph.find_nodes(op="call_module")):
        module = split.get_submodule(call.target)
        written = mutated_placeholders(module)
        for position, (argument, placeholder) in enumerate(zip(call.args, module.graph.find_nodes(op="placeholder"))):
            traced = placeholder.meta.get("example_value")
            if position in written or not (_returned_by_a_piece(argument) and isinstance(traced, torch.Tensor)):
                continue
            stride = tuple(traced.stride())
            if not all(isinstance(s, int) for s in (*stride, *traced.shape)):
                continue
            if (argument, stride) not in checks:
                with split.graph.inserting_after(argument):
                    checks[argument, stride] = split.graph.call_function(as_traced, (argument, stride))
                checks[argument, stride].meta = dict(argument.meta)
            call.update_arg(position, checks[argument, stride])
    if checks:
        split.recompile()
    return len(checks)


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
    key = (value.stride(), stride)
    if key not in _said:
        _said.add(key)
        log.info("regionc: a piece returned a %s tensor with strides %s where Dynamo traced %s; it is copied to the "
                 "traced layout for the piece that reads it", tuple(value.shape), key[0], stride)
    return torch.empty_strided(value.shape, stride, dtype=value.dtype, device=value.device).copy_(value)
