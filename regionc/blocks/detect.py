"""Find repeated blocks: in a module tree before Dynamo runs, and in the graph Dynamo traced.

One rule (:func:`is_repeated`): the children of an ``nn.ModuleList``/``nn.Sequential`` (a *stack*)
are repeated *blocks* when there are at least ``min_instances`` of them and they share one class.
A model may have several stacks (Flux: ``transformer_blocks`` and ``single_transformer_blocks``).
A stack whose children all differ (:func:`alike`: code and tensor shapes) while a stack inside them
has children that are alike is passed over for that one: a CNN's or a Swin's stages, each wider than
the last, are no repeated blocks, the layers inside each stage are.

In the module tree (:func:`find_repeated_blocks`, what ``regionc.compile`` marks before tracing) only
the outermost such stacks count: blocks inside a block are part of it. In a graph
(:func:`detect_blocks`) Dynamo records, for every node, the stack of modules it was traced under,
as ``{key: (path, module_class)}`` ordered outermost first, e.g. ``("L['self'].layers.3",
DecoderLayer)``; a node's block instance is the outermost path ending in ``.<index>`` whose stack
holds repeated blocks and is not passed over. Keys carry ``@N`` on repeated calls of one module, so
only the value path is used.
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


def alike(looks: list[object]) -> bool:
    """Whether two of a stack's children are alike: ``looks`` holds what each is past its class."""
    return len(set(looks)) < len(looks)


def passed_over(stacks: dict[str, bool]) -> set[str]:
    """The stacks (path -> whether two children are alike) passed over for a stack of alike children inside them."""
    return {path for path, two_alike in stacks.items()
            if not two_alike and any(inner.startswith(path + ".") and stacks[inner] for inner in stacks)}


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
    candidates = {path: module for path, module in model.named_modules()
                  if isinstance(module, (nn.ModuleList, nn.Sequential))
                  and is_repeated([type(child) for child in module.children()], min_instances)
                  and any(_holds_tensors(child) for child in module.children())}
    skipped = passed_over({path: alike([_looks(child) for child in module.children()])
                           for path, module in candidates.items()})
    stacks: list[Stack] = []
    for path, module in candidates.items():
        if path in skipped or any(path == s.path or path.startswith(s.path + ".") for s in stacks):
            continue  # passed over, or inside a block already found
        children = tuple(module.children())
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


def _holds_tensors(block: nn.Module) -> bool:
    """Whether a block has a parameter or buffer. Blocks with none (Zamba2's per-layer lists of empty
    ``nn.Sequential`` adapters) hold nothing worth compiling once, and taking them as the model's blocks
    left its real layers, of several classes, to run eagerly between them under per-block frames."""
    return next(iter(block.parameters()), None) is not None or next(iter(block.buffers()), None) is not None


def share_in_blocks(model: nn.Module, stacks: list[Stack]) -> float:
    """The share of ``model``'s parameter elements that its repeated blocks hold, embedding tables left out
    (a lookup, however large); each tensor counted once."""
    tables = {id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
    weights = {id(p): p.numel() for p in model.parameters() if id(p) not in tables}
    inside = {id(p) for stack in stacks for block in stack.instances for p in block.parameters()}
    total = sum(weights.values())
    return sum(n for key, n in weights.items() if key in inside) / total if total else 1.0


def mixed_stack_around(model: nn.Module, path: str) -> str | None:
    """The innermost ``ModuleList``/``Sequential`` around ``path`` whose children are of several classes (a
    hybrid model's layers: Zamba2's Mamba and attention layers, whose shared-MLP adapter lists are then its
    only repeated blocks), or None."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        outer = ".".join(parts[:end])
        module = model.get_submodule(outer)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len({type(c) for c in module.children()}) > 1:
            return outer
    return None


def _looks(block: nn.Module) -> tuple:
    """A module's code and the shapes and dtypes of its parameters and buffers."""
    tensors = [*block.named_parameters(), *block.named_buffers()]
    return signature(block), tuple((name, tuple(t.shape), t.dtype) for name, t in tensors)


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


def indexed_modules(node: torch.fx.Node) -> list[BlockInstance]:
    """The indexed modules a node was traced under, outermost first."""
    found = []
    for path, cls in (node.meta.get("nn_module_stack") or {}).values():
        match = _INDEXED.match(path)
        if match:  # a nested region's class stands for its block's (one per kind of code: regionc/tracing/compile.py)
            found.append(BlockInstance(match["stack"], int(match["index"]), getattr(cls, "regionc_block_class", cls)))
    return found


def detect_blocks(graph: torch.fx.Graph, min_instances: int = 2) -> dict[torch.fx.Node, BlockInstance]:
    """Map every computing node that belongs to a repeated block to its instance.

    A stack counts when at least ``min_instances`` of its children appear in the graph and all of them
    share one class, unless it is passed over (:func:`passed_over`; children are alike when they run
    the same operations on tensors of the same shapes); a node belongs to the outermost such stack's
    instance. Other nodes (and placeholders/outputs, which ``split_module`` routes itself) are glue.
    """
    within: dict[torch.fx.Node, list[BlockInstance]] = {}
    nodes: dict[str, dict[BlockInstance, list[torch.fx.Node]]] = defaultdict(lambda: defaultdict(list))
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        within[node] = indexed_modules(node)
        for block in within[node]:
            nodes[block.stack][block].append(node)
    candidates = {stack: alike([_operations(n) for n in instances.values()])
                  for stack, instances in nodes.items() if is_repeated([b.cls for b in instances], min_instances)}
    repeated = candidates.keys() - passed_over(candidates)
    owners = {}
    for node, blocks in within.items():
        block = next((b for b in blocks if b.stack in repeated), None)
        if block is not None:
            owners[node] = block
    return owners


def _operations(nodes: list[torch.fx.Node]) -> tuple:
    """What a block instance computes, for telling instances apart: each node's op and target, and the
    shapes of what it reads and returns."""
    return tuple((node.op, _TARGETS.get(node.op, lambda target: "")(node.target),
                  *(_shape(arg) for arg in node.all_input_nodes), _shape(node)) for node in nodes)


#: a node's target by what it calls (a module's or a constant's name differs between instances)
_TARGETS = {"call_function": lambda target: getattr(target, "__name__", str(target)), "call_method": str}


def _shape(node: torch.fx.Node) -> str:
    value = node.meta.get("example_value", node.meta.get("val"))
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
