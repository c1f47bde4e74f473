"""Pieces that this torch's Inductor is known to compile wrong are found before they compile (they run
eagerly, one warning each): the checks on pieces as Dynamo traces them."""

from __future__ import annotations

import pytest
import torch

from regionc.compiler.inductor import INPUT_SLICE_WRITE_BUG, input_slice_written_after_read, known_miscompile


def dynamo_graph(fn, *args) -> torch.fx.GraphModule:
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs[0]


def read_then_assign(x, state):  # RWKV's block: its layer's slice of the state read, then the new one assigned
    y = x * state[:, :, 0]
    state[:, :, 0] = y
    return y * 2


def assign_then_read(x, state):
    state[:, :, 0] = x
    return state.sum(-1)


def index_copy_then_read(x, cache, position):  # a KV cache's update
    cache.index_copy_(1, position, x)
    return cache.sum(1)


def assign_an_intermediate_from_a_read(x, state):
    shifted = x.clone()
    shifted[:, 0] = state[:, 0, 0]
    return shifted * 2


@pytest.mark.parametrize("fn, args, written", [
    (read_then_assign, (torch.randn(2, 4), torch.randn(2, 4, 3)), "l_state_"),
    (assign_then_read, (torch.randn(2, 4), torch.randn(2, 4, 3)), None),
    (index_copy_then_read, (torch.randn(2, 1, 4), torch.randn(2, 6, 4), torch.tensor([3])), None),
    (assign_an_intermediate_from_a_read, (torch.randn(2, 4), torch.randn(2, 4, 3)), None),
], ids=["read-then-assign", "assign-then-read", "index-copy", "intermediate"])
def test_an_input_slice_assigned_after_a_read_is_found(fn, args, written):
    """Only a piece that assigns into a slice of an input it read before is found; a KV cache's update
    (written, then read) and a state read into an intermediate are not."""
    assert input_slice_written_after_read(dynamo_graph(fn, *[a.clone() for a in args])) == written


def test_such_a_piece_runs_eagerly_only_where_torch_compiled_it_wrong():
    """Torch 2.11's Inductor computed RWKV's block wrong; 2.13's computes it right and compiles it."""
    reason = known_miscompile(dynamo_graph(read_then_assign, torch.randn(2, 4), torch.randn(2, 4, 3)))
    if INPUT_SLICE_WRITE_BUG:
        assert reason is not None and "assigns into a slice of its input l_state_" in reason, reason
    else:
        assert reason is None, reason
