"""Glue that only moves data runs as traced, without a compile.

Between blocks, some models keep nothing but data movement: Chroma hands each block its own slices
of one modulation tensor (two slices and a ``cat`` between double blocks, slices alone between single
blocks). The slice bounds are constants that differ per layer, so every such piece had a fingerprint of
its own and compiled alone: one Inductor compile per layer, a cold start that grew with depth (15 glue
compiles at depth 6) for code Inductor cannot make faster. Views cost nothing either way, and a ``cat``
is one copy kernel compiled or not; under CUDA graphs the piece is captured with the rest.

So a glue piece whose every operation is a view, an index, a concatenation or a copy, or arithmetic on
sizes, is not compiled: the split module calls its traced graph (the report's source ``traced``), and a
saved trace's recipe carries that graph. Anything that computes (a cast, an add, a matmul) keeps the
piece compiled, so Inductor still fuses glue that does work. Chroma at its full depth (19 + 38 blocks)
on an H100: 56 glue compiles fewer, cold first call 62.3 against 66.8 s
(``benchmarks/experiments/traced_glue_ab.py``); on a 2-core CPU each was a C++ build of about 0.8 s.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

#: functions of torch that return a view of, or a copy of, their inputs' elements
_FUNCTIONS = frozenset({
    operator.getitem, torch.cat, torch.concat, torch.concatenate, torch.stack, torch.narrow, torch.split,
    torch.chunk, torch.unbind, torch.reshape, torch.flatten, torch.unflatten, torch.permute, torch.transpose,
    torch.swapaxes, torch.movedim, torch.squeeze, torch.unsqueeze, torch.t, torch.clone,
})
#: tensor methods that do the same, and those that read sizes
_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "contiguous", "chunk", "split", "unbind", "narrow", "squeeze",
    "unsqueeze", "flatten", "unflatten", "expand", "expand_as", "view_as", "reshape_as", "t", "clone",
    "size", "dim", "stride",
})


def moves_data_only(graph: torch.fx.Graph) -> bool:
    """Whether every call in ``graph`` is a view, an index, a concatenation, a copy or arithmetic on sizes
    (a graph that calls nothing does not count: it is not glue worth a decision)."""
    calls = [node for node in graph.nodes if node.op not in ("placeholder", "output", "get_attr")]
    return bool(calls) and all(_moves_data(node) for node in calls)


def _moves_data(node: torch.fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _METHODS
    if node.op != "call_function":
        return False
    if node.target in _FUNCTIONS:
        return True
    # sizes: SymInt arithmetic of a dynamic shape (operator.mul, floordiv, ...), never on tensors
    return getattr(node.target, "__module__", None) == "_operator" and not isinstance(
        node.meta.get("example_value"), torch.Tensor)
