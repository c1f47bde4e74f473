"""Split a Dynamo graph into glue pieces and one piece per block instance.

Every contiguous run of nodes with the same owner (a block instance, or glue) becomes
its own partition. Ids are never reused across runs: two runs of glue separated by a
block would otherwise form one partition that both feeds and consumes the block, a
cycle ``split_module`` cannot order.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch.fx
from torch.fx.passes.split_module import split_module

from regionc.regions.detect import BlockInstance, pretty_path

_SPLIT_SUPPORTS_TUPLE_RETURN = "tuple_return" in inspect.signature(split_module).parameters


@dataclasses.dataclass(frozen=True)
class Piece:
    name: str  # attribute of the split module, e.g. "submod_3"
    block: BlockInstance | None  # None for glue

    @property
    def kind(self) -> str:
        return "glue" if self.block is None else "block"

    @property
    def label(self) -> str:
        return pretty_path(self.block.path) if self.block else "glue"


def split_into_pieces(gm: torch.fx.GraphModule,
                      owners: dict[torch.fx.Node, BlockInstance]) -> tuple[torch.fx.GraphModule, list[Piece]]:
    """Return the split module and its pieces in execution order."""
    segment_of: dict[torch.fx.Node, int] = {}
    owner_of_segment: dict[int, BlockInstance | None] = {}
    segment, current = -1, object()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue  # split_module routes these to the pieces that use them
        owner = owners.get(node)
        if owner != current:
            segment, current = segment + 1, owner
            owner_of_segment[segment] = owner
        segment_of[node] = segment

    extra = {"tuple_return": True} if _SPLIT_SUPPORTS_TUPLE_RETURN else {}
    split = split_module(gm, None, lambda node: segment_of[node], keep_original_order=True, **extra)
    pieces = [
        Piece(node.target, owner_of_segment[int(node.target.rsplit("_", 1)[1])])
        for node in split.graph.nodes if node.op == "call_module"
    ]
    return split, pieces
