"""Find repeated blocks: in a module tree before Dynamo runs, and in the graph Dynamo traced.

One rule (:func:`is_repeated`): the children of an ``nn.ModuleList``/``nn.Sequential`` (a *stack*)
are repeated *blocks* when there are at least ``min_instances`` of them and they share one class.
A model may have several stacks (Flux: ``transformer_blocks`` and ``single_transformer_blocks``).

In the module tree (:func:`find_repeated_blocks`, what ``regionc.compile`` marks before tracing) only
the outermost such stacks count: blocks inside a block are part of it. In a graph
(:func:`detect_blocks`) Dynamo records, for every node, the stack of modules it was traced under,
as ``{key: (path, module_class)}`` ordered outermost first, e.g. ``("L['self'].layers.3",
DecoderLayer)``; a block instance is the outermost path ending in ``.<index>``. Keys carry ``@N`` on
repeated calls of one module, so only the value path is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections import defaultdict

import torch.fx
from torch import nn

from regionc.blocks.signature import difference, signature

log = logging.getLogger("regionc")

_INDEXED = re.compile(r"^(?P<stack>.+)\.(?P<index>\d+)$")


def is_repeated(classes: list[object], min_instances: int) -> bool:
    """Whether blocks of these classes, children of one stack, are repeated blocks."""
    return len(classes) >= min_instances and len(set(classes)) == 1


@dataclasses.dataclass(frozen=True)
class Stack:
    """Repeated blocks in a module tree: a stack's children of one class and one kind of code
    (``regionc/blocks/signature.py``)."""

    path: str  # "layers", as in model.get_submodule(path)
    cls: type[nn.Module]
    instances: tuple[nn.Module, ...]
    kind: str = ""  # "" where all the stack's children run the same code; else a name for this kind's code


def find_repeated_blocks(model: nn.Module, min_instances: int = 2) -> list[Stack]:
    """The outermost stacks of repeated blocks in ``model`` (``named_modules`` visits parents first).

    Children of one class that do not all run the same code (``regionc/blocks/signature.py``: T5's first
    block holds the position bias, LoRA on some layers only, a hook on one layer's module) make one
    :class:`Stack` per kind of code, each traced once; one log line says where they first differ."""
    stacks: list[Stack] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        if any(path == s.path or path.startswith(s.path + ".") for s in stacks):
            continue  # inside a block already found
        children = tuple(module.children())
        if not is_repeated([type(child) for child in children], min_instances):
            continue
        kinds: dict[tuple, list[nn.Module]] = defaultdict(list)
        for child in children:
            kinds[signature(child)].append(child)
        if len(kinds) == 1:
            stacks.append(Stack(path, type(children[0]), children))
            continue
        other = children.index(list(kinds.values())[1][0])
        log.info("regionc: %s hold %d kinds of blocks, each traced once: block %d runs other code than block 0 (%s)",
                 path, len(kinds), other, difference(children[0], children[other]))
        for code, members in kinds.items():
            kind = hashlib.sha256(repr(code).encode()).hexdigest()[:8]
            stacks.append(Stack(path, type(children[0]), tuple(members), kind))
    return stacks


@dataclasses.dataclass(frozen=True)
class BlockInstance:
    stack: str  # "L['self'].layers"
    index: int
    cls: object  # the block's class (a type; a qualified name string in some torch versions)

    @property
    def path(self) -> str:
        return f"{self.stack}.{self.index}"


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
        if match:  # a nested region's class stands for its block's (one per kind of code: regionc/tracing/compile.py)
            return BlockInstance(match["stack"], int(match["index"]), getattr(cls, "regionc_block_class", cls))
    return None


def detect_blocks(graph: torch.fx.Graph, min_instances: int = 2) -> dict[torch.fx.Node, BlockInstance]:
    """Map every computing node that belongs to a repeated block to its instance.

    A stack counts when at least ``min_instances`` of its children appear in the
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
            instances[block.stack].add(block)
    repeated = {stack for stack, blocks in instances.items() if is_repeated([b.cls for b in blocks], min_instances)}
    return {node: block for node, block in owner.items() if block.stack in repeated}
