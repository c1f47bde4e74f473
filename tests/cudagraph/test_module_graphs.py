"""A whole module forward under one CUDA graph per input key, on the CPU through the fake backend."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle

import pytest
import torch
from torch import nn

import regionc
from regionc.config import Config
from regionc.cudagraph.module import ModuleGraphs
from regionc.cudagraph.runner import (
    PAYING_REPLAYS,
    RECAPTURES,
    CudaGraphAddressError,
    GraphPool,
    PieceGraphRunner,
)
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.cudagraph.fakes import FakeBackend
from tests.helpers import NO_CACHE, assert_close


class Glue(nn.Module):
    """Eager code around a layer, with a keyword argument and a KV-cache-like buffer written in place."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("steps", torch.zeros(1))

    def forward(self, x, scale=1.0):
        self.steps.add_(1)
        return torch.relu(self.lin(x)) * scale + self.steps


def graphed(model, **options):
    backend = FakeBackend(state=list(model.buffers()))
    config = Config.build({"cudagraphs": True, **options}, environ={})
    return ModuleGraphs(model, model.forward, config, backend=backend), backend


def test_replays_one_graph_per_key_and_matches_eager():
    torch.manual_seed(0)
    model, reference = Glue(), Glue()
    reference.load_state_dict(model.state_dict())
    run, backend = graphed(model)
    with torch.no_grad():
        for step in range(5):
            x = torch.randn(4, 8)
            assert_close(run(x), reference(x))  # warm-up, capture, then replays: the buffer update persists
        assert backend.captures == 1 and backend.replays == 4
        assert model.steps.item() == reference.steps.item() == 5
        assert pickle.loads(pickle.dumps(run)) is None  # a saved trace pickles the model: graphs stay here
        x = torch.randn(2, 8)  # a new shape: its own warm-up and graph
        for _ in range(3):
            assert_close(run(x, scale=2.0), reference(x, scale=2.0))
        assert_close(run(x, scale=3.0), reference(x, scale=3.0))  # another keyword value: another graph
        assert backend.captures == 2
    with torch.inference_mode():
        assert_close(run(x, scale=2.0), reference(x, scale=2.0))  # inference mode keys the graph too
    assert backend.captures == 2 and run.report.cudagraphs["graphs"] == 2


def test_calls_autograd_records_run_without_graphs(caplog):
    """With grad on and weights that require grad, every call runs the forward itself: its output
    carries a backward graph of this call (a replay's would be the capture's), and backward works
    call after call."""
    torch.manual_seed(0)
    model, reference = Glue(), Glue()
    reference.load_state_dict(model.state_dict())
    run, backend = graphed(model)
    with caplog.at_level(logging.INFO, logger="regionc"):
        for _ in range(4):
            x = torch.randn(4, 8)
            out, expected = run(x), reference(x)
            assert_close(out, expected)
            out.sum().backward()
            expected.sum().backward()
    assert backend.captures == 0 and backend.replays == 0
    assert_close(model.lin.weight.grad, reference.lin.weight.grad)
    assert sum("while autograd records it" in r.getMessage() for r in caplog.records) == 1
    model.requires_grad_(False)
    for _ in range(3):  # nothing requires grad: graphed with grad mode on
        assert_close(run(torch.ones(4, 8)), reference(torch.ones(4, 8)))
    assert backend.captures == 1 and backend.replays == 2  # the capture's own replay, then one


def test_no_graph_is_captured_while_the_forward_is_settling():
    """While background compiles may still replace the forward's code, calls run it as it is; the
    first call after them too (the new code's first run), then the graph is captured."""
    settling = [True]
    model = Glue()
    backend = FakeBackend(state=list(model.buffers()))
    run = ModuleGraphs(model, model.forward, Config.build({"cudagraphs": True}, environ={}), backend=backend,
                       settling=lambda: settling[0])
    with torch.no_grad():
        for _ in range(3):
            run(torch.ones(4, 8))
        assert backend.captures == 0
        settling[0] = False
        run(torch.ones(4, 8))  # the settled code's first run: as it is
        assert backend.captures == 0
        for _ in range(3):
            run(torch.ones(4, 8))
    assert backend.captures == 1 and backend.replays == 2


class GraphsItsOwn(nn.Module):
    """A forward whose code runs under CUDA graphs of its own (as a ``regionc.compile`` trace's program does)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.backend = FakeBackend()
        self.pool = GraphPool(Config.build({"cudagraphs": True}, environ={}), backend=self.backend)
        self.piece = PieceGraphRunner(lambda x, w, b: torch.relu(x @ w.T + b), name="piece",
                                      static_input_indices={1, 2}, pool=self.pool, is_last=True)

    def forward(self, x):
        with self.pool.forward():
            return self.piece(x, self.lin.weight, self.lin.bias)


def test_code_under_its_own_graphs_is_recorded_by_the_forward_graph_and_graphs_itself_without_it():
    torch.manual_seed(0)
    model = GraphsItsOwn()
    run, outer = graphed(model)
    expected = lambda x: torch.relu(model.lin(x))  # noqa: E731
    with torch.no_grad():
        for step in range(4):
            x = torch.full((2, 8), float(step))
            assert_close(run(x), expected(x))
        # the inner graph warmed up with the forward's warm-up; inside the forward's capture it ran as it is
        assert outer.captures == 1 and model.backend.captures == 0
        run.runner.disable("a test", drop=True)  # no graph over the forward: its code's own graphs take over
        for step in range(3):
            x = torch.full((2, 8), float(step))
            assert_close(run(x), expected(x))
    assert model.backend.captures == 1 and model.backend.replays == 3  # warmed up before: captured at once


def test_outputs_are_not_overwritten_by_the_next_replay():
    model, reference = Glue(), Glue()
    reference.load_state_dict(model.state_dict())
    run, _ = graphed(model)
    inputs = [torch.randn(4, 8) for _ in range(4)]
    outputs = [run(x) for x in inputs]  # all kept while later replays run
    for out, x in zip(outputs, inputs):
        assert_close(out, reference(x))


def test_a_forward_that_writes_its_argument_is_not_graphed(caplog):
    class WritesInput(nn.Module):
        def forward(self, x):
            x.mul_(2)
            return x + 1

    run, backend = graphed(WritesInput())
    with caplog.at_level(logging.WARNING, logger="regionc"):
        results = [run(torch.ones(3)) for _ in range(3)]
    assert all(torch.equal(r, torch.full((3,), 3.0)) for r in results)
    assert backend.captures == 0 and not run.runner.capturable
    assert any("writes in place to its tensor argument" in r.getMessage() for r in caplog.records)


def test_structured_results_are_graphed_and_rebuilt():
    """Dicts, nested tuples, dataclasses and HF ModelOutputs (with the cache object passed in) replay."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    @dataclasses.dataclass
    class Result:
        hidden: torch.Tensor
        extra: tuple

    class Structured(nn.Module):
        def forward(self, x, cache):
            return {"y": x * 2, "nested": (x + 1, [x - 1, None])}, Result(x * 3, (x * 4,)), \
                BaseModelOutputWithPast(last_hidden_state=x * 5, past_key_values=cache)

    cache = object()
    run, backend = graphed(Structured())
    for step in range(4):
        x = torch.full((2,), float(step))
        plain, result, output = run(x, cache)
        assert torch.equal(plain["y"], x * 2) and torch.equal(plain["nested"][1][0], x - 1)
        assert plain["nested"][1][1] is None
        assert isinstance(result, Result) and torch.equal(result.extra[0], x * 4)
        assert isinstance(output, BaseModelOutputWithPast) and torch.equal(output.last_hidden_state, x * 5)
        assert output.past_key_values is cache
    assert backend.captures == 1 and backend.replays == 3  # warm-up, then capture and replay


def test_a_forward_returning_a_python_value_is_not_graphed(caplog):
    class ReturnsCount(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 2, self.calls

    run, backend = graphed(ReturnsCount())
    with caplog.at_level(logging.WARNING, logger="regionc"):
        counts = [run(torch.ones(2))[1] for _ in range(3)]
    assert counts == [1, 2, 3] and backend.captures == 0
    assert any("returns a int computed in Python" in r.getMessage() for r in caplog.records)


class Layer:
    """A cache layer as HF keeps one: tensors and Python ints, reached from the forward's arguments."""

    def __init__(self):
        self.keys, self.length, self.ready = torch.zeros(0, 8), 0, False


class Cache:
    def __init__(self):
        self.layers = [Layer(), Layer()]


class CountsInPython(nn.Module):
    """Sliding-window HF layers: a Python int counts the tokens, and what is computed depends on it."""

    def forward(self, x, cache):
        layer = cache.layers[1]
        layer.length += 1
        return x * layer.length


class GrowsByAssignment(nn.Module):
    """HF's DynamicCache: each step assigns a longer tensor to the layer."""

    def forward(self, x, cache):
        layer = cache.layers[0]
        layer.keys = torch.cat([layer.keys, x])
        return layer.keys.sum(0)


class InitialisesOnce(nn.Module):
    """A lazily initialised cache: Python state set on the first call only, then read."""

    def forward(self, x, cache):
        layer = cache.layers[0]
        if not layer.ready:
            layer.keys, layer.ready = torch.full((1, 8), 2.0), True
        return x * layer.keys


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


@pytest.mark.parametrize("model, path", [(CountsInPython(), "cache.layers[1].length"),
                                         (GrowsByAssignment(), "cache.layers[0].keys"),
                                         (CountsCalls(), "calls")])
def test_a_forward_that_changes_python_state_is_not_replayed(model, path, caplog):
    """A replay runs no Python: the count would stop, the cache would stop growing. The capture that
    sees the forward change Python state drops its graph, with one warning naming the state. (The fake
    graph's replay runs Python, so outputs here cannot show the staleness; the GPU tests show it.)"""
    run, backend = graphed(model)
    arguments = {"cache": Cache()} if "cache" in path else {}
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for step in range(5):
            run(torch.full((1, 8), float(step + 1)), **arguments)
    assert backend.captures == 1 and backend.replays == 1  # the capture's own run, then never again
    assert not run.runner.capturable
    assert any(f"the forward changed {path}" in r.getMessage() for r in caplog.records)


def test_python_state_set_at_the_first_call_only_is_replayed():
    """Lazy initialisation changes Python state at the warm-up; the capture after it changes nothing."""
    run, backend = graphed(InitialisesOnce())
    cache = Cache()
    for step in range(5):
        x = torch.full((1, 8), float(step))
        assert_close(run(x, cache=cache), x * 2)
    assert backend.captures == 1 and backend.replays == 4 and run.runner.capturable


class ReadsTheCache(nn.Module):
    """Reads a cache layer's tensor, as a static cache's attention does."""

    def forward(self, x, cache):
        return cache.layers[1].keys * 2 + x


def test_tensors_reassigned_between_calls_are_captured_anew_then_graphs_stop(caplog):
    """Beam search's ``reorder_cache`` assigns every layer new tensors between steps: a graph holds the
    addresses it was captured with, so a replay would read and write the old ones. The graphs are captured
    anew over the new tensors (one log line), and after ``RECAPTURES`` times they stop (one warning
    naming the path). Without reassignment the graph replays. (The fake graph's replay runs Python, so
    outputs here cannot show the staleness; the GPU beam-search test shows it.)"""
    run, backend = graphed(ReadsTheCache())
    cache, reference = Cache(), Cache()
    for c in (cache, reference):
        c.layers[1].keys = torch.zeros(2, 8)
    with caplog.at_level(logging.INFO, logger="regionc"):
        for step in range(3):  # warm-up, capture, replay
            x = torch.full((2, 8), float(step))
            assert_close(run(x, cache=cache), ReadsTheCache()(x, reference))
        assert backend.captures == 1 and backend.replays == 2
        for step in range(3 * (RECAPTURES + 2)):
            for c in (cache, reference):
                c.layers[1].keys = c.layers[1].keys.flip(0)  # what reorder_cache does: new tensors, by beam
            x = torch.full((2, 8), float(step))
            assert_close(run(x, cache=cache), ReadsTheCache()(x, reference))
    anew = [r for r in caplog.records if "cache.layers[1].keys was assigned another tensor since" in r.getMessage()]
    assert len(anew) == RECAPTURES and backend.captures == 1 + RECAPTURES
    assert not run.runner.capturable
    assert any("cache.layers[1].keys was assigned another tensor between calls" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("name, cache, changed", [
    ("Llama", "static", None),
    ("Gemma2", "static", "past_key_values.layers[0].cumulative_length_int"),
    ("Llama", "dynamic", "past_key_values.layers[0].keys"),
])
def test_hf_decode_is_replayed_only_where_the_cache_counts_in_python(name, cache, changed, caplog):
    """HF decode steps under one graph per key: a full-attention StaticCache is written in place and
    replays; a sliding-window layer's Python token count and a DynamicCache's growing tensors stop the
    graphs at the first capture."""
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, f"{name}Config")(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, **({"sliding_window": 4} if name == "Gemma2" else {}))
    model = getattr(transformers, f"{name}Model")(config).eval()
    past = transformers.StaticCache(config=config, max_cache_len=16) if cache == "static" else transformers.DynamicCache()
    run, backend = graphed(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        model(input_ids=torch.randint(0, 64, (1, 6)), past_key_values=past, use_cache=True)
        for step in range(4):
            run(input_ids=torch.tensor([[step]]), past_key_values=past, use_cache=True,
                cache_position=torch.tensor([6 + step]))
    if changed is None:
        assert backend.captures == 1 and backend.replays == 3 and run.runner.capturable
    else:
        assert backend.replays == 1 and not run.runner.capturable
        assert any(f"the forward changed {changed}" in r.getMessage() for r in caplog.records)


def test_weights_whose_storage_moved_are_captured_anew_then_graphs_stop(caplog):
    """``p.data = ...`` (or a CPU-offload round trip: ``.to("cpu")`` then back) keeps the parameter but moves
    its storage, which no registration hook sees: the next call captures the forward's graph anew over the
    new addresses (a replay would read the old storage); after ``RECAPTURES`` moves graphs stop for it."""
    model = Glue()
    run, backend = graphed(model)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="regionc"):
        for _ in range(3):
            run(torch.randn(4, 8))
        assert backend.captures == 1
        for move in range(1, RECAPTURES + 2):
            model.lin.weight.data = model.lin.weight.data * 2  # the same parameter, new storage
            for _ in range(3):  # warm-up, capture, replay
                run(torch.randn(4, 8))
            assert backend.captures == 1 + min(move, RECAPTURES)
    moved = [r for r in caplog.records if "parameters or buffers were reassigned or moved" in r.getMessage()]
    assert len(moved) == RECAPTURES + 1 and moved[-1].levelno == logging.WARNING
    assert not run.runner.capturable


def test_weights_moved_after_their_graphs_paid_are_captured_anew_every_time():
    """Moves with many replays between (adapters loaded now and then, a model offloaded between pipeline
    calls) never stop the graphs: each capture paid for itself, as torch's CUDA graph trees re-record."""
    model = Glue()
    run, backend = graphed(model)
    with torch.no_grad():
        for move in range(RECAPTURES + 2):
            if move:
                model.lin.weight.data = model.lin.weight.data * 2
            for _ in range(2 + PAYING_REPLAYS):  # warm-up, capture, then replays that pay for it
                run(torch.randn(4, 8))
    assert backend.captures == RECAPTURES + 2 and run.runner.capturable


def test_address_check_raises_when_a_weight_is_reassigned():
    model = Glue()
    run, _ = graphed(model, cudagraph_check_addresses=True)
    with torch.no_grad():
        for _ in range(3):
            run(torch.randn(4, 8))
        model.lin.weight = nn.Parameter(torch.randn(8, 8))
        with pytest.raises(CudaGraphAddressError, match="must stay in place"):
            run(torch.randn(4, 8))


def test_regionc_compile_per_block_graphs_the_whole_forward_and_blocks_run_without_graphs():
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    x = torch.randint(0, 128, (2, 8))
    expected = model(x)
    compiled = regionc.compile(model, options={**NO_CACHE, "block_tracing": "per_block"})
    assert isinstance(compiled.forward.run, ModuleGraphs)
    with torch.no_grad():
        assert_close(compiled(x), expected)  # on the CPU the forward runs as it is
    assert compiled.forward.run.runner is None
    block_report = regionc.last_report()
    assert block_report.cudagraphs == {}

    plain = build_demo_model(LlamaConfig.tiny(n_layers=3))
    regionc.compile(plain, options={**NO_CACHE, "block_tracing": "per_block", "cudagraphs": False})
    assert not isinstance(plain.forward.run, ModuleGraphs)


class Scaled(nn.Module):
    """Two repeated blocks and a Python float the forward reads (Dynamo guards its value)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Glue() for _ in range(2))
        self.scale = 1.0

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x * self.scale


@pytest.mark.parametrize("strategy", ["full", "nested_region"])
def test_regionc_compile_graphs_a_whole_forward_trace_keyed_by_the_trace_its_guards_pick(strategy, tmp_path):
    """A saved trace of the whole forward runs under one graph per input key and trace: a change that
    Dynamo's guards see (a float the forward reads) gets a new trace and a new graph, reassigned weights
    a new capture; every output equals eager's, none is a stale replay."""
    from regionc.tracing.compile import nested_regions_reuse_traces

    if strategy == "nested_region" and not nested_regions_reuse_traces():
        pytest.skip("nested regions need torch >= 2.12")
    torch.manual_seed(0)
    model = Scaled()
    reference = copy.deepcopy(model)
    compiled = regionc.compile(model, options={"cache_dir": str(tmp_path), "strict": True, "block_tracing": strategy})
    run = compiled.forward.run
    assert isinstance(run, ModuleGraphs)
    backend = FakeBackend(state=[b for m in (model,) for b in m.buffers()])
    run._backend = backend  # the CPU stands in for a GPU
    x = torch.randn(4, 8)

    def steps(n):
        for _ in range(n):
            assert_close(compiled(x), reference(x))

    with torch.no_grad():
        steps(3)  # warm-up, capture, replay
        assert backend.captures == 1
        model.scale = reference.scale = 2.0
        steps(3)  # traced anew (run as it is), warm-up of the new trace's key, capture
        assert backend.captures == 2
        model.blocks[1].lin = nn.Linear(8, 8)
        reference.blocks[1].lin.load_state_dict(model.blocks[1].lin.state_dict())
        steps(2)  # the same trace, new weights: warm-up and capture over them
        assert backend.captures == 3


@pytest.mark.parametrize("options, whole", [({}, True), ({"cudagraphs": False}, False),
                                            ({"cudagraph_mode": "piecewise"}, False), ({"cache": False}, False)])
def test_regionc_compile_graphs_a_whole_forward_trace_only_when_it_can_check_its_guards(options, whole, tmp_path):
    """Only a saved trace's guards can be checked apart from running it: without the cache (torch.compile's
    own guards), or with graphs off or piecewise, the trace runs as it is."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    x = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        expected = model(x)
        compiled = regionc.compile(model, options={"cache_dir": str(tmp_path), "block_tracing": "full", **options})
        assert isinstance(compiled.forward.run, ModuleGraphs) is whole
        assert_close(compiled(x), expected)  # on the CPU the forward runs its trace as it is


def test_watching_registrations_makes_dynamo_compile_nothing_again():
    """Forward graphs count the parameters, buffers and submodules registered anywhere (torch's global
    hooks); code Dynamo traces that registers one must not make the count a guard (a recompile per call)."""
    from torch._dynamo.testing import CompileCounter

    from regionc.cudagraph.module import _watch_registrations

    _watch_registrations()

    class Registers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            self.register_buffer("last", x.detach().clone(), persistent=False)
            return self.lin(x)

    counter = CompileCounter()
    compiled = torch.compile(Registers(), backend=counter)
    for _ in range(2):  # the first call registers the buffer, the second sees it: two traces either way
        compiled(torch.randn(2, 4))
    settled = counter.frame_count
    for _ in range(3):
        compiled(torch.randn(2, 4))
    assert counter.frame_count == settled


class ScaledByAFloat(nn.Module):
    """A compiled program inside the forward, handed a Python float as Dynamo hands one it traces as a
    tensor (a LoRA scale set between calls): a CPU 0-d tensor made on every call."""

    def __init__(self, inner: PieceGraphRunner):
        super().__init__()
        self.inner, self.scale = inner, 1.0

    def forward(self, x):
        with self.inner.pool.forward():
            return self.inner(x, torch.tensor(self.scale))[0]


def test_a_float_handed_to_a_piece_inside_the_forward_graph_stops_that_graph(caplog):
    """The piece reads the float on the host, so a replay of the forward's graph would keep the scale it
    had at capture: the capture fails (one warning), the forward runs without its graph, and every scale
    set between calls is used."""
    accepts = lambda t: t.dim() > 0  # noqa: E731 - the fake graph's device: 0-d tensors stand for host scalars
    inner_pool = GraphPool(Config.build({"cudagraphs": True}, environ={}), backend=FakeBackend(accepts=accepts))
    model = ScaledByAFloat(PieceGraphRunner(lambda x, s: (x * s,), name="scaled piece", pool=inner_pool,
                                             static_input_indices=()))
    backend = FakeBackend(accepts=accepts)
    run = ModuleGraphs(model, model.forward, Config.build({"cudagraphs": True}, environ={}), backend=backend)
    x = torch.ones(2, 8)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        for scale in (1.0, 0.3, 0.7, 0.5):
            model.scale = scale
            assert_close(run(x), x * scale)
    assert backend.captures == 0 and not run.runner.capturable
    assert any("inside another CUDA graph's capture" in r.getMessage() for r in caplog.records)


def test_a_holder_replaced_on_the_way_to_a_tensor_is_seen():
    """The check goes through every holder: a new layer object (or a new list of layers) is a change even
    though the old one, still alive, holds the old tensors."""
    from regionc.cudagraph.module import held_tensors, moved_tensor

    cache = Cache()
    edges = held_tensors(["cache"], (cache,))
    assert moved_tensor(edges) is None
    cache.layers[1].keys.add_(1)  # written in place: the same tensor
    assert moved_tensor(edges) is None
    old = cache.layers[1]
    cache.layers[1] = Layer()
    cache.layers[1].keys = old.keys
    assert moved_tensor(edges) == "cache.layers[1]"
    cache.layers[1] = old
    cache.layers = list(cache.layers)
    assert moved_tensor(edges) == "cache.layers"


def test_each_autocast_state_has_its_own_graph():
    """A graph captured under bf16 autocast computes in bf16: a call under fp16 autocast, or none, gets
    its own graph (the key held only whether CUDA autocast was on, so an fp16 call replayed bf16 code)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    run, backend = graphed(model)
    x = torch.randn(4, 8)
    with torch.no_grad():
        for enabled, dtype in [(True, torch.bfloat16), (True, torch.float16), (False, torch.bfloat16)]:
            with torch.autocast("cpu", dtype=dtype, enabled=enabled):
                expected = model(x)
                for _ in range(3):  # warm-up, capture, replay
                    out = run(x)
                    assert out.dtype == expected.dtype
                    assert_close(out, expected)
    assert backend.captures == 3
