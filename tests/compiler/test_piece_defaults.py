"""Which Inductor settings a piece compiles with: combo kernels for a decode step's pieces on CUDA only."""

from __future__ import annotations

import torch

from regionc.compiler.inductor import DECODE_DEFAULTS, PIECE_DEFAULTS, is_decode_step, piece_defaults
from regionc.passes.decisions import SMALL_ROWS


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x))) @ torch.eye(32)


def _dynamo_graph(fn, *args, dynamic=False) -> torch.fx.GraphModule:
    """The graph Dynamo hands a backend for ``fn(*args)`` (its nodes carry example values)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, dynamic=dynamic)(*args)
    (gm,) = graphs
    return gm


def test_decode_step_is_every_linear_at_most_small_rows():
    block = _Block()
    assert is_decode_step(_dynamo_graph(block, torch.randn(2, 1, 32)))
    assert is_decode_step(_dynamo_graph(block, torch.randn(SMALL_ROWS, 32)))
    assert not is_decode_step(_dynamo_graph(block, torch.randn(SMALL_ROWS + 1, 32)))
    assert not is_decode_step(_dynamo_graph(block, torch.randn(4, 128, 32)))  # a prefill
    assert not is_decode_step(_dynamo_graph(block, torch.randn(2, 1, 32), dynamic=True))  # rows not known
    assert not is_decode_step(_dynamo_graph(torch.nn.LayerNorm(32), torch.randn(2, 1, 32)))  # no linear


def test_combo_kernels_and_pdl_only_for_decode_pieces_on_cuda():
    decode = _dynamo_graph(_Block(), torch.randn(2, 1, 32))
    prefill = _dynamo_graph(_Block(), torch.randn(2, 128, 32))
    assert piece_defaults(decode, torch.device("cuda")) == {**PIECE_DEFAULTS, **DECODE_DEFAULTS}
    assert DECODE_DEFAULTS["combo_kernels"] is True
    assert DECODE_DEFAULTS["triton.enable_pdl"] is True  # Inductor emits it on Hopper+ only
    assert piece_defaults(prefill, torch.device("cuda")) == PIECE_DEFAULTS
    assert piece_defaults(decode, torch.device("cpu")) == PIECE_DEFAULTS
