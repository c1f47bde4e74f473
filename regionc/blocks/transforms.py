"""Keep a functorch transform traced inline (``torch.vmap``, ``torch.func.grad``, ``jvp``) in one piece.

Dynamo traces a transform into the graph as calls that enter and leave a level of functorch's
interpreter stack (``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``), with the batched
computation between them. Those calls change state the whole process shares: a piece that enters a
level and a piece that leaves it, compiled on their own, each leave the stack unbalanced, and their
compiles fail or their code runs at the wrong level. Dynamo records no module for the call that
leaves the level, so a transform inside a block (HF Mamba's selective scan) would otherwise close in
the glue after it.

Every node from a level's entry to its exit therefore joins one owner: the block instance whose nodes
it holds, or the glue when it holds none or several (a transform over the whole stack).
"""

from __future__ import annotations

import logging

import torch.fx

from regionc.blocks.detect import BlockInstance, pretty_path
from regionc.blocks.writes import target_name

log = logging.getLogger("regionc")

#: Calls that enter a level, and the calls that leave it (names, as in ``torch._C._functorch``).
ENTER = frozenset({"_vmap_increment_nesting", "_grad_increment_nesting", "_jvp_increment_nesting",
                   "_saved_tensors_hooks_disable"})
EXIT = frozenset({"_vmap_decrement_nesting", "_grad_decrement_nesting", "_jvp_decrement_nesting",
                  "_saved_tensors_hooks_enable"})


def keep_transforms_whole(graph: torch.fx.Graph, owners: dict[torch.fx.Node, BlockInstance]) -> int:
    """Give every node of each outermost transform span one owner (``owners`` is updated in place);
    returns how many spans there were."""
    spans, depth, start = [], 0, None
    nodes = [node for node in graph.nodes if node.op not in ("placeholder", "get_attr", "output")]
    for i, node in enumerate(nodes):
        name = target_name(node) if node.op == "call_function" else None
        if name in ENTER:
            depth += 1
            if depth == 1:
                start = i
        elif name in EXIT and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(nodes[start:i + 1])
    for span in spans:
        held = {owners[node] for node in span if node in owners}
        owner = held.pop() if len(held) == 1 else None
        for node in span:
            if owner is None:
                owners.pop(node, None)
            else:
                owners[node] = owner
        if owner is None and held:
            log.info("regionc: a functorch transform spans several blocks (%s, ...); it runs in the glue",
                     pretty_path(min(held, key=lambda b: b.index).path))
    return len(spans)
