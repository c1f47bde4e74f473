"""Expand ``nested_compile_region`` calls into ordinary nodes, so every block looks the same downstream.

When a block's forward is a nested compile region, Dynamo traces it once and emits one
``invoke_subgraph(subgraph, name, *operands)`` call per instance, each with that instance's
weights as operands. Copying the subgraph's nodes in place of each call gives the graph a full
trace would have produced — at the tracing cost of one block — and the rest of the pipeline
(detect, split, fingerprint, compile once) runs unchanged. The subgraph's nodes carry the
``nn_module_stack`` of the instance Dynamo traced; each copy gets the call's stack instead, with the
traced instance's path changed to the call's in the modules below it, so it is attributed to its
own block instance at every depth (a stage's repeated layers are found below a stack of stages).

A region hands back no output that aliases one of its inputs or another output (torch refuses those),
so regionc's region wrapper (``tracing/compile.py``) passes such an output through :data:`region_copy`.
Once the subgraph is copied into the graph the copy has no reason left: where it would not change the
tensor's layout it is removed, and the graph passes the tensor on as the model's code does (T5's blocks
hand back the ``position_bias`` they were given; with the copy left in, the last block, whose copy
nothing reads, compiled apart from the others).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

from regionc.blocks.detect import pretty_path

_LIB = torch.library.Library("regionc", "FRAGMENT")
_LIB.define("region_copy(Tensor x) -> Tensor")
# composite: Dynamo records the op as one node, which inlining finds; anything compiled with it left in
# (a region not inlined) sees ``aten.clone``, autograd included
_LIB.impl("region_copy", lambda x: x.clone(), "CompositeImplicitAutograd")

#: a copy of a region's output that would alias an input or another output (``regionc::region_copy``)
region_copy = torch.ops.regionc.region_copy.default


def _invoke_subgraph():
    return getattr(torch.ops.higher_order, "invoke_subgraph", None)


def inline_nested_regions(gm: torch.fx.GraphModule) -> int:
    """Replace every ``invoke_subgraph`` call in ``gm`` with a copy of its subgraph; the number replaced.

    Raises NotImplementedError, with ``gm`` unchanged, for a shape of call it does not handle.
    """
    invoke = _invoke_subgraph()
    if invoke is None:
        return 0
    calls = list(gm.graph.find_nodes(op="call_function", target=invoke))
    numbers = {}
    for call in calls:  # check all before changing anything: a refusal leaves gm as it was
        subgraph = getattr(gm, call.args[0].target)
        if any(node.op == "get_attr" for node in subgraph.graph.nodes):
            raise NotImplementedError(f"nested region {call.args[0].target} reads module attributes")
        if any(user.target is not operator.getitem for user in call.users):
            raise NotImplementedError(f"the whole result of {call.name} is used, not its items")
        numbers[call] = _numbers_for_tensors(subgraph, call)
        for placeholder, operand in numbers[call]:
            if any(user.op != "call_method" or user.target != "item" for user in placeholder.users):
                raise NotImplementedError(f"{call.name} passes the number {operand} for the tensor "
                                          f"{placeholder.name}, which its region reads other than by .item()")
    subgraphs = {call.args[0].target for call in calls}
    for call in calls:
        _inline(gm, call, numbers[call])
    copies = _drop_region_copies(gm)
    # the regions' alias check (tracing/compile.py) reads the ``_base`` of block outputs; the reads are
    # unused, and each copy (inlined here, or by Dynamo where a region is called once) names its own
    # instance's tensors, so left in place they would make every block's code differ from the first's
    unused = [node for node in gm.graph.find_nodes(op="call_function", target=getattr) if not node.users]
    for node in unused:
        gm.graph.erase_node(node)
    if calls:
        for node in list(gm.graph.find_nodes(op="get_attr")):
            if node.target in subgraphs and not node.users:
                gm.graph.erase_node(node)
        for target in subgraphs:
            if not any(node.target == target for node in gm.graph.find_nodes(op="get_attr")):
                delattr(gm, target)
    if calls or unused or copies:
        gm.graph.lint()
        gm.recompile()
    return len(calls)


def _inline(gm: torch.fx.GraphModule, call: torch.fx.Node, numbers: list[tuple[torch.fx.Node, Any]]) -> None:
    """Copy ``call``'s subgraph in its place; ``numbers``: its :func:`_numbers_for_tensors`."""
    subgraph_node, _identifier, *operands = call.args
    subgraph: torch.fx.GraphModule = getattr(gm, subgraph_node.target)
    env: dict[torch.fx.Node, Any] = dict(zip(subgraph.graph.find_nodes(op="placeholder"), operands))
    for placeholder, operand in numbers:
        env.update(dict.fromkeys(placeholder.users, operand))  # its ``.item()`` reads are the number
    outer_stack = call.meta.get("nn_module_stack", {})
    results: Any = None
    with gm.graph.inserting_before(call):
        for node in subgraph.graph.nodes:
            if node.op == "placeholder" or node in env:
                continue
            if node.op == "output":
                results = node.args[0]
                break
            copy = gm.graph.node_copy(node, lambda n: env[n])
            copy.meta = {**node.meta, "nn_module_stack": _call_stack(outer_stack, node.meta.get("nn_module_stack", {}))}
            env[node] = copy
    values = [env[v] if isinstance(v, torch.fx.Node) else v for v in results]
    for user in list(call.users):
        user.replace_all_uses_with(values[user.args[1]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(call)


def _numbers_for_tensors(subgraph: torch.fx.GraphModule, call: torch.fx.Node) -> list[tuple[torch.fx.Node, Any]]:
    """The (placeholder, operand) pairs where ``call`` passes a number (a Python constant, or a node whose
    value is a symbolic float) for a tensor its region was traced with.

    Dynamo traces a float attribute that changed between calls as a 0-d tensor input read by ``.item()``
    (a LoRA scale set with ``set_adapters``). It traces the region on the first block and reuses it for
    the others, building each one's captured values again: a float it meets there for the first time is
    specialized (a constant, guarded), one it wrapped before is handed on as its ``.item()``. Either way
    the region's ``.item()`` reads of that tensor are the number itself.
    """
    placeholders = subgraph.graph.find_nodes(op="placeholder")
    return [(placeholder, operand) for placeholder, operand in zip(placeholders, call.args[2:])
            if isinstance(placeholder.meta.get("example_value"), torch.Tensor) and _is_number(operand)]


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.fx.Node):
        value = value.meta.get("example_value")
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(value, bool)


def _drop_region_copies(gm: torch.fx.GraphModule) -> int:
    """Pass each :data:`region_copy` in ``gm`` (inlined here, or by Dynamo where a region is called once)
    on as the tensor itself where both have one layout (Dynamo traced the code after the copy on a tensor
    of that layout); the others become the ``clone`` they are, which a recipe can pickle (an op overload
    does not). The number of nodes changed."""
    copies = list(gm.graph.find_nodes(op="call_function", target=region_copy))
    for node in copies:
        source = node.args[0]
        mine, theirs = node.meta.get("example_value"), getattr(source, "meta", {}).get("example_value")
        if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor) and all(
                statically_known_true(sym_eq(a, b)) for a, b in ((mine.shape, theirs.shape),
                                                                 (mine.stride(), theirs.stride()))):
            node.replace_all_uses_with(source)
        else:  # another layout (a slice made contiguous), or one only a guard could tell
            with gm.graph.inserting_before(node):
                clone = gm.graph.call_method("clone", (source,))
            clone.meta = node.meta
            node.replace_all_uses_with(clone)
        gm.graph.erase_node(node)
    return len(copies)


def _call_stack(outer: dict[str, tuple], inner: dict[str, tuple]) -> dict[str, tuple]:
    """A subgraph node's module stack for one call: the call's own stack down to its block instance, then
    the node's modules below the traced instance, moved under the call's instance."""
    if not outer or len(inner) < len(outer):
        return {**outer, **inner}
    traced, called = list(inner.values())[len(outer) - 1][0], list(outer.values())[-1][0]
    below = {}
    for key, (path, cls) in list(inner.items())[len(outer):]:
        for old, new in ((traced, called), (pretty_path(traced), pretty_path(called))):
            if path == old or path.startswith(old + "."):
                path = new + path[len(old):]
                break
        below[key] = (path, cls)
    return {**outer, **below}

