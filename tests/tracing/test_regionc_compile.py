"""regionc.compile: repeated blocks found before tracing, traced once, outputs equal eager."""

from __future__ import annotations

import copy
import io
import logging
import subprocess
import sys

import pytest
import torch

import regionc
from regionc.blocks.detect import find_repeated_blocks
from regionc.models.llama import DecoderLayer, LlamaConfig, build_demo_model
from regionc.tracing.compile import CompiledForward, nested_regions_reuse_traces
from tests.helpers import NO_CACHE, assert_close, block_compiles
from tests.models import (
    HybridLayers,
    ManyWidths,
    NoRepeats,
    PerLayerEnum,
    PerLayerFunction,
    PerLayerLocalValue,
    TinyDiT,
)

needs_region_reuse = pytest.mark.skipif(not nested_regions_reuse_traces(),
                                        reason=f"torch {torch.__version__} re-traces nested compile regions")


def tokens(batch=2, seq=8):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(0))


def test_find_repeated_blocks_takes_outermost_containers_of_one_class():
    (layers,) = find_repeated_blocks(build_demo_model(LlamaConfig.tiny(n_layers=3)))
    assert layers.path == "layers" and layers.cls is DecoderLayer and len(layers.instances) == 3
    dit = {g.path: len(g.instances) for g in find_repeated_blocks(TinyDiT())}
    assert dit == {"double_blocks": 2, "single_blocks": 3}  # the MLP Sequentials inside blocks do not count
    assert find_repeated_blocks(NoRepeats()) == []


@pytest.mark.parametrize("block_tracing", ["auto", "per_block"])
def test_blocks_inside_layers_of_several_classes_take_the_full_trace(block_tracing, caplog):
    """A hybrid model's only repeated blocks are small adapters inside some of its layers (its empty lists
    of dropouts are no blocks at all). Per-block frames would compile the adapters and run every layer
    eagerly around them; the model takes the full trace instead, with one warning, and no layer runs eagerly."""
    import sys

    model = HybridLayers().eval()
    assert [stack.path for stack in find_repeated_blocks(model)] == ["layers.1.adapters", "layers.3.adapters"]
    x = torch.randn(2, 16)
    with torch.no_grad():
        expected = model(x)
    compiled = regionc.compile(model, options={"cache": False, "block_tracing": block_tracing})  # not strict
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        assert_close(compiled(x), expected)
        layer_code, ran = {type(layer).forward.__code__ for layer in model.layers}, []
        sys.setprofile(lambda frame, event, arg: ran.append(1) if event == "call" and frame.f_code in layer_code else None)
        try:
            assert_close(compiled(x), expected)
        finally:
            sys.setprofile(None)
    assert not ran  # compiled code runs Dynamo's bytecode, not the layers' forwards
    if block_tracing == "per_block" or not nested_regions_reuse_traces():
        assert "block_tracing=per_block cannot be used" in caplog.text
        assert "are parts of the layers of layers, which are of several classes, and hold 19% of" in caplog.text


@needs_region_reuse
def test_nested_region_traces_one_block_and_matches_eager(caplog):
    model = build_demo_model(LlamaConfig.tiny(n_layers=4))
    x = tokens()
    expected = model(x)
    with caplog.at_level(logging.INFO, logger="regionc"):
        compiled = regionc.compile(model, options={**NO_CACHE, "block_tracing": "nested_region"})
        with torch.no_grad():
            assert_close(compiled(x), expected)
    report = regionc.last_report()
    assert report.inlined_regions == 4  # Dynamo emitted one region call per layer, traced once
    assert block_compiles(report) == 1 and report.count("reused", "block") == 3
    assert "trace" in report.phases
    assert any("block_tracing=nested_region" in r.getMessage() for r in caplog.records)
    # only these instances changed class; the user's class keeps its forward
    assert all(isinstance(layer, DecoderLayer) and type(layer) is not DecoderLayer for layer in model.layers)
    assert DecoderLayer.forward is DecoderLayer.__dict__["forward"]
    assert not hasattr(DecoderLayer.forward, "__marked_compile_region_fn__")
    assert_close(build_demo_model(LlamaConfig.tiny(n_layers=4))(x), expected)


def test_per_block_compiles_the_block_frame_once_and_matches_eager():
    model = build_demo_model(LlamaConfig.tiny(n_layers=4))
    x = tokens()
    expected = model(x)
    before = len(regionc.reports())
    compiled = regionc.compile(model, options={**NO_CACHE, "block_tracing": "per_block"})
    assert compiled is model
    with torch.no_grad():
        assert_close(compiled(x), expected)
        assert_close(compiled(x), expected)
    assert len(regionc.reports()) - before == 1  # one Dynamo frame, one backend call, for all four blocks


def _copied(model: torch.nn.Module, how: str) -> torch.nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.parametrize("block_tracing", [pytest.param("nested_region", marks=needs_region_reuse), "per_block", "full"])
def test_a_copy_of_a_compiled_model_computes_with_its_own_weights(block_tracing, cache, how, device, tmp_path):
    """A copy of a compiled model (an EMA copy, a reference kept before fine-tuning, ``torch.save`` of the
    whole model) takes none of the original's compiled code, which runs the original's modules (on CUDA,
    CUDA graphs over them): its first call compiles it for its own (its forward was None: "'NoneType'
    object is not callable")."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3), device=device)
    options = {**NO_CACHE, "block_tracing": block_tracing, **({"cache": True, "cache_dir": str(tmp_path)}
                                                              if cache == "on" else {})}
    x = tokens().to(device)
    with torch.no_grad():
        expected = model(x)
        compiled = regionc.compile(model, options=options)
        assert_close(compiled(x), expected)
        twin = _copied(compiled, how)
        for parameter in twin.parameters():
            parameter.mul_(0.5)
        reference = build_demo_model(LlamaConfig.tiny(n_layers=3), device=device)
        reference.load_state_dict(twin.state_dict())
        hidden = torch.randn(2, 8, reference.cfg.dim, device=device)
        tables = reference.rope_tables(torch.arange(8, device=device).expand(2, 8), torch.float32)
        assert_close(twin.layers[1](hidden, *tables), reference.layers[1](hidden, *tables))  # before its first call
        for _ in range(3):  # on CUDA: warm-up, capture, replay
            assert_close(twin(x), reference(x))
        assert_close(twin.layers[1](hidden, *tables), reference.layers[1](hidden, *tables))
        assert_close(compiled(x), expected)  # the original keeps its own
    assert twin.forward.strategy == compiled.forward.strategy == block_tracing


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("block_tracing", [pytest.param("nested_region", marks=needs_region_reuse), "per_block"])
def test_a_copy_of_one_compiled_block_computes_with_its_own_weights(block_tracing, how, tmp_path):
    """A copy of one block of a compiled model (``copy.deepcopy`` to grow or prune a stack, ``torch.save``)
    runs eagerly, on its own weights: its forward was None under per-block frames."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    compiled = regionc.compile(model, options={**NO_CACHE, "block_tracing": block_tracing, "cache": True,
                                               "cache_dir": str(tmp_path)})
    x = tokens()
    hidden, tables = torch.randn(2, 8, model.cfg.dim), model.rope_tables(torch.arange(8).expand(2, 8), torch.float32)
    with torch.no_grad():
        compiled(x)
        block = _copied(model.layers[1], how)
        for parameter in block.parameters():
            parameter.mul_(0.5)
        reference = DecoderLayer(model.cfg)
        reference.load_state_dict(block.state_dict())
        assert_close(block(hidden, *tables), reference(hidden, *tables))


@needs_region_reuse
def test_a_model_saved_whole_loads_in_a_new_process(tmp_path):
    """``torch.save`` of a whole model compiled with nested regions names its blocks' nested-region class, which
    a new process has not made: loading it raised ``AttributeError: Can't get attribute 'region_of_...'``. The
    class's name spells the block class it stands for, and loading makes it; the loaded model equals eager."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    regionc.compile(model, options={**NO_CACHE, "block_tracing": "nested_region", "cache": True,
                                    "cache_dir": str(tmp_path / "cache")})
    x = tokens()
    with torch.no_grad():
        expected = model(x)
    torch.save({"model": model, "x": x, "expected": expected}, tmp_path / "model.pt")
    code = ("import sys, torch\n"
            "saved = torch.load(sys.argv[1], weights_only=False)\n"
            "with torch.no_grad():\n"
            "    error = (saved['model'](saved['x']) - saved['expected']).abs().max().item()\n"
            "print(type(saved['model'].layers[0]).__name__, error)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    name, error = run.stdout.split()[-2:]
    assert name == type(model.layers[0]).__name__ and float(error) <= 1e-5


@pytest.mark.parametrize("block_tracing", [pytest.param("nested_region", marks=needs_region_reuse), "per_block", "full"])
def test_compiling_a_compiled_model_again(block_tracing, caplog, tmp_path):
    """``regionc.compile`` on a model it compiled (a notebook cell run again): with the same options the model
    is kept as it is, nothing compiles again; with others it is compiled anew from its own forward. Before,
    the new forward wrapped the old one, and per-block tracing refused blocks carrying its own forwards."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    options = {**NO_CACHE, "block_tracing": block_tracing, "cache": True, "cache_dir": str(tmp_path)}
    x = tokens()
    with torch.no_grad():
        expected = model(x)
        regionc.compile(model, options=options)
        model(x)
        first, before = model.forward, len(regionc.reports())
        with caplog.at_level(logging.INFO, logger="regionc"):
            assert regionc.compile(model, options=dict(options)) is model
        assert model.forward is first and "compiled already" in caplog.text
        assert_close(model(x), expected)
        assert len(regionc.reports()) == before
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="regionc"):
            regionc.compile(model, options={**options, "trace_cache": False})
            assert_close(model(x), expected)
        assert model.forward is not first and "compiling it anew" in caplog.text
        assert model.forward.original == type(model).forward.__get__(model)  # the model's own, not the old wrapper
        assert model.forward.strategy == block_tracing and not model.forward.fallbacks


def test_the_full_trace_says_once_what_traces_one_block(monkeypatch, caplog):
    import regionc.logs

    monkeypatch.setattr(regionc.logs, "_logged", set())
    x = tokens()
    message = "Dynamo traced every repeated block (layers×3)"
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        per_block = regionc.compile(build_demo_model(LlamaConfig.tiny(n_layers=3)),
                                    options={**NO_CACHE, "block_tracing": "per_block"})
        per_block(x)
        assert message not in caplog.text  # the block was traced once
        model = build_demo_model(LlamaConfig.tiny(n_layers=3))
        assert_close(torch.compile(model, backend="regionc", options=NO_CACHE)(x), model(x))
        torch._dynamo.reset()
        torch.compile(build_demo_model(LlamaConfig.tiny(n_layers=3)), backend="regionc", options=NO_CACHE)(x)
    assert caplog.text.count(message) == 1 and "regionc.compile(model) traces one block" in caplog.text


def test_auto_and_models_without_repeats(caplog):
    model = NoRepeats()
    x = torch.randn(2, 32)
    with caplog.at_level(logging.INFO, logger="regionc"):
        compiled = regionc.compile(model, options=NO_CACHE)
        assert_close(compiled(x), model(x))
    assert any("block_tracing=full" in r.getMessage() for r in caplog.records)


def test_bad_block_tracing_option_is_named():
    with pytest.raises(regionc.RegioncConfigError, match="'block_tracing' must be one of auto, nested_region"):
        regionc.compile(NoRepeats(), options={"block_tracing": "magic"})


def test_a_modules_forward_compiles_the_module_and_anything_else_is_refused():
    """Hugging Face's recipe compiles ``model.forward``: that compiles the module and hands back its new
    forward; a function or another method has no blocks to find and is refused by name, and so is
    ``torch.compile``'s wrapper of a model."""
    model = build_demo_model(LlamaConfig.tiny(n_layers=3))
    x = tokens()
    expected = model(x)
    before = len(regionc.reports())
    model.forward = regionc.compile(model.forward, options=NO_CACHE)
    with torch.no_grad():
        assert_close(model(x), expected)
    assert isinstance(model.forward, CompiledForward)
    assert regionc.reports()[before:]  # compiled through the backend, not run eagerly
    for bad in (lambda x: x, model.state_dict, 3):
        with pytest.raises(TypeError, match="regionc.compile takes an nn.Module .or its forward., got"):
            regionc.compile(bad)
    with pytest.raises(TypeError, match="not torch.compile's wrapper of it; pass the model .LlamaDecoder, the "
                                        "wrapper's _orig_mod."):  # it fell back twice, then raised NotImplementedError
        regionc.compile(torch.compile(build_demo_model(LlamaConfig.tiny(n_layers=3))))


class SlicingBlock(torch.nn.Module):
    """Returns two slices of one tensor and a third output: outputs that alias each other, which torch's
    nested regions refuse unless the region clones them."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x).relu()
        return y[:, :4], y[:, 4:], x * 2


class SlicingStack(torch.nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.blocks = torch.nn.ModuleList(SlicingBlock() for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            a, b, same = block(x)
            x = torch.cat([b, a], dim=1) + same
        return x


@needs_region_reuse
def test_blocks_returning_views_of_one_tensor_keep_nested_regions():
    model = SlicingStack()
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = model(x)
        compiled = regionc.compile(model, options={**NO_CACHE, "block_tracing": "nested_region"})
        assert_close(compiled(x), expected)
        assert_close(compiled(x), expected)
    assert compiled.forward.strategy == "nested_region" and compiled.forward.fallbacks == []
    report, = compiled.forward.reports
    assert block_compiles(report) == 1 and report.count("reused", "block") == 2


class PassingBlock(torch.nn.Module):
    """Hands back an input it was given, as T5's blocks hand back their ``position_bias``: an output that
    is an input, which torch's nested regions refuse unless the region copies it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, bias):
        return self.lin(x).relu() + bias, bias


class PassingStack(torch.nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(8))
        self.blocks = torch.nn.ModuleList(PassingBlock() for _ in range(depth))

    def forward(self, x):
        bias = self.bias * 2
        for block in self.blocks:
            x, bias = block(x, bias)
        return x


@needs_region_reuse
def test_blocks_handing_back_an_input_keep_nested_regions_and_compile_once():
    """The region copies the input it hands back; once the regions are copied into the graph the copy
    goes, so the last block (whose copy nothing reads) does not compile apart from the others, and the
    gradients, which flow through the handed-back input, equal eager's."""
    model = PassingStack()
    x = torch.randn(2, 8, requires_grad=True)  # every block's input requires grad, the first's too
    expected = model(x)
    expected.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = regionc.compile(model, options={**NO_CACHE, "strict": True, "block_tracing": "nested_region"})
    actual = compiled(x)
    assert_close(actual, expected)
    actual.sum().backward()
    for mine, theirs in zip(model.parameters(), grads):
        assert_close(mine.grad, theirs)
    assert compiled.forward.strategy == "nested_region" and compiled.forward.fallbacks == []
    report, = compiled.forward.reports
    assert block_compiles(report) == 1 and report.count("reused", "block") == 2


class AliasingBlock(torch.nn.Module):
    """Takes two slices of one tensor: torch's nested regions refuse such a block."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, a, b):
        return torch.cat([self.lin(a), b], dim=1).relu()


class AliasingStack(torch.nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.blocks = torch.nn.ModuleList(AliasingBlock() for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x[:, 4:], x[:, :4])
        return x


@needs_region_reuse
def test_a_block_nested_regions_refuse_falls_back_to_per_block(caplog):
    model = AliasingStack()
    x = torch.randn(2, 8)
    expected = model(x)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        compiled = regionc.compile(model, options={**NO_CACHE, "strict": False, "block_tracing": "nested_region"})
        with torch.no_grad():
            assert_close(compiled(x), expected)
            assert_close(compiled(x), expected)
    assert compiled.forward.strategy == "per_block" and len(compiled.forward.fallbacks) == 1
    assert all(type(block) is AliasingBlock for block in model.blocks)  # the region class was taken back
    failed = [r.getMessage() for r in caplog.records if "block_tracing=nested_region failed for AliasingStack" in r.getMessage()]
    assert len(failed) == 1 and "aliasing" in failed[0], failed  # the cause, not only Dynamo's "Got graph break/error:"


@needs_region_reuse
def test_a_block_class_in_many_shapes_keeps_nested_regions():
    """Ten widths of one block class are ten traces of its region, past torch's default of eight."""
    model, x = ManyWidths(), torch.randn(2, 8)
    expected = model(x)
    compiled = regionc.compile(model, options={**NO_CACHE, "strict": True, "block_tracing": "nested_region"})
    with torch.no_grad():
        assert_close(compiled(x), expected)
    assert compiled.forward.strategy == "nested_region"
    assert regionc.last_report().stacks == {"blocks": 10}


class IndexedBlock(torch.nn.Module):
    """Reads its own layer index, as HF attention does to pick its cache layer: Dynamo specializes on it."""

    def __init__(self, index):
        super().__init__()
        self.index = index
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, table):
        return self.lin(x).relu() + table[self.index]


class IndexedStack(torch.nn.Module):
    def __init__(self, depth=4):
        super().__init__()
        self.blocks = torch.nn.ModuleList(IndexedBlock(i) for i in range(depth))

    def forward(self, x, table):
        for block in self.blocks:
            x = block(x, table)
        return x


@pytest.mark.parametrize("cache", ["off", "on"])
def test_per_block_frames_compiled_per_layer_give_way_to_the_full_trace(caplog, cache, tmp_path):
    model = IndexedStack(depth=8)
    x, table = torch.randn(2, 8), torch.randn(8, 8)
    expected = model(x, table)
    options = NO_CACHE if cache == "off" else {"cache_dir": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger="regionc"):
        compiled = regionc.compile(model, options={**options, "strict": False, "block_tracing": "per_block"})
        with torch.no_grad():
            assert_close(compiled(x, table), expected)  # four layers compiled, then the other four eagerly
            assert compiled.forward.strategy == "full"
            assert_close(compiled(x, table), expected)  # one graph over the model from now on
    assert all(block._compiled_call_impl is None and "forward" not in block.__dict__ for block in model.blocks)
    message = "regionc: block_tracing=per_block failed for IndexedStack (its block frames were compiled "
    counts = [int(r.getMessage()[len(message):].split()[0]) for r in caplog.records if r.getMessage().startswith(message)]
    assert len(counts) == 1 and counts[0] < 8, counts  # not one compile per layer
    assert sum("the rest of the first call runs its blocks eagerly" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("use_cache", [True, False])
def test_per_block_gives_way_at_once_where_blocks_are_handed_a_cache(use_cache):
    """HF decoder layers pick their cache layer by ``layer_idx``: handed a cache, per-block frames would
    compile per layer, so the first call takes the full trace before any block frame is compiled."""
    pytest.importorskip("transformers")
    from tests.zoo.architectures import ARCHITECTURES

    torch.manual_seed(0)
    model, inputs = ARCHITECTURES["llama"].build(4)
    inputs = {**inputs, "use_cache": use_cache}
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        first = len(regionc.reports())
        compiled = regionc.compile(model, options={**NO_CACHE, "strict": False, "block_tracing": "per_block"})
        assert_close(compiled(**inputs).last_hidden_state, expected)
    reports = regionc.reports()[first:]
    if use_cache:
        assert compiled.forward.strategy == "full" and "DynamicCache" in compiled.forward.fallbacks[0]
        assert [r.stacks for r in reports] == [{"layers": 4}]  # the full trace's graph, no block frame's
    else:
        assert compiled.forward.strategy == "per_block" and compiled.forward.fallbacks == []
        assert all(r.stacks == {} for r in reports) and len(reports) >= 1


@needs_region_reuse
@pytest.mark.parametrize("name, use_cache, block_tracing, strategy, reasons", [
    ("llama", False, "auto", "per_block", ["route hub kernels through `kernels`"]),
    ("phi3", True, "auto", "full", ["use_cache is on", "handed a DynamicCache"]),
    ("llama", False, "nested_region", "nested_region", []),
])
def test_auto_gives_way_where_dynamo_would_trace_each_nested_region(name, use_cache, block_tracing, strategy, reasons):
    """Dynamo reuses a nested region's trace only for blocks without Python side effects whose inputs are
    tensors: HF Llama's attention routes hub kernels through ``kernels`` (a side effect on every call), and
    a decoder with ``use_cache`` on updates the cache it makes. There, under ``auto``, the first call takes
    per-block frames, which trace the block once (and give way to the full trace where the blocks are
    handed the cache), instead of one region trace per layer; an explicit ``nested_region`` stays."""
    pytest.importorskip("kernels")
    from tests.zoo.architectures import ARCHITECTURES

    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name].build(4)
    inputs = {**inputs, "use_cache": use_cache}
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        first = len(regionc.reports())
        compiled = regionc.compile(model, options={**NO_CACHE, "strict": False, "block_tracing": block_tracing})
        assert_close(compiled(**inputs).last_hidden_state, expected)
    assert compiled.forward.strategy == strategy
    assert len(compiled.forward.fallbacks) == len(reasons)
    assert all(why in fallback for why, fallback in zip(reasons, compiled.forward.fallbacks)), compiled.forward.fallbacks
    if strategy == "per_block":  # one frame per block layout (first, middle, last), not one per layer
        assert 1 <= len(regionc.reports()) - first <= 3


def test_guards_skipped_from_the_first_call_never_run_one_layer_as_another(tmp_path):
    """``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` set before the first call (torch asks for it
    after a warm-up; a server may set it first). A block frame traced for layer 0 is its class's only trace
    when layer 1 comes: skipping its guards there ran every layer as layer 0. The guards stay on until a
    call of the whole model has run, so the per-layer traces are told apart and give way to the full trace."""
    model = IndexedStack(depth=8)
    x, table = torch.randn(2, 8), torch.randn(8, 8)
    expected = model(x, table)
    options = {"cache_dir": str(tmp_path), "strict": False, "block_tracing": "per_block"}
    compiled = regionc.compile(model, options=options)
    with torch.no_grad(), torch.compiler.set_stance(skip_guard_eval_unsafe=True):
        for _ in range(3):
            assert_close(compiled(x, table), expected)
    assert compiled.forward.strategy == "full"


@pytest.mark.parametrize("entry", ["regionc.compile", "backend"])
def test_inductor_freezing_on_gives_eager_outputs(entry, caplog, tmp_path, monkeypatch):
    """Under Inductor's global ``freezing`` (a CPU inference recipe) Dynamo puts each layer's weights in
    the graph as constants, checked by identity: a block's trace then holds one layer's weights and must
    not run for the others. Outputs equal eager's, the cache on; the pieces compile without freezing."""
    monkeypatch.setattr(regionc.logs, "_logged", set())  # the freezing line is said once per process
    model = build_demo_model(LlamaConfig.tiny(n_layers=3)).eval()
    x = tokens()
    with torch.no_grad():
        expected = model(x)
        with torch._inductor.config.patch(freezing=True), caplog.at_level(logging.INFO, logger="regionc"):
            options = {"cache_dir": str(tmp_path)}
            compiled = (regionc.compile(model, options=options) if entry == "regionc.compile"
                        else torch.compile(model, backend="regionc", options=options))
            assert_close(compiled(x), expected)
            assert_close(compiled(x), expected)
    assert any("Inductor's freezing is on" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("block_tracing", ["auto", "per_block"])
@pytest.mark.parametrize("model_cls", [PerLayerFunction, PerLayerEnum, PerLayerLocalValue])
def test_layers_holding_other_functions_or_local_values_run_their_own(model_cls, block_tracing, tmp_path):
    """A layer that holds another function or enum member as an attribute (``self.act``), or another value
    in a module of a function-local class, runs its own, not the traced layer's: Dynamo checks the first
    two by identity and the module's values below a guard torch cannot save, and a saved trace keeps none."""
    model = model_cls()
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x)
        compiled = regionc.compile(model, options={"cache_dir": str(tmp_path), "block_tracing": block_tracing})
        assert_close(compiled(x), expected)
        assert_close(compiled(x), expected)
