"""Closing residual adds move across block boundaries; blocks stay identical; values do not change."""

from __future__ import annotations

import operator

import torch
from torch import nn

import regionc
from regionc.blocks.boundaries import fuse_block_boundaries
from regionc.blocks.detect import detect_blocks
from regionc.blocks.fingerprint import fingerprint_piece
from regionc.blocks.rematerialize import rematerialize_tables
from regionc.blocks.split import split_into_pieces
from regionc.compiler.graph import piece_example_inputs
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import assert_close, block_compiles, compile_regionc
from tests.models import TinyDiT


def dynamo_graph_and_inputs(model, *args):
    captured = []

    def capture(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm

    with torch.no_grad():
        torch.compile(model, backend=capture, dynamic=False)(*args)
    assert len(captured) == 1
    return captured[0]


def fused_split(gm):
    owners = detect_blocks(gm.graph)
    rematerialize_tables(gm.graph, owners)
    moved = fuse_block_boundaries(gm.graph, owners)
    gm.graph.lint()
    gm.recompile()
    split, pieces = split_into_pieces(gm, owners)
    return moved, split, pieces


def first_compute(submodule: torch.fx.GraphModule) -> torch.fx.Node:
    return next(n for n in submodule.graph.nodes if n.op not in ("placeholder", "get_attr"))


def outputs_of(submodule: torch.fx.GraphModule) -> tuple:
    return next(iter(submodule.graph.find_nodes(op="output"))).args[0]


def test_each_blocks_closing_add_moves_into_its_reader_and_values_are_unchanged():
    gm, inputs = dynamo_graph_and_inputs(build_demo_model(LlamaConfig.tiny(3)), torch.randint(0, 128, (2, 8)))
    with torch.no_grad():
        expected = gm(*inputs)
        moved, split, pieces = fused_split(gm)
        actual = split(*inputs)
    assert moved == 3
    assert [p.label for p in pieces] == ["glue", "layers.0", "layers.1", "layers.2", "glue"]
    subs = [split.get_submodule(p.name) for p in pieces]
    # the first glue makes block 0's zeros; every later piece starts with the add handed to it,
    # and every block returns the two operands of its own closing add
    assert torch.zeros_like in {n.target for n in subs[0].graph.nodes}
    assert all(first_compute(sub).target is operator.add for sub in subs[1:])
    assert all(len(outputs_of(sub)) == 2 for sub in subs[1:4])
    prints = [fingerprint_piece(sub, piece_example_inputs(sub)) for sub in subs]
    assert len({f.digest for f in prints[1:4]}) == 1  # block 0 included: its add reads zeros
    assert torch.equal(actual[0], expected[0])  # adding zero is exact; every add is the same add


class PreNormBlock(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.inner, self.outer = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        x = x + self.inner(x)
        return x + self.outer(x)  # a closing add of two of the block's own values


def test_a_closing_add_also_read_outside_the_next_block_stays_put():
    class CollectsHidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(PreNormBlock() for _ in range(3))

        def forward(self, x):
            states = []
            for block in self.blocks:
                x = block(x)
                states.append(x)
            return torch.stack(states)

    class ReturnsLastSum(CollectsHidden):
        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x  # the last sum is the graph's output, not read by glue

    class Plain(CollectsHidden):
        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x.relu()

    assert fused_split(dynamo_graph_and_inputs(CollectsHidden(), torch.randn(2, 16))[0])[0] == 0
    assert fused_split(dynamo_graph_and_inputs(ReturnsLastSum(), torch.randn(2, 16))[0])[0] == 0
    assert fused_split(dynamo_graph_and_inputs(Plain(), torch.randn(2, 16))[0])[0] == 3


def test_gated_diffusion_blocks_keep_their_boundaries_and_still_compile_once_per_kind():
    torch.manual_seed(0)
    model = TinyDiT(n_double=2, n_single=3)
    args = (torch.randn(2, 12, 16), torch.randn(2, 5, 32), torch.tensor([1.0, 2.0]))
    gm, _ = dynamo_graph_and_inputs(model, *args)
    assert fused_split(gm)[0] == 0  # the single block's add reads its input, the double block has two outputs


def test_backend_fuses_boundaries_by_default_and_matches_eager_either_way():
    model = build_demo_model(LlamaConfig.tiny(4))
    tokens = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        expected = model(tokens)
        fused = compile_regionc(model)(tokens)
        report = regionc.last_report()
        torch._dynamo.reset()
        plain = compile_regionc(model, {"fuse_block_boundaries": False})(tokens)
        plain_report = regionc.last_report()
    assert_close(fused, expected)
    assert_close(plain, expected)
    assert report.fused_boundaries == 4 and plain_report.fused_boundaries == 0
    assert block_compiles(report) == 1 and block_compiles(plain_report) == 1
    assert report.to_dict()["fused_boundaries"] == 4
    assert "4 block-boundary add(s) fused" in report.summary()
