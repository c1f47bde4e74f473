"""Split a Dynamo graph into glue pieces and one piece per block instance.

Every contiguous run of nodes with the same owner (a block instance, or glue) becomes
its own partition. Ids are never reused across runs: two runs of glue separated by a
block would otherwise form one partition that both feeds and consumes the block, a
cycle ``split_module`` cannot order.
"""

from __future__ import annotations

import dataclasses
import operator

import torch.fx
from torch.fx.passes.split_module import split_module

from regionc.blocks.align import align_instances
from regionc.blocks.detect import BlockInstance, pretty_path
from regionc.blocks.layouts import traced_layouts


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

    split = split_module(gm, None, lambda node: segment_of[node], keep_original_order=True)
    _return_tuples(split)
    pieces = [
        Piece(node.target, owner_of_segment[int(node.target.rsplit("_", 1)[1])])
        for node in split.graph.nodes if node.op == "call_module"
    ]
    align_instances(split, [(p.name, p.block.stack) for p in pieces if p.block is not None])
    _canonicalize_outputs(split)
    traced_layouts(split)
    return split, pieces


def _return_tuples(split: torch.fx.GraphModule) -> None:
    """Make every piece return a tuple, as compiled pieces do (``split_module`` returns a lone
    value bare, and only newer torch has its ``tuple_return`` flag)."""
    for call in list(split.graph.find_nodes(op="call_module")):
        submodule = split.get_submodule(call.target)
        output = next(iter(submodule.graph.find_nodes(op="output")))
        if isinstance(output.args[0], (tuple, list)):
            continue
        output.args = ((output.args[0],),)
        submodule.recompile()
        with split.graph.inserting_after(call):
            first = split.graph.call_function(operator.getitem, (call, 0))
        call.replace_all_uses_with(first, delete_user_cb=lambda user: user is not first)
        first.meta = dict(call.meta)
    split.recompile()


def _canonicalize_outputs(split: torch.fx.GraphModule) -> None:
    """Order every piece's outputs by where they are produced inside the piece.

    ``split_module`` orders a partition's outputs by where they are first consumed
    downstream, which differs between the last block and the others (the consumer is
    glue, not the next block). Two identical blocks would then differ in output order
    only, and could not share compiled code.
    """
    for call in split.graph.find_nodes(op="call_module"):
        submodule = split.get_submodule(call.target)
        output = next(iter(submodule.graph.find_nodes(op="output")))
        values = output.args[0]
        if not isinstance(values, (tuple, list)) or len(values) < 2:
            continue
        position = {node: i for i, node in enumerate(submodule.graph.nodes)}
        order = sorted(range(len(values)), key=lambda i: position[values[i]])
        if order == list(range(len(values))) or any(u.target is not operator.getitem for u in call.users):
            continue
        output.args = (type(values)(values[i] for i in order),)
        new_index = {old: new for new, old in enumerate(order)}
        for user in list(call.users):
            user.args = (call, new_index[user.args[1]])
        submodule.recompile()
    split.recompile()
