"""Recompute cheap glue inside the blocks that read it, as a full graph lets Inductor do.

A decoder's glue computes small per-call tables once (RoPE cos/sin from the positions) and hands
them to every block. In a full graph Inductor fuses that arithmetic into each layer's consumers:
the RoPE kernels recompute cos/sin from the positions. Split at block boundaries, each block reads
the tables as inputs instead, and Inductor emits extra RoPE and layout kernels for them (two per
layer on the H100 demo decoder at decode, ``benchmarks/results/decode_profile/h100-2026-11-25-tables-as-inputs.json``).
Copying a table's computation into every block that reads it gives each block the graph a full
trace has, and keeps the blocks identical (each gets the same copy).

A glue value is copied only when everything it is computed from is elementwise or shape
arithmetic (:data:`RECOMPUTABLE`) over graph inputs that are integer tensors, sizes, or small
floating tensors (≤ :data:`MAX_FLOAT_INPUT_ELEMENTS`, e.g. ``inv_freq``): never a matmul, an
embedding lookup or a large activation, whose copies would repeat the model's work per layer.

A copy runs later than the original, so it is made only when nothing in between writes what the
computation reads. HF's ``StaticCache`` is the case in point: the positions are computed from layer 0's
``cumulative_length``, which layer 0 then increments in place; a copy in layer 1 would read the
incremented counter and rotate layer 1's keys to the wrong position.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.fx

from regionc.blocks.detect import BlockInstance, pretty_path
from regionc.blocks.writes import target_name, written_between

log = logging.getLogger("regionc")

#: Functions and methods a copied table may be computed with (names, as FX records them).
RECOMPUTABLE = frozenset({
    "arange", "getitem", "mul", "add", "sub", "truediv", "neg", "pow", "exp", "cos", "sin", "cat", "stack",
    "float", "to", "type_as", "expand", "unsqueeze", "view", "reshape", "outer", "size",
})

#: Largest floating-point graph input a copied table may read (``inv_freq`` has head_dim/2 elements).
MAX_FLOAT_INPUT_ELEMENTS = 1 << 16


def rematerialize_tables(graph: torch.fx.Graph, owners: dict[torch.fx.Node, BlockInstance]) -> int:
    """Copy cheap glue values into each block instance that reads them; returns how many were copied.

    ``owners`` (from :func:`~regionc.blocks.detect.detect_blocks`) gains the copies. Each copy
    goes right before its block's first node, so every block stays one contiguous run.
    """
    cheap: dict[torch.fx.Node, bool] = {}
    first_node: dict[BlockInstance, torch.fx.Node] = {}
    position: dict[torch.fx.Node, int] = {}
    for node in graph.nodes:
        position[node] = len(position)
        if node in owners:
            first_node.setdefault(owners[node], node)

    copies: dict[tuple[BlockInstance, torch.fx.Node], torch.fx.Node] = {}

    def copy_into(node: torch.fx.Node, block: BlockInstance) -> torch.fx.Node:
        if node.op == "placeholder":
            return node
        if (block, node) not in copies:
            with graph.inserting_before(first_node[block]):
                copy = graph.node_copy(node, lambda arg: copy_into(arg, block))
            copies[block, node] = copy
            owners[copy] = block
        return copies[block, node]

    copied = []
    for node in list(graph.nodes):
        if node in owners or node.op not in ("call_function", "call_method"):
            continue
        readers = defaultdict(list)
        for user in node.users:
            if user in owners:
                readers[owners[user]].append(user)
        if not readers or not _recomputable(node, owners, cheap):
            continue
        reads = computation(node)
        start = min((n for n in reads if n.op != "placeholder"), key=position.__getitem__)
        last = max((first_node[block] for block in readers), key=position.__getitem__)
        writer = written_between(graph, reads, start, last)
        if writer is not None:
            log.debug("regionc: %s stays in the glue: %s writes what it reads before %s would read it",
                      node.name, writer.name, pretty_path(owners[last].path))
            continue
        for block, users in readers.items():
            replacement = copy_into(node, block)
            for user in users:
                user.replace_input_with(node, replacement)
        copied.append(node)
    for node in reversed(list(graph.nodes)):  # originals no one reads any more, consumers first
        if node in cheap and cheap[node] and node.op != "placeholder" and node not in owners and not node.users:
            graph.erase_node(node)
    return len(copied)


def _recomputable(node: torch.fx.Node, owners: dict, memo: dict[torch.fx.Node, bool]) -> bool:
    if node in memo:
        return memo[node]
    if node.op == "placeholder":
        ok = _cheap_input(node)
    elif node.op in ("call_function", "call_method") and node not in owners and target_name(node) in RECOMPUTABLE:
        memo[node] = False  # cycles cannot happen in a graph; this only guards the recursion
        ok = all(_recomputable(arg, owners, memo) for arg in node.all_input_nodes)
    else:
        ok = False
    memo[node] = ok
    return ok


def computation(node: torch.fx.Node) -> set[torch.fx.Node]:
    """``node`` and every value it is computed from, down to graph inputs."""
    seen = {node}
    stack = [node]
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return seen


def _cheap_input(node: torch.fx.Node) -> bool:
    value = node.meta.get("example_value", node.meta.get("val"))
    if not isinstance(value, torch.Tensor):
        return True  # a size or another scalar
    if not value.dtype.is_floating_point and not value.dtype.is_complex:
        return True  # positions, token ids: only arithmetic on them is copied, never a lookup
    try:
        return int(value.numel()) <= MAX_FLOAT_INPUT_ELEMENTS
    except (TypeError, RuntimeError):  # a symbolic size: unknown, so not small
        return False

