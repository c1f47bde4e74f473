"""Staging a graph's activation inputs: each replay's args land in the buffers the graph reads."""

from __future__ import annotations

import torch

from regionc.cudagraph.sizes import DynamicSpec
from regionc.cudagraph.staging import GraphOutputs, copy_in, stage


def _staged(n: int, size: int):
    """A piece of four activations: rows padded from ``n`` to ``size`` (pad 7), two copied as they are
    (one of another dtype), and one broadcast over its rows (a mask expanded from one row)."""
    spec = DynamicSpec.make(inputs=[(0, 0)], pad_values={0: 7})
    args = [torch.zeros(n, 3), torch.zeros(2, 2), torch.zeros(5, dtype=torch.long),
            torch.zeros(1, 4).expand(6, 4)]
    capture_args, staged = stage(args, spec, static=(), n=n, size=size, outputs=GraphOutputs())
    return capture_args, staged


def test_copy_in_fills_padded_plain_and_broadcast_buffers():
    buffers, staged = _staged(3, 4)
    new = [torch.randn(3, 3), torch.randn(2, 2), torch.arange(5), torch.randn(1, 4).expand(6, 4)]
    assert copy_in(staged, new, 3, 4) is None
    assert torch.equal(buffers[0][:3], new[0]) and torch.equal(buffers[0][3:], torch.full((1, 3), 7.0))
    assert torch.equal(buffers[1], new[1])
    assert torch.equal(buffers[2], new[2])
    assert buffers[3].stride(0) == 0 and torch.equal(buffers[3], new[3])


def test_copy_in_copies_nothing_when_an_arg_cannot_go_in():
    buffers, staged = _staged(4, 4)
    before = [b.clone() for b in buffers]
    rows_differ = torch.randn(6, 4)  # not broadcast over the rows where the buffer is: it cannot hold it
    new = [torch.randn(4, 3), torch.randn(2, 2), torch.arange(5), rows_differ]
    assert copy_in(staged, new, 4, 4) == 3
    assert all(torch.equal(b, old) for b, old in zip(buffers, before))
