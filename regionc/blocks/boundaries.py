"""Move each block's closing residual add into the piece that reads it, so it fuses with the next norm.

A pre-norm block ends with ``h = h + mlp(norm(h))`` and the next block starts with ``norm(h)``.
In a full graph Inductor fuses that add into the next norm's kernel. Split at block boundaries,
the add is left as the last kernel of its piece, with one more launch and one more write and read of
the hidden state per layer. On the H100 demo decoder at decode that is 32 extra kernels per step
(``triton_poi_fused__unsafe_view_add``, ``benchmarks/results/decode_profile/h100-2026-11-25-boundary-add-unfused.json``).

vLLM's decoder layers avoid this by passing ``(hidden, residual)`` pairs and adding them inside the
next layer's fused add+norm. This module does the same on the graph. Each block returns the add's
two operands, and the piece that reads the sum computes it: the next block, or the glue after the
last block. The first block has no add coming in, so it gets one: its input plus a zero tensor made
in the glue before it. That keeps every block identical, so they still share one compiled artifact.
Adding zero is exact, so block 0 computes the same values as before.

A stack is rewritten only when the pattern is exact for every block:

- of the values each block hands out, exactly one is a functional two-tensor ``add`` of the block's
  own values, with no broadcasting or dtype promotion (other outputs, such as a KV cache's new
  keys and values, stay block outputs);
- every block's sum is read only by the next block; the last block's sum is read only by glue;
- block 0 reads one outside value where block 1 reads block 0's sum, with the same metadata;
- nothing between an add and its new place writes the add's operands in place.

Anything else (gated DiT residuals, blocks whose outputs are also returned) is left alone.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict

import torch
import torch.fx

from regionc.blocks.detect import BlockInstance, pretty_path
from regionc.blocks.writes import written_between

log = logging.getLogger("regionc")

_ADDS = (operator.add, torch.add)


def fuse_block_boundaries(graph: torch.fx.Graph, owners: dict[torch.fx.Node, BlockInstance]) -> int:
    """Move every repeated block's closing add into its reader; returns how many adds moved.

    ``owners`` (from :func:`~regionc.blocks.detect.detect_blocks`) is updated in place: moved adds
    belong to their reader, and block 0's new add belongs to block 0.
    """
    blocks_of: dict[str, list[BlockInstance]] = defaultdict(list)
    nodes_of: dict[BlockInstance, list[torch.fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        block = owners.get(node)
        if block is None:
            continue
        if not nodes_of[block]:
            blocks_of[block.stack].append(block)
        nodes_of[block].append(node)

    moved = 0
    for stack, blocks in blocks_of.items():
        plan = _plan(blocks, nodes_of, owners)
        if isinstance(plan, str):
            log.debug("regionc: %s keeps its block boundaries: %s", pretty_path(stack), plan)
            continue
        tails, entry = plan
        _rewrite(graph, blocks, nodes_of, owners, tails, entry)
        moved += len(tails)
    return moved


def _plan(blocks: list[BlockInstance], nodes_of: dict, owners: dict):
    """(each block's closing add, block 0's entering value), or why the stack is left alone."""
    tails = []
    for block in blocks:
        tail = _closing_add(block, nodes_of[block], owners)
        if tail is None:
            return f"{pretty_path(block.path)} does not end in one residual add"
        tails.append(tail)
    for tail, reader in zip(tails, blocks[1:]):
        if any(owners.get(user) != reader for user in tail.users):
            return f"{tail.name} is read outside {pretty_path(reader.path)}"
    if any(user.op == "output" or user in owners for user in tails[-1].users):
        return "the last block's sum is not read by glue only"
    graph = tails[0].graph
    last_reader = min(tails[-1].users, key=lambda user: _position(graph, user))
    for tail, destination in zip(tails, [*(nodes_of[b][0] for b in blocks[1:]), last_reader]):
        writer = written_between(graph, tail.args, tail, destination)
        if writer is not None:
            return f"{writer.name} writes an operand of {tail.name} before its reader"
    entry = _entry_value(nodes_of[blocks[0]], nodes_of[blocks[1]], tails[0])
    if entry is None:
        return "block 0 does not read one value where block 1 reads block 0's sum"
    return tails, entry


def _closing_add(block: BlockInstance, nodes: list[torch.fx.Node], owners: dict) -> torch.fx.Node | None:
    """The block's one output that is a plain add of two of its own values (its residual stream).

    Other outputs (a KV cache's new keys and values, returned to the caller) stay where they are.
    """
    outputs = [node for node in nodes if any(owners.get(user) != block for user in node.users)]
    adds = [node for node in outputs if _is_own_add(node, block, owners)]
    return adds[0] if len(adds) == 1 else None


def _is_own_add(node: torch.fx.Node, block: BlockInstance, owners: dict) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target == "add")
    if not is_add or node.kwargs or len(node.args) != 2:
        return False
    if not all(isinstance(arg, torch.fx.Node) and owners.get(arg) == block for arg in node.args):
        return False
    metas = [_meta(n) for n in (node, *node.args)]
    return None not in metas and len(set(metas)) == 1


def _entry_value(first: list[torch.fx.Node], second: list[torch.fx.Node],
                 sum_into_second: torch.fx.Node) -> torch.fx.Node | None:
    """The value block 0 reads in the places where block 1 reads ``sum_into_second`` (blocks align node by node)."""
    if len(first) != len(second):
        return None
    found = set()
    for mine, theirs in zip(first, second):
        same_op = mine.op == theirs.op and (mine.op not in ("call_function", "call_method") or mine.target == theirs.target)
        if not same_op or len(mine.args) != len(theirs.args) or mine.kwargs.keys() != theirs.kwargs.keys():
            return None
        pairs = [*zip(mine.args, theirs.args), *((mine.kwargs[k], theirs.kwargs[k]) for k in theirs.kwargs)]
        found.update(a for a, b in pairs if b is sum_into_second)
    if len(found) != 1:
        return None
    (entry,) = found
    if not isinstance(entry, torch.fx.Node) or _meta(entry) != _meta(sum_into_second):
        return None
    return entry


def _rewrite(graph: torch.fx.Graph, blocks: list[BlockInstance], nodes_of: dict, owners: dict,
             tails: list[torch.fx.Node], entry: torch.fx.Node) -> None:
    first_node = {block: nodes_of[block][0] for block in blocks}
    for tail, reader in zip(tails, blocks[1:]):
        first_node[reader].prepend(tail)
        owners[tail] = reader
    last = tails[-1]
    earliest_reader = min(last.users, key=lambda user: _position(graph, user))
    earliest_reader.prepend(last)
    owners.pop(last)

    block0 = blocks[0]
    with graph.inserting_before(first_node[block0]):
        zeros = graph.call_function(torch.zeros_like, (entry,))
        entering = graph.call_function(tails[0].target, (entry, zeros)) if tails[0].op == "call_function" \
            else graph.call_method("add", (entry, zeros))
    zeros.meta = {key: value for key, value in entry.meta.items() if key in ("example_value", "val", "tensor_meta")}
    entering.meta = {**tails[0].meta, **zeros.meta, "nn_module_stack": first_node[block0].meta.get("nn_module_stack")}
    owners[entering] = block0
    for node in nodes_of[block0]:
        node.replace_input_with(entry, entering)


def _meta(node: torch.fx.Node) -> tuple | None:
    value = node.meta.get("example_value", node.meta.get("val"))
    if not isinstance(value, torch.Tensor):
        return None
    return value.dtype, str(tuple(value.shape)), str(tuple(value.stride())), value.device


def _position(graph: torch.fx.Graph, node: torch.fx.Node) -> int:
    for index, candidate in enumerate(graph.nodes):
        if candidate is node:
            return index
    raise ValueError(f"{node} is not in the graph")
