"""Unread NumPy calls on constants leave the graph; any NumPy call that reads the graph's values stays."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
from torch._dynamo.utils import numpy_method_wrapper, numpy_to_tensor_wrapper

from regionc.compiler.dead_numpy import drop_dead_numpy_calls


def test_only_unread_numpy_calls_on_constants_are_dropped():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    ceil = graph.call_function(numpy_to_tensor_wrapper(np.ceil), (2.0,))
    graph.call_function(numpy_method_wrapper("item"), (ceil,))  # unread, on a constant: dropped with its input
    graph.call_function(numpy_method_wrapper("fill"), (x, 0.0))  # unread, but writes x: stays
    used = graph.call_function(numpy_to_tensor_wrapper(np.floor), (3.5,))  # read by the output: stays
    total = graph.call_function(torch.add, (x, used))
    graph.call_function(torch.neg, (x,))  # unread, not NumPy: not this function's business
    graph.output(total)

    assert drop_dead_numpy_calls(graph) == 2
    kept = [n.target.__name__ for n in graph.nodes if n.op == "call_function"]
    assert kept == ["wrapped_fill", "wrapped_floor", "add", "neg"]
    graph.lint()


def test_a_model_computing_with_numpy_on_constants_saves_every_piece(tmp_path, caplog):
    """``int(np.ceil(...))`` in a forward, as diffusers' Flux writes its ControlNet interval: the graph compiles,
    equals eager and is saved whole (AOTAutograd's cache refused it before)."""
    import logging

    import regionc

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x, every):
            return torch.relu(self.linear(x)) * every

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block() for _ in range(3))

        def forward(self, x):
            for block in self.blocks:
                x = block(x, int(np.ceil(len(self.blocks) / 2)))
            return x

    model, x = Model().eval(), torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        expected = model(x)
        torch.testing.assert_close(torch.compile(model, backend="regionc", options={"cache_dir": str(tmp_path)})(x),
                                   expected)
    assert not [r.getMessage() for r in caplog.records if "cannot be serialized" in r.getMessage()]
    assert regionc.last_report().count("compiled") > 0
