"""Find repeated blocks in a module tree, before Dynamo sees the model.

The rule is the one ``regions/detect.py`` applies to a traced graph: the children of an
``nn.ModuleList``/``nn.Sequential`` form a repeated region when there are at least
``min_instances`` of them and they share one class. Only the outermost such containers count
(blocks inside a block are part of it).
"""

from __future__ import annotations

import dataclasses

from torch import nn


@dataclasses.dataclass(frozen=True)
class BlockGroup:
    path: str  # "layers", as in model.get_submodule(path)
    cls: type[nn.Module]
    instances: tuple[nn.Module, ...]


def find_repeated_blocks(model: nn.Module, min_instances: int = 2) -> list[BlockGroup]:
    groups: list[BlockGroup] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        if any(path == g.path or path.startswith(g.path + ".") for g in groups):
            continue  # inside a block already found: named_modules() visits parents first
        children = tuple(module.children())
        if len(children) >= min_instances and len({type(child) for child in children}) == 1:
            groups.append(BlockGroup(path, type(children[0]), children))
    return groups
