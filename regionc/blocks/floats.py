"""Python floats that change between calls, split across pieces as Inductor's tensorify pass needs them.

Dynamo traces such a float (a LoRA scale, a guidance scale) as a 0-d float64 input read by ``.item()``;
Inductor's tensorify pass turns the float math on it back into tensor math inside one compile, so a new
value needs no recompile. Split into pieces, two of its uses break that:

- a float computed in the glue and read in later pieces: a compiled piece returns tensors and sizes,
  never a float (:func:`copy_float_reads` computes it next to every use instead);
- a float the graph returns: Dynamo writes a float attribute the call changed back to the module as
  ``torch.scalar_tensor(<float math>)`` (diffusers rescales its LoRA layers by a call's ``scale`` on entry
  and back on exit). The tensorify pass cannot turn that into tensor math; in a full graph the float is
  tensorified by its other uses anyway, but the piece that returns it reads it for nothing else, so the
  pass has Dynamo trace again with the float a constant, and every new value compiles the graph again
  (:func:`return_floats_as_tensors` writes the tensor math itself).
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

from regionc.blocks.detect import BlockInstance
from regionc.blocks.rematerialize import computation
from regionc.blocks.writes import target_name, written_between

log = logging.getLogger("regionc")

#: What a copied float may be computed with: a read of a 0-d input and arithmetic on it.
FLOAT_MATH = frozenset({"item", "mul", "add", "sub", "truediv", "neg", "pow", "float"})

#: The float arithmetic Dynamo records (``operator`` functions), which applies to 0-d tensors as it is.
_ARITHMETIC = frozenset({operator.mul, operator.add, operator.sub, operator.truediv, operator.neg, operator.pow})


def copy_float_reads(graph: torch.fx.Graph, owners: dict[torch.fx.Node, BlockInstance]) -> int:
    """Compute each float the graph reads from its inputs (Dynamo's ``.item()`` of a float attribute that
    changed between calls) next to every node that uses it; returns how many uses got a copy.

    A float computed in the glue and read in later pieces (a ``scale`` multiplied in after every layer)
    made the first piece fail to compile. A use whose copy would read a value written in between keeps
    the original.
    """
    copied = 0
    for node in list(graph.nodes):
        if not _is_float(node):
            continue
        reads = computation(node)
        if not all(n.op == "placeholder" or n.op in ("call_function", "call_method") and target_name(n) in FLOAT_MATH
                   for n in reads):
            continue
        for user in list(node.users):
            if written_between(graph, reads, node, user) is not None:
                continue
            copies: dict[torch.fx.Node, torch.fx.Node] = {}

            def copy_of(value: torch.fx.Node) -> torch.fx.Node:
                if value.op == "placeholder":
                    return value
                if value not in copies:
                    copies[value] = graph.node_copy(value, copy_of)
                    if user in owners:
                        owners[copies[value]] = owners[user]
                return copies[value]

            with graph.inserting_before(user):
                user.replace_input_with(node, copy_of(node))
            copied += 1
    _erase_unread_float_math(graph, owners)
    return copied


def return_floats_as_tensors(graph: torch.fx.Graph) -> int:
    """Compute each ``torch.scalar_tensor(<float>)`` whose float is arithmetic on floats Dynamo traced as
    inputs as float64 tensor math on those inputs instead; returns how many were rewritten.

    Float64 tensor arithmetic rounds as Python's float arithmetic does, so the value written back is the
    one eager computes. Any other float (one computed from a size, or with a function outside
    :data:`FLOAT_MATH`) is left as it is, with a log line: correct, but the piece that returns it may
    compile again for each new value.
    """
    rewritten, kept = 0, []
    for node in list(graph.find_nodes(op="call_function", target=torch.scalar_tensor)):
        value = node.args[0] if node.args else None
        if not isinstance(value, torch.fx.Node) or not _is_float(value):
            continue
        if not all(_has_tensor_form(n) for n in computation(value)):
            kept.append(node.name)
            continue
        tensors: dict[torch.fx.Node, torch.fx.Node] = {}

        def tensor_of(float_node: torch.fx.Node) -> torch.fx.Node:
            """The float64 0-d tensor that holds ``float_node``'s value."""
            if float_node not in tensors:
                name = target_name(float_node)
                if name == "item":
                    tensors[float_node] = _call(graph, "call_method", "reshape", (float_node.args[0], ()))
                elif name == "float":
                    tensors[float_node] = tensor_of(float_node.args[0])
                else:
                    args = tuple(tensor_of(a) if isinstance(a, torch.fx.Node) else a for a in float_node.args)
                    tensors[float_node] = _call(graph, "call_function", float_node.target, args)
            return tensors[float_node]

        traced = node.meta["example_value"]  # the dtype and device the call gave it, default ones included
        with graph.inserting_before(node):
            written = _call(graph, "call_method", "to", (tensor_of(value),),
                            {"dtype": traced.dtype, "device": traced.device, "copy": True})
        node.replace_all_uses_with(written)
        graph.erase_node(node)
        rewritten += 1
    if kept:
        log.info("regionc: %d float(s) the graph returns (%s) are computed from more than traced floats and "
                 "their arithmetic, and stay Python floats: the piece returning them may compile again for "
                 "each new value", len(kept), ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else ""))
    _erase_unread_float_math(graph, {})
    return rewritten


def _has_tensor_form(node: torch.fx.Node) -> bool:
    """Whether :func:`return_floats_as_tensors` can compute ``node`` as tensor math: a float Dynamo traced
    as an input (a 0-d float64 tensor on the CPU), its ``.item()``, and float arithmetic on those."""
    if node.op == "placeholder":
        value = node.meta.get("example_value")
        return isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float64 \
            and value.device.type == "cpu"
    return _is_float(node) and (target_name(node) in ("item", "float") or node.target in _ARITHMETIC) \
        and bool(node.all_input_nodes)  # arithmetic on constants only: a float Dynamo specialized


def _call(graph: torch.fx.Graph, op: str, target, args: tuple, kwargs: dict | None = None) -> torch.fx.Node:
    """A new node, with the example value Dynamo's nodes carry (computed on their fake tensors)."""
    node = graph.create_node(op, target, args, kwargs or {})
    fakes = torch.fx.node.map_arg((args, kwargs or {}), lambda n: n.meta["example_value"])
    fn = getattr(torch.Tensor, target) if op == "call_method" else target
    node.meta["example_value"] = fn(*fakes[0], **fakes[1])
    return node


def _erase_unread_float_math(graph: torch.fx.Graph, owners: dict[torch.fx.Node, BlockInstance]) -> None:
    """Erase float math no one reads any more, consumers first."""
    for node in reversed(list(graph.nodes)):
        if node.op in ("call_function", "call_method") and not node.users and target_name(node) in FLOAT_MATH \
                and _is_float(node):
            owners.pop(node, None)
            graph.erase_node(node)


def _is_float(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("example_value", node.meta.get("val")), (float, torch.SymFloat))
