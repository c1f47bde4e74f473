"""What AOTAutograd's cache refuses in Dynamo's graph: unread NumPy calls on constants leave it (any NumPy call
that reads the graph's values stays), so do autocast regions turned off where autocast is off, factory calls
name the dtype they make, ``torch.Tensor`` methods called as functions become method calls."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
from torch._dynamo.utils import numpy_method_wrapper, numpy_to_tensor_wrapper
from torch.amp.autocast_mode import _enter_autocast, _exit_autocast

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


def _autocast_regions():
    """x -> [off: cos] -> [cpu bf16 on: [off: sin]] -> [cuda off: neg] -> [device from a node, off: exp]."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")

    def region(args, op, inner=None):
        enter = graph.call_function(_enter_autocast, args)
        value = inner() if inner else graph.call_function(op, (x,))
        graph.call_function(_exit_autocast, (enter,))
        return value

    outs = [region(("cpu", None, False, None), torch.cos),
            region(("cpu", torch.bfloat16, True, None), None, lambda: region(("cpu", None, False, None), torch.sin)),
            region(("cuda", None, False, None), torch.neg),
            region((x, None, False, None), None, lambda: region(("cpu", None, False, None), torch.exp))]
    graph.output(tuple(outs))
    return graph


def _regions(graph):
    return [n.args[:3] for n in graph.nodes if n.target is _enter_autocast]


def test_only_autocast_regions_turned_off_where_it_is_off_are_dropped():
    graph = _autocast_regions()
    assert make_cacheable(graph) == {"autocast regions that change nothing dropped": 2}  # cos's and neg's
    x = next(iter(graph.nodes))
    assert _regions(graph) == [("cpu", torch.bfloat16, True), ("cpu", None, False), (x, None, False),
                               ("cpu", None, False)]  # inside autocast, and inside a region it cannot read
    assert sum(n.target is _exit_autocast for n in graph.nodes) == 4
    graph.lint()

    graph = _autocast_regions()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # on in the caller: turning it off changes what runs
        assert make_cacheable(graph) == {"autocast regions that change nothing dropped": 1}  # neg's (cuda)
    assert len(_regions(graph)) == 5


def test_factory_calls_that_make_the_default_dtype_name_it():
    graph = torch.fx.Graph()
    calls = {}
    for name, target, args, kwargs, value in [
            ("ones", torch.ones, (8,), {}, torch.ones(8, dtype=torch.float64)),  # the default dtype: named
            ("tensor", torch.tensor, ([1.5],), {}, torch.tensor([1.5], dtype=torch.float64)),
            ("arange", torch.arange, (4,), {}, torch.arange(4)),  # int64 whatever the default: left alone
            ("zeros", torch.zeros, (2,), {"dtype": torch.float16}, torch.zeros(2, dtype=torch.float16))]:
        calls[name] = graph.call_function(target, args, kwargs)
        calls[name].meta["example_value"] = value
    graph.output(tuple(calls.values()))

    assert make_cacheable(graph) == {"factory calls given their dtype": 2}
    assert {name: node.kwargs.get("dtype") for name, node in calls.items()} == {
        "ones": torch.float64, "tensor": torch.float64, "arange": None, "zeros": torch.float16}


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


class _Fp32Rope(torch.nn.Module):
    """A block that computes its rotation in fp32 with autocast off, as Z-Image's and Mochi's RoPE do."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 16)
        self.frequencies = torch.nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x, angles):
        with torch.autocast("cpu", enabled=False):  # a matmul in fp32 where the caller's autocast says bf16
            rotation = torch.cos(angles.float() @ self.frequencies)
        return self.linear(x) * rotation  # bf16 * fp32: fp32, as long as the rotation stays in fp32


class _Fp32RopeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Fp32Rope() for _ in range(3))

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            angles = torch.sin(x.float())
        for block in self.blocks:
            x = block(x, angles)
        return x


def test_a_model_turning_autocast_off_saves_every_piece_and_keeps_fp32_under_autocast(tmp_path, caplog):
    """Without autocast the regions change nothing: every piece is saved cold and loaded warm. Under
    ``torch.autocast("cpu", bfloat16)`` they keep the rotation in fp32, as in eager."""
    import copy
    import logging

    import regionc

    torch.manual_seed(0)
    model, x = _Fp32RopeModel().eval(), torch.randn(4, 16)
    options = {"cache_dir": str(tmp_path)}
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        caplog.clear()
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
            torch.testing.assert_close(torch.compile(copy.deepcopy(model), backend="regionc", options=options)(x),
                                       model(x))
        assert not [r.getMessage() for r in caplog.records if "cannot be serialized" in r.getMessage()], start
        sources = {p.source for p in regionc.last_report().pieces}
        assert ("compiled" in sources) if start == "cold" else (sources <= {"cache", "reused"}), (start, sources)

    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
        out = torch.compile(copy.deepcopy(model), backend="regionc", options=options)(x)
    assert "compiled" in {p.source for p in regionc.last_report().pieces}  # another key: compiled under autocast
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


@torch._dynamo.allow_in_graph
def _scaled_in_python(x):
    """A call Dynamo leaves in the graph as is: off AOTAutograd's cache allowlist."""
    return x * 2


def test_a_piece_the_cache_refuses_is_named_with_the_call_it_refuses(tmp_path, caplog):
    import logging

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x):
            return _scaled_in_python(self.linear(x))

    model = torch.nn.Sequential(*(Block() for _ in range(3))).eval()
    x = torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        torch.testing.assert_close(torch.compile(model, backend="regionc", options={"cache_dir": str(tmp_path)})(x),
                                   model(x))
    refused = [r.getMessage() for r in caplog.records if "cannot be serialized" in r.getMessage()]
    assert refused and all("AOTAutograd's cache refuses it" in m and "_scaled_in_python" in m for m in refused), refused
