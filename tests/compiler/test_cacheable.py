"""What AOTAutograd's cache refuses in Dynamo's graph: unread NumPy calls on constants leave it (any NumPy call
that reads the graph's values stays), ``torch.Tensor`` methods called as functions become method calls."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
from torch._dynamo.utils import numpy_method_wrapper, numpy_to_tensor_wrapper

from regionc.compiler.cacheable import make_cacheable


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

    assert make_cacheable(graph) == {"unread NumPy calls dropped": 2}
    kept = [n.target.__name__ for n in graph.nodes if n.op == "call_function"]
    assert kept == ["wrapped_fill", "wrapped_floor", "add", "neg"]
    graph.lint()


def test_a_tensor_method_called_as_a_function_becomes_a_method_call():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["example_value"] = torch.randn(4, 2)
    sizes = graph.placeholder("sizes")  # not a tensor: a call with it first is left alone
    parts = graph.call_function(torch.Tensor.split, (x, [1, 3]))
    graph.call_function(torch.Tensor.split, (sizes, 1))
    graph.output(graph.call_function(operator.getitem, (parts, 1)))
    module = torch.fx.GraphModule(torch.nn.Module(), graph)

    assert make_cacheable(module.graph) == {"Tensor methods called as functions made method calls": 1}
    assert [(n.op, n.target) for n in module.graph.nodes][2:4] == [("call_method", "split"),
                                                                  ("call_function", torch.Tensor.split)]
    module.recompile()
    x = torch.randn(4, 2)
    torch.testing.assert_close(module(x, x), x[1:])


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
