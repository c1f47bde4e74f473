"""Which values an FX graph writes in place, directly or through a view.

Dynamo's graphs are not functional: a KV cache's ``index_copy_``, a counter's ``add_`` (HF
``StaticCache.cumulative_length``) and ``x[...] = y`` appear as in-place nodes on graph inputs.
Two consumers need to know about them:

- the block passes (:mod:`~regionc.blocks.rematerialize`, :mod:`~regionc.blocks.boundaries`)
  move or copy nodes to later positions; a node that reads a value written in between would read
  the new contents instead of the old, so such a move is refused (:func:`written_between`);
- a CUDA graph reads copied activations from its own static buffers, so an in-place write to a
  non-static input would land in the buffer, not in the caller's tensor (:func:`mutated_placeholders`).

The scan is conservative: an unknown op whose name says it is in place (trailing ``_``, ``out=``, a
mutable schema) counts as a write to its first argument, and a write through a view counts as a
write to the view's base.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.fx

_VIEW_METHODS = {
    "view", "view_as", "reshape", "narrow", "select", "transpose", "permute", "unsqueeze", "squeeze", "expand",
    "expand_as", "as_strided", "t", "T", "flatten", "unflatten", "__getitem__", "unbind", "split", "chunk",
    "diagonal", "unfold", "movedim", "swapaxes", "contiguous", "detach", "view_as_real", "view_as_complex",
}


def target_name(node: torch.fx.Node) -> str:
    """What a node calls, by short name: ``"add_"``, ``"index_copy"``, ``"arange"`` (a method's name,
    an ATen op's without namespace or overload, a function's ``__name__``)."""
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def is_view(node: torch.fx.Node) -> bool:
    if node.op not in ("call_method", "call_function"):
        return False
    if node.target is operator.getitem:
        return True
    return target_name(node) in _VIEW_METHODS


def base_of(node: torch.fx.Node) -> torch.fx.Node:
    """The value ``node`` is a view of (itself when it is not a view)."""
    while is_view(node) and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return node


def written_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The arguments ``node`` writes in place."""
    if node.op not in ("call_method", "call_function"):
        return []
    written: list[torch.fx.Node] = []
    out = node.kwargs.get("out")
    if isinstance(out, torch.fx.Node):
        written.append(out)
    elif isinstance(out, (list, tuple)):
        written.extend(o for o in out if isinstance(o, torch.fx.Node))
    if node.target is operator.setitem:
        written.append(node.args[0])
        return written
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        for arg, value in zip(target._schema.arguments, node.args):
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, torch.fx.Node):
                written.append(value)
        return written
    name = target_name(node)
    if name.endswith("_") and not name.endswith("__") and node.args and isinstance(node.args[0], torch.fx.Node):
        written.append(node.args[0])
    return written


def written_between(graph: torch.fx.Graph, reads: Iterable[torch.fx.Node],
                    start: torch.fx.Node, end: torch.fx.Node) -> torch.fx.Node | None:
    """The first node strictly after ``start`` and before ``end`` that writes (a view of) a value in
    ``reads``, or None: a copy of a computation over ``reads`` moved from ``start`` to ``end`` reads
    what the original read only when this is None."""
    bases = {base_of(node) for node in reads}
    node = start.next
    while node is not end and node.op != "root":
        if any(base_of(arg) in bases for arg in written_args(node)):
            return node
        node = node.next
    return None


def mutated_placeholders(gm: torch.fx.GraphModule) -> set[int]:
    """Indices (in placeholder order) of inputs the graph writes in place."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    index = {node: i for i, node in enumerate(placeholders)}
    result: set[int] = set()
    for node in gm.graph.nodes:
        for arg in written_args(node):
            base = base_of(arg)
            if base in index:
                result.add(index[base])
    return result
