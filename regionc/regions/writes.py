"""Which placeholders of an FX piece are written in place (directly or through a view).

A CUDA graph reads copied activations from its own static buffers, so an in-place write to a
non-static input would land in the buffer, not in the caller's tensor. The runner refuses to
graph such a piece unless the mutated inputs are static (used in place). This scan is
conservative: an unknown op whose first argument is a view of a placeholder and whose name says
it is in place (trailing ``_``, ``out=``, a mutable schema) counts as a write.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

_VIEW_METHODS = {
    "view", "view_as", "reshape", "narrow", "select", "transpose", "permute", "unsqueeze", "squeeze", "expand",
    "expand_as", "as_strided", "t", "T", "flatten", "unflatten", "__getitem__", "unbind", "split", "chunk",
    "diagonal", "unfold", "movedim", "swapaxes", "contiguous", "detach", "view_as_real", "view_as_complex",
}


def _target_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def _is_view(node: torch.fx.Node) -> bool:
    if node.op not in ("call_method", "call_function"):
        return False
    if node.target is operator.getitem:
        return True
    return _target_name(node) in _VIEW_METHODS


def _written_args(node: torch.fx.Node) -> list[torch.fx.Node]:
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
    name = _target_name(node)
    if name.endswith("_") and not name.endswith("__") and node.args and isinstance(node.args[0], torch.fx.Node):
        written.append(node.args[0])
    return written


def mutated_placeholders(gm: torch.fx.GraphModule) -> set[int]:
    """Indices (in placeholder order) of inputs the graph writes in place."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    index = {node: i for i, node in enumerate(placeholders)}
    result: set[int] = set()
    for node in gm.graph.nodes:
        for arg in _written_args(node):
            base = arg
            while base not in index and _is_view(base) and base.args and isinstance(base.args[0], torch.fx.Node):
                base = base.args[0]
            if base in index:
                result.add(index[base])
    return result
