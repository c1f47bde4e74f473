"""regionc.compile's saved Dynamo traces: a second start runs no Dynamo, and a stale trace never runs."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import sys

import pytest
import torch

import regionc
from regionc.cache.store import ArtifactStore
from regionc.tracing.compile import nested_regions_reuse_traces
from regionc.tracing.saved import traces_can_be_saved
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not traces_can_be_saved(), reason=f"torch {torch.__version__} cannot save traces")

MODEL_SOURCE = '''
import torch
from torch import nn

import types

SCALE = 0.5  # a module-level value the forward reads (a flag or a scale, in real models)
SETTINGS = types.SimpleNamespace(shift=0.0)  # one read through a global's attribute (a flag of another module)
OFFSET = torch.zeros(32)  # a module-level tensor


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.lin(x)) * SCALE + SETTINGS.shift + OFFSET


def _module_of(fn):
    """A function as a module of a class defined here, as the kernels package (which transformers
    >= 5.25 requires) wraps a model's functions so that they can be swapped for hub kernels."""
    class Func(nn.Module):
        def forward(self, *args):
            return fn(*args)

    return Func


def scaled_tanh(x):
    return torch.tanh(x) * 0.5


ScaledTanh = _module_of(scaled_tanh)


class FuncBlock(Block):
    def __init__(self, dim):
        super().__init__(dim)
        self.funcs = {"act": ScaledTanh()}  # a plain attribute, not a submodule, as kernels keeps them

    def forward(self, x):
        return x + self.funcs["act"](self.lin(x))


class Net(nn.Module):
    def __init__(self, dim=32, out=32, layers=3, graph_break=False, local_class=False):
        super().__init__()
        self.blocks = nn.ModuleList((FuncBlock if local_class else Block)(dim) for _ in range(layers))
        self.head = nn.Linear(dim, out)
        self.graph_break = graph_break

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        if self.graph_break:
            torch._dynamo.graph_break()
        return self.head(x)
'''


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    """The model above as an importable module file the test may edit."""
    path = tmp_path / "saved_trace_model.py"
    path.write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("saved_trace_model", None)
    module = importlib.import_module("saved_trace_model")
    yield module
    sys.modules.pop("saved_trace_model", None)


def start(module, cache_dir, x, options=None, change=None, **model_args):
    """One 'process start': fresh Dynamo, a new model (seeded weights; ``change`` edits it), compile,
    first call. Returns the report and how many graphs Dynamo traced."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = module.Net(**model_args)
    if change is not None:
        change(model)
    expected = model(x)
    options = {"cache_dir": str(cache_dir), "strict": True, "block_tracing": MODEL_LEVEL, **(options or {})}
    compiled = regionc.compile(model, options=options)
    with torch.no_grad():
        assert_close(compiled(x), expected)
    return regionc.last_report(), torch._dynamo.utils.counters["stats"]["unique_graphs"]


#: One trace of the whole model (the tests below change its glue too); per_block has its own test.
MODEL_LEVEL = "nested_region" if nested_regions_reuse_traces() else "full"


def x_of(rows=4, dim=32):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(1))


def test_second_start_loads_the_trace_and_runs_no_dynamo(model_module, tmp_path):
    first, traced_graphs = start(model_module, tmp_path / "cache", x_of())
    assert first.trace_source.startswith("traced, saved as ") and traced_graphs == 1
    second, traced_graphs = start(model_module, tmp_path / "cache", x_of())
    assert second.trace_source.startswith("saved trace ") and traced_graphs == 0
    assert [p.source for p in first.pieces] == ["compiled", "reused", "reused", "compiled"]
    assert [p.source for p in second.pieces] == ["cache", "reused", "reused", "cache"]
    assert second.stacks == {"blocks": 3}
    # the first call's phases include looking the trace up, serializing and writing the compiled
    # pieces and saving the trace; a load only looks it up and loads
    for phase in ("trace_key", "compile", "serialize", "cache_write", "trace_save"):
        assert first.phases[phase] > 0, phase
    assert second.phases["trace_key"] > 0 and second.phases["load"] > 0
    assert not {"compile", "serialize", "cache_write", "trace_save"} & set(second.phases)


def test_glue_run_as_traced_is_rebuilt_from_the_saved_trace(tmp_path):
    """The recipe carries the graphs of the glue that only moves data (it has no artifact to load)."""
    from tests.models import ConcatenatedModulations

    x, t = torch.randn(2, 5, 16), torch.randn(2, 16)
    runs = []
    for _ in range(2):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = ConcatenatedModulations(depth=4).eval()
        options = {"cache_dir": str(tmp_path), "strict": True, "block_tracing": MODEL_LEVEL}
        with torch.no_grad():
            assert_close(regionc.compile(model, options=options)(x, t), model(x, t))
        runs.append(regionc.last_report())
    cold, warm = runs
    assert cold.trace_source.startswith("traced, saved as ") and warm.trace_source.startswith("saved trace ")
    assert [p.source for p in warm.pieces if p.kind == "glue"].count("traced") == 3
    assert [p.source == "traced" for p in warm.pieces] == [p.source == "traced" for p in cold.pieces]


def test_a_changed_model_source_is_traced_again(model_module, tmp_path, caplog):
    start(model_module, tmp_path / "cache", x_of())
    path = tmp_path / "saved_trace_model.py"
    path.write_text(MODEL_SOURCE.replace("* 0.5", "* 2.0"))
    importlib.reload(model_module)
    with caplog.at_level(logging.INFO, logger="regionc"):
        report, traced_graphs = start(model_module, tmp_path / "cache", x_of())  # compares with the new eager
    assert report.trace_source.startswith("traced") and traced_graphs == 1
    assert any("is stale, saved_trace_model changed" in r.getMessage() for r in caplog.records)


def test_a_model_holding_modules_of_function_local_classes_saves_and_loads_its_trace(model_module, tmp_path):
    """Torch cannot save a guard on an object whose class has no importable name; the kernels package
    puts such modules in every HF attention. Their guards are left out of the saved trace, and the
    trace's key says which of them the model holds and whether their forward was replaced, as
    ``kernels.kernelize`` does: such a model is traced again, and computes what its new forward says."""
    import types

    first, traced_graphs = start(model_module, tmp_path / "cache", x_of(), local_class=True)
    assert first.trace_source.startswith("traced, saved as ") and traced_graphs == 1
    second, traced_graphs = start(model_module, tmp_path / "cache", x_of(), local_class=True)
    assert second.trace_source.startswith("saved trace ") and traced_graphs == 0

    def kernelize(model):  # every block's function gets another forward
        for block in model.blocks:
            func = block.funcs["act"]
            func.forward = types.MethodType(lambda self, x: torch.sigmoid(x), func)

    swapped, traced_graphs = start(model_module, tmp_path / "cache", x_of(), change=kernelize, local_class=True)
    assert swapped.trace_source.startswith("traced, saved as ") and traced_graphs == 1  # and equals its eager


def test_changed_shapes_and_weights_never_load_a_trace_that_does_not_fit(model_module, tmp_path, caplog):
    cache = tmp_path / "cache"
    base, _ = start(model_module, cache, x_of())
    other_rows, _ = start(model_module, cache, x_of(rows=6))  # another input shape: another key
    assert other_rows.trace_source.startswith("traced")
    with caplog.at_level(logging.INFO, logger="regionc"):
        other_head, traced_graphs = start(model_module, cache, x_of(), out=16)  # other weight shape: other key
    assert other_head.trace_source.startswith("traced") and traced_graphs == 1
    assert not any("does not fit this call" in r.getMessage() for r in caplog.records)  # the key told them apart
    again, traced_graphs = start(model_module, cache, x_of(), out=16)  # now both variants are saved
    assert again.trace_source.startswith("saved trace ") and traced_graphs == 0
    assert again.trace_source != base.trace_source


def test_a_trace_saved_by_another_torch_build_is_not_loaded(model_module, tmp_path, monkeypatch, caplog):
    from torch._dynamo import package

    start(model_module, tmp_path / "cache", x_of())
    real_current, real_load = package.SystemInfo.current, torch.compiler.load_compiled_function

    def load_under_another_build(*args, **kwargs):  # the running torch now differs from the saving one
        with monkeypatch.context() as patch:
            patch.setattr(package.SystemInfo, "current",
                          staticmethod(lambda: dataclasses.replace(real_current(), torch_version="0.0.1")))
            return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.compiler, "load_compiled_function", load_under_another_build)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        report, traced_graphs = start(model_module, tmp_path / "cache", x_of())
    assert report.trace_source.startswith("traced") and traced_graphs == 1
    assert any("cannot be used" in r.getMessage() and "PyTorch version" in r.getMessage() for r in caplog.records)


def test_an_unreadable_saved_trace_is_replaced(model_module, tmp_path, caplog):
    first, _ = start(model_module, tmp_path / "cache", x_of())
    store = ArtifactStore(tmp_path / "cache")
    (entry,) = [e for e in store.entries() if e.key.startswith(first.trace_source.rsplit(" ", 1)[1])]
    store.save(entry.key, b"not a trace", {})
    with caplog.at_level(logging.WARNING, logger="regionc"):
        report, traced_graphs = start(model_module, tmp_path / "cache", x_of())
    assert report.trace_source.startswith("traced, saved as ") and traced_graphs == 1
    assert any("cannot be used" in r.getMessage() for r in caplog.records)
    report, traced_graphs = start(model_module, tmp_path / "cache", x_of())
    assert report.trace_source.startswith("saved trace ") and traced_graphs == 0


def test_a_graph_break_falls_back_visibly(model_module, tmp_path, caplog):
    """A whole-model trace cannot be saved across a graph break: a nested-region trace falls back to the
    next block tracing, a full trace to an ordinary compile (which takes graph breaks); both say so."""
    with caplog.at_level(logging.WARNING, logger="regionc"):
        start(model_module, tmp_path / "cache", x_of(), {"strict": False}, graph_break=True)
    messages = [r.getMessage() for r in caplog.records]
    if MODEL_LEVEL == "nested_region":
        assert any("block_tracing=nested_region failed" in m and "block_tracing=per_block" in m for m in messages)
    else:
        assert any("cannot be traced for saving" in m for m in messages)


def test_a_model_whose_guard_state_cannot_be_pickled_is_compiled_unsaved_with_its_block_tracing(
        model_module, tmp_path, caplog):
    """A parametrized module (weight norm, as Wav2Vec2's positional convolution) raises a RuntimeError while
    Dynamo pickles the guards' state: only saving failed, so the trace is compiled the ordinary way, the
    block tracing kept, and the log says so."""
    with caplog.at_level(logging.WARNING, logger="regionc"):
        start(model_module, tmp_path / "cache", x_of(), {"strict": False},
              change=lambda model: torch.nn.utils.parametrizations.weight_norm(model.head))
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be traced for saving (RuntimeError: Serialization of parametrized" in m for m in messages)
    assert not any("failed for" in m for m in messages)


def test_per_block_tracing_saves_one_trace_for_all_blocks(model_module, tmp_path):
    options = {"block_tracing": "per_block"}
    first, traced_graphs = start(model_module, tmp_path / "cache", x_of(), options=options)
    assert traced_graphs == 1 and first.trace_source.startswith("traced, saved as ")
    second, traced_graphs = start(model_module, tmp_path / "cache", x_of(), options=options)
    assert traced_graphs == 0 and second.trace_source.startswith("saved trace ")


def test_per_block_traces_of_every_block_class_load_warm(tmp_path):
    """Flux has two block classes, and its last blocks trace apart from the others (their outputs are
    dropped): the traces saved after a class's first one still save (Dynamo pickles each traced module,
    instance forward included, into the guard state), and a second start loads every one of them."""
    pytest.importorskip("diffusers")
    from tests.zoo.architectures import ARCHITECTURES

    options = {"cache_dir": str(tmp_path / "cache"), "strict": True, "block_tracing": "per_block"}
    sources = []
    for _ in range(2):
        torch._dynamo.reset()
        model, kwargs = ARCHITECTURES["flux"].build(2)
        expected = model(**kwargs)
        compiled = regionc.compile(model, options=options)
        with torch.no_grad():
            assert_close(compiled(**kwargs)[0], expected[0])
        assert compiled.forward.strategy == "per_block"
        sources.append([r.trace_source for r in compiled.forward.reports])
    cold, warm = sources
    assert len(cold) >= 3 and all(s.startswith(("traced, saved as ", "saved trace ")) for s in cold), cold
    assert len(warm) == len(cold) and all(s.startswith("saved trace ") for s in warm), warm


def _closure_forward():
    scale = 2.0

    def forward(self, *args, **kwargs):
        return scale

    return forward


@pytest.mark.parametrize("fn, calls", [
    (_closure_forward(), [((), {}), ((1, 2), {"a": 3}), ((), {"past_key_values": None, "use_cache": True})]),
    (lambda self, x, y=2, *rest, **extra: None, [((1,), {}), ((1, 3, 4), {"k": 5}), ((), {"x": 1, "y": 0})]),
    (lambda self, x, *rest, z=None: None, [((1,), {})]),
    (lambda self, x, y=2: None, [((1,), {}), ((), {"x": 1}), ((1,), {"y": 3})]),
    (lambda self, x, /, y: None, [((1, 2), {})]),
])
def test_binding_gives_torch_s_frame_locals(fn, calls):
    """The guards' frame locals bound without ``inspect`` are those torch's ``prepare_f_locals`` gives
    (free variables, arguments, defaults, ``*args``/``**kwargs``); what it cannot bind goes to ``inspect``."""
    import inspect

    from torch._dynamo.aot_compile import bind_locals

    from regionc.tracing.saved import Binding

    code = fn.__code__
    binding = Binding(inspect.signature(fn), code.co_freevars, fn.__closure__)
    module = object()
    for args, kwargs in calls:
        expected = {name: cell.cell_contents for name, cell in zip(code.co_freevars, fn.__closure__ or ())}
        expected.update(bind_locals(inspect.signature(fn), module, *args, **kwargs))
        got = binding(module, args, kwargs)
        if any(p.kind in (p.POSITIONAL_ONLY, p.KEYWORD_ONLY) for p in inspect.signature(fn).parameters.values()):
            assert got is None  # positional-only or keyword-only parameters: bound by inspect
            continue
        assert got == expected and list(got.get("kwargs", {})) == list(expected.get("kwargs", {}))
    assert Binding(inspect.signature(lambda self, x: None))(module, (), {}) is None  # missing: inspect raises
    assert Binding(inspect.signature(lambda self, x: None))(module, (1,), {"x": 1}) is None  # given twice
    assert Binding(inspect.signature(lambda self: None))(module, (1,), {}) is None  # too many
    assert Binding(inspect.signature(lambda self: None))(module, (), {"y": 1}) is None  # unknown keyword


def test_a_loaded_trace_checks_the_guards_a_fresh_trace_checks(tmp_path):
    """A trace loaded in another process checks the guards it was traced with, not a costlier set: no
    aliasing check on parameters of modules outside ``torch.nn`` (an HF RMSNorm's weight), and every
    module Dynamo may skip while its ``__dict__`` is unchanged skippable (no check of a module's
    ``_compiled_call_impl``, which torch's pickling of modules drops)."""
    import copy

    from transformers import LlamaConfig, LlamaModel, StaticCache

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64)
    original = LlamaModel(config).eval()

    def guards_of_a_decode_step():
        model = copy.deepcopy(original)
        cache = StaticCache(config=config, max_cache_len=16)
        with torch.no_grad():
            model(input_ids=torch.randint(0, 64, (2, 4)), past_key_values=cache)
            for layer in model.layers:  # as a per-block compile leaves it once undone (HF decode on torch 2.11)
                layer._compiled_call_impl = None
            regionc.compile(model, options={"cache_dir": str(tmp_path), "block_tracing": "full"})
            model(input_ids=torch.ones(2, 1, dtype=torch.long), past_key_values=cache,
                  cache_position=torch.tensor([4]))
        run = model.forward.run
        (entry,) = getattr(run, "forward", run).traces.entries
        return entry.report.trace_source, str(entry.guards)

    fresh_source, fresh = guards_of_a_decode_step()
    loaded_source, loaded = guards_of_a_decode_step()
    assert not fresh_source.startswith("saved trace") and loaded_source.startswith("saved trace")
    for text in (fresh, loaded):
        assert "._compiled_call_impl is None" not in text  # not read: unpickled modules lack it
    assert loaded.count("NO_TENSOR_ALIASING") == fresh.count("NO_TENSOR_ALIASING")
    assert "layernorm']._parameters['weight']" not in "".join(
        line for line in loaded.splitlines() if "NO_TENSOR_ALIASING" in line)
    if torch._dynamo.config.use_recursive_dict_tags_for_guards:  # torch 2.11 (2.13 turned the matching off)
        assert loaded.count("tag_safe=(True, True)") == fresh.count("tag_safe=(True, True)") > 0


@pytest.mark.parametrize("tracing", [MODEL_LEVEL, "per_block"])
def test_a_global_the_forward_reads_is_checked_traced_and_loaded(model_module, tmp_path, tracing):
    """A module-level value the forward reads is baked into the trace: the trace runs only while the global
    holds that value, after a trace and after a load (which runs in a copy of the module's globals); a
    module-level tensor reassigned is read anew, and one of another shape gets a trace of its own."""
    x = x_of()
    for run in ("traced", "loaded"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model_module.SCALE, model_module.SETTINGS.shift, model_module.OFFSET = 0.5, 0.0, torch.zeros(32)
        model = model_module.Net()
        eager = copy.deepcopy(model)
        compiled = regionc.compile(model, options={"cache_dir": str(tmp_path / "cache"), "block_tracing": tracing})
        with torch.no_grad():
            assert_close(compiled(x), eager(x))
            assert regionc.last_report().trace_source.startswith("saved trace " if run == "loaded" else "traced"), run
            # a global changed twice becomes an input of the next trace (Dynamo's automatic dynamic)
            for scale, shift in ((0.25, 0.0), (0.5, 0.0), (0.125, 0.0), (0.5, 1.0), (0.25, 2.0), (0.5, 0.0)):
                model_module.SCALE, model_module.SETTINGS.shift = scale, shift
                assert_close(compiled(x), eager(x))
            for offset in (torch.ones(32), torch.ones(1), torch.zeros(32)):  # reassigned: another value, shape
                model_module.OFFSET = offset
                assert_close(compiled(x), eager(x))


class _ScaledStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
        self.scale = 1.0

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x)) * self.scale
        return x


def test_saved_traces_follow_torch_compiler_stances(tmp_path, monkeypatch):
    """Saved traces run outside Dynamo's frame evaluation, so they honour ``torch.compiler.set_stance`` as
    Dynamo does for the rest: ``force_eager`` runs the forward as it is, ``fail_on_recompile`` raises where a
    trace would be made (never falling back to another block tracing), ``eager_on_recompile`` runs the
    forward as it is there, and ``skip_guard_eval_unsafe`` checks no guard of a function's only trace."""
    from regionc.tracing import saved

    torch.manual_seed(0)
    model, x = _ScaledStack(), torch.randn(2, 8)
    reference = copy.deepcopy(model)
    compiled = regionc.compile(model, options={"cache_dir": str(tmp_path), "block_tracing": "full"})
    checks = []
    check = saved._Entry.check
    monkeypatch.setattr(saved._Entry, "check", lambda self, *a: checks.append(1) or check(self, *a))
    with torch.no_grad():
        assert_close(compiled(x), reference(x))
        traced = len(regionc.reports())
        model.scale = reference.scale = 2.0  # the trace's guards fail: a new trace would be made
        with torch.compiler.set_stance("force_eager"):
            assert_close(compiled(x), reference(x))
        with torch.compiler.set_stance("eager_on_recompile"):
            assert_close(compiled(x), reference(x))
        with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match="fail_on_recompile"):
            compiled(x)
        made = [r.trace_source for r in regionc.reports()[traced:] if not r.trace_source.startswith("saved trace")]
        assert made == [] and compiled.forward.strategy == "full", made  # the saved trace was loaded, never made
        model.scale = reference.scale = 1.0
        checks.clear()
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            for _ in range(3):
                assert_close(compiled(x), reference(x))
        assert checks == []
        assert_close(compiled(x), reference(x))
        assert checks


class _Restarting:
    """Stands in for ``torch.compile(fn).aot_compile``: Dynamo's analysis restarts ``restarts`` times, each
    time noting a new float to specialize (or none, with ``learns=False``), then traces."""

    def __init__(self, restarts: int, learns: bool = True):
        self.restarts, self.learns, self.calls = restarts, learns, 0

    def aot_compile(self, example):
        from torch._dynamo.exc import TensorifyScalarRestartAnalysis
        from torch._dynamo.symbolic_convert import TensorifyState

        self.calls += 1
        if self.calls <= self.restarts:
            if self.learns:
                TensorifyState.specialize(f"zf_restart_{self.calls}")
            raise TensorifyScalarRestartAnalysis
        return "traced"


def test_a_trace_restarts_dynamos_analysis_for_as_long_as_each_restart_learns_something(monkeypatch):
    """A model can take several restarts (HF Mixtral's decode step took three after a Gemma 2 had compiled
    in the process; three attempts made it give up nested regions). A restart that learned nothing would
    fail again, so it is raised at once."""
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis
    from torch._dynamo.symbolic_convert import TensorifyState

    from regionc.tracing.saved import _aot_compile

    monkeypatch.setattr(TensorifyState, "force_specializations", set())
    patient = _Restarting(restarts=5)
    assert _aot_compile(patient, ((), {})) == "traced" and patient.calls == 6
    stuck = _Restarting(restarts=5, learns=False)
    with pytest.raises(TensorifyScalarRestartAnalysis):
        _aot_compile(stuck, ((), {}))
    assert stuck.calls == 1
