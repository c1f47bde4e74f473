"""A tensor one piece returns reaches the piece that reads it laid out as Dynamo traced it."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

import regionc
from regionc.blocks.detect import detect_blocks
from regionc.blocks.layouts import as_traced
from regionc.blocks.split import split_into_pieces
from regionc.blocks.writes import mutated_placeholders
from tests.helpers import assert_close, block_compiles, compile_regionc


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        return x + self.proj(self.norm(x))


class PatchedStack(nn.Module):
    """WanVACE's front: a patch embedding's channels moved last, then a ``cat`` with padding rows, here
    none. Whole-graph Inductor returns that ``cat`` as its non-empty operand, a transposed view: the
    first block's input is not laid out as traced."""

    def __init__(self, width: int = 24, depth: int = 3):
        super().__init__()
        self.embed = nn.Conv1d(8, width, kernel_size=2, stride=2)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))

    def forward(self, x, tokens: int):
        h = self.embed(x).transpose(1, 2)
        h = torch.cat([h, h.new_zeros(h.shape[0], tokens - h.shape[1], h.shape[2])], dim=1)
        for block in self.blocks:
            h = block(h)
        return h


def test_a_piece_output_laid_out_unlike_its_trace_is_copied_to_the_traced_layout(caplog):
    model = PatchedStack().eval()
    x = torch.randn(1, 8, 256)
    with torch.no_grad():
        expected = model(x, 128)
        compiled = compile_regionc(model)
        with caplog.at_level(logging.INFO, logger="regionc"):
            actual = compiled(x, 128)
            again = compiled(x, 128)
    assert_close(actual, expected)
    assert_close(again, expected)
    assert block_compiles(regionc.reports()[-1]) == 1  # the three blocks still share one compile
    assert any("where Dynamo traced (3072, 24, 1)" in r.getMessage() for r in caplog.records)


def test_a_saved_trace_keeps_the_layout_check(tmp_path):
    """A second start loads the split module from the saved trace (its code re-traced symbolically when
    unpickled): the check must survive that, or the loaded program's first block asserts."""
    torch.manual_seed(0)
    model = PatchedStack().eval()
    x = torch.randn(1, 8, 256)
    with torch.no_grad():
        expected = model(x, 128)
    sources = []
    for _ in range(2):
        torch._dynamo.reset()
        options = {"cache_dir": str(tmp_path), "strict": True, "block_tracing": "full"}
        with torch.no_grad():
            assert_close(regionc.compile(copy.deepcopy(model), options=options)(x, 128), expected)
        sources.append(regionc.last_report().trace_source)
    assert sources[0].startswith("traced, saved as ") and sources[1].startswith("saved trace ")


class ScaledInPlace(nn.Module):
    """Each block scales the tensor it is handed in place before reading it."""

    def forward(self, x):
        x.mul_(0.5)
        return x + 1


class InPlaceStack(nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(ScaledInPlace() for _ in range(depth))

    def forward(self, x):
        h = x * 2
        for block in self.blocks:
            h = block(h) * 3
        return h


def test_an_input_a_piece_writes_in_place_is_never_replaced_by_a_copy():
    """A copy would take the write, and the pieces after it would read the unwritten tensor."""
    graphs = []
    torch.compile(InPlaceStack(), backend=lambda gm, inputs: graphs.append(gm) or gm, dynamic=False)(torch.randn(4, 8))
    split, pieces = split_into_pieces(graphs[0], detect_blocks(graphs[0].graph))
    calls = {node.target: node for node in split.graph.find_nodes(op="call_module")}
    blocks = [piece for piece in pieces if piece.block is not None]
    assert len(blocks) == 3
    for piece in blocks:
        written = mutated_placeholders(split.get_submodule(piece.name))
        assert written
        assert all(calls[piece.name].args[i].target is not as_traced for i in written)
    assert any(node.target is as_traced for node in split.graph.nodes)  # its other inputs are checked
