"""Find repeated blocks in a Dynamo graph from ``node.meta["nn_module_stack"]``.

Dynamo records, for every node, the stack of modules it was traced under, as
``{key: (path, module_class)}`` ordered outermost first, e.g.
``("L['self'].layers.3", DecoderLayer)``. A block instance is the outermost path
ending in ``.<index>`` (a child of a ``ModuleList``/``Sequential``); blocks of one
container whose classes agree form a region. A model may have several containers
(Flux: ``double_blocks`` and ``single_blocks``). Keys carry ``@N`` on repeated calls
of one module, so only the value path is used.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import torch.fx

_INDEXED = re.compile(r"^(?P<container>.+)\.(?P<index>\d+)$")


@dataclasses.dataclass(frozen=True)
class BlockInstance:
    container: str  # "L['self'].layers"
    index: int
    cls: object  # the block's class (a type; a qualified name string in some torch versions)

    @property
    def path(self) -> str:
        return f"{self.container}.{self.index}"


def pretty_path(path: str) -> str:
    """``L['self'].layers.3``, ``L['args'][0].layers.3`` or diffusers' ``L['self'].__dict__['_modules']['blocks'].3``
    → ``layers.3`` / ``blocks.3`` (the user's attribute path)."""
    short = re.sub(r"\.?(__dict__\['_modules'\]|_modules)\['([^']+)'\]", r".\2", path)
    return re.sub(r"^L\['[^']+'\](\[\d+\])*\.?", "", short) or path


def block_of(node: torch.fx.Node) -> BlockInstance | None:
    """The outermost indexed module a node was traced under, if any."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    for path, cls in stack.values():
        match = _INDEXED.match(path)
        if match:
            return BlockInstance(match["container"], int(match["index"]), cls)
    return None


def detect_blocks(graph: torch.fx.Graph, min_instances: int = 2) -> dict[torch.fx.Node, BlockInstance]:
    """Map every computing node that belongs to a repeated block to its instance.

    A container counts when at least ``min_instances`` of its children appear in the
    graph and all of them share one class; other nodes (and placeholders/outputs,
    which ``split_module`` routes itself) are glue.
    """
    owner: dict[torch.fx.Node, BlockInstance] = {}
    instances: dict[str, set[BlockInstance]] = defaultdict(set)
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        block = block_of(node)
        if block is not None:
            owner[node] = block
            instances[block.container].add(block)
    repeated = {
        container for container, blocks in instances.items()
        if len(blocks) >= min_instances and len({b.cls for b in blocks}) == 1
    }
    return {node: block for node, block in owner.items() if block.container in repeated}
