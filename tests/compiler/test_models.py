"""End to end on the CPU: real model families compiled with backend="regionc" match eager,
and each unique block is compiled once however deep the model is."""

from __future__ import annotations

import logging

import pytest
import torch

import regionc
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import TENSORIFIES_PRODUCTS, assert_close, block_compiles, compile_regionc, lora_scalings
from tests.models import (
    ChannelsLastBetweenBlocks,
    CheckpointedStack,
    ConcatenatedModulations,
    GraphBreakStack,
    GrowingStages,
    NoRepeats,
    PatchEmbeddedStack,
    PerLayerConstant,
    PerLayerCounters,
    ScaledBetweenLayers,
    ScaledPerCall,
    SlicedModulations,
    SlicedScratch,
    StagedLayers,
    TinyDiT,
    VmapLayers,
)


@pytest.mark.parametrize("n_layers", [2, 6])
def test_demo_decoder_compiles_one_block_whatever_the_depth(n_layers):
    model = build_demo_model(LlamaConfig.tiny(n_layers))
    tokens = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        out = compile_regionc(model)(tokens)
        assert_close(out, model(tokens))
    report = regionc.last_report()
    assert report.stacks == {"layers": n_layers}
    assert block_compiles(report) == 1
    assert report.count("reused", "block") == n_layers - 1
    assert report.fallbacks == []
    assert all(p.seconds > 0 for p in report.pieces if p.source == "compiled")


def _hf_model(family: str):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaModel(config)
    else:
        config = transformers.Qwen3Config(**common, head_dim=16)
        model = transformers.Qwen3Model(config)
    torch.manual_seed(0)
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_hugging_face_decoders_match_eager(family):
    model = _hf_model(family)
    tokens = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        expected = model(input_ids=tokens, use_cache=False).last_hidden_state
        out = compile_regionc(model)(input_ids=tokens, use_cache=False).last_hidden_state
    assert_close(out, expected)
    report = regionc.last_report()
    assert report.stacks == {"layers": 3}
    assert block_compiles(report) == 1


def test_diffusion_transformer_compiles_one_block_per_kind():
    torch.manual_seed(0)
    model = TinyDiT().eval()
    img, txt, t = torch.randn(2, 12, 16), torch.randn(2, 5, 32), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        out = compile_regionc(model)(img, txt, t)
        assert_close(out, model(img, txt, t))
    report = regionc.last_report()
    assert report.stacks == {"double_blocks": 2, "single_blocks": 3}
    assert block_compiles(report) == 2
    assert report.unique_block_fingerprints == 2


def test_a_block_reading_a_channels_last_view_keeps_its_traced_layout():
    """The second block reads a channels-last view where the first reads a dense tensor. A dense copy of
    that input would make the block return a dense tensor, where the next piece's code was compiled for
    (and asserts) the traced channels-last one: the block compiles apart instead, and the output is eager's."""
    torch.manual_seed(0)
    model, x = ChannelsLastBetweenBlocks(), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))
    report = regionc.last_report()
    assert block_compiles(report) == 2 and len(report.reuse_breakers) == 1, report.summary()


def test_a_first_block_reading_a_patch_embeddings_view_shares_the_compile():
    """The first block reads a transposed view where its siblings read dense tensors: the call copies it
    dense, after a trial run on fake inputs shows the block still returns the traced layouts. Inside a
    backend the tracing context holds a fake mode of its own; the trial must run on the inputs' mode."""
    torch.manual_seed(0)
    model, x, scale = PatchEmbeddedStack().eval(), torch.randn(2, 8, 8, 8), torch.randn(1, 1, 16)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x, scale), model(x, scale))
    report = regionc.last_report()
    assert report.stacks == {"blocks": 3}
    assert block_compiles(report) == 1 and report.count("reused", "block") == 2, report.summary()


def test_blocks_reading_slices_of_one_tensor_at_other_offsets_share_the_compile():
    """Each block reads its own slice of one modulation tensor (Chroma): the same strides at another
    offset, which regionc's key tells apart. The calls copy the slices dense, and one compile serves all."""
    torch.manual_seed(0)
    model, x, t = SlicedModulations().eval(), torch.randn(2, 5, 16), torch.randn(2, 16)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x, t), model(x, t))
    report = regionc.last_report()
    assert report.stacks == {"blocks": 3}
    assert block_compiles(report) == 1 and report.count("reused", "block") == 2, report.summary()


@pytest.mark.parametrize("depth", [2, 5])
def test_glue_that_only_moves_data_runs_as_traced_whatever_the_depth(depth):
    """The code between blocks slices and concatenates with per-layer constants: compiled, it was a piece
    per layer; run as traced, the compiles do not grow with depth."""
    torch.manual_seed(0)
    model, x, t = ConcatenatedModulations(depth=depth).eval(), torch.randn(2, 5, 16), torch.randn(2, 16)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x, t), model(x, t))
    report = regionc.last_report()
    assert report.stacks == {"blocks": depth}
    assert report.count("traced", "glue") == depth - 1, report.summary()  # between blocks
    assert report.count("compiled", "glue") == 1 and block_compiles(report) == 1, report.summary()
    assert report.fallbacks == [] and f"({depth - 1} run as traced)" in report.summary()


def test_blocks_writing_slices_of_one_tensor_write_the_tensor():
    """Each block writes its own slice of one scratch tensor in place, which the forward reads after: a
    dense copy of a slice would take the write instead, so such an input is passed as it is."""
    torch.manual_seed(0)
    model, x = SlicedScratch().eval(), torch.randn(4, 16)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))


def test_static_kv_cache_decoder_over_decode_steps():
    cfg = LlamaConfig.tiny(3)
    eager, compiled_model = build_demo_model(cfg), build_demo_model(cfg)
    for m in (eager, compiled_model):
        m.setup_kv_cache(max_batch=2, dtype=torch.float32)
    compiled = compile_regionc(compiled_model)
    prompt = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        pos = torch.arange(6)
        assert_close(compiled(prompt, pos), eager(prompt, pos))
        token = prompt[:, -1:]
        for step in range(6, 10):
            pos = torch.tensor([step])
            out, expected = compiled(token, pos), eager(token, pos)
            assert_close(out, expected)
            token = expected[:, -1:].argmax(-1)
    for layer_c, layer_e in zip(compiled_model.layers, eager.layers):
        assert_close(layer_c.attn.kv_cache.k, layer_e.attn.kv_cache.k)
        assert_close(layer_c.attn.kv_cache.v, layer_e.attn.kv_cache.v)
    for report in regionc.reports()[-2:]:  # prefill graph, then the decode graph
        assert block_compiles(report) == 1, report.summary()


def test_model_without_repeated_blocks_is_one_piece():
    torch.manual_seed(0)
    model, x = NoRepeats(), torch.randn(4, 32)
    with torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))
    report = regionc.last_report()
    assert report.stacks == {}
    assert [(p.kind, p.source) for p in report.pieces] == [("glue", "compiled")]


def test_graph_break_gives_two_graphs_each_split():
    torch.manual_seed(0)
    model, x = GraphBreakStack(), torch.randn(3, 32)
    before = len(regionc.reports())
    with torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))
    new = regionc.reports()[before:]
    assert len(new) == 2
    for report in new:
        assert report.stacks == {"layers": 2}
        assert block_compiles(report) == 1


def test_per_layer_constant_is_named_and_output_still_correct(caplog):
    torch.manual_seed(0)
    model, x = PerLayerConstant(), torch.randn(3, 32)
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))
    report = regionc.last_report()
    assert block_compiles(report) == 3  # each layer differs: no reuse possible
    assert len(report.reuse_breakers) == 2
    assert "0.5" in report.reuse_breakers[0] and "1.0" in report.reuse_breakers[0]
    assert [r.levelno for r in caplog.records if "layers.1 cannot reuse layers.0" in r.getMessage()] == [logging.WARNING]


def test_blocks_of_growing_width_compile_apart_without_a_warning(caplog):
    """A block of one class and another width differs in its inputs, not in a constant the user could move
    out of the block: what keeps it apart is logged (and reported), never warned about."""
    model, x = GrowingStages(), torch.randn(3, 8)
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        assert_close(compile_regionc(model)(x), model(x))
    report = regionc.last_report()
    assert block_compiles(report) == 2 and len(report.reuse_breakers) == 1, report.summary()
    assert report.stacks == {"stages": 3}
    apart = [r for r in caplog.records if "stages.1 cannot reuse stages.0" in r.getMessage()]
    assert [r.levelno for r in apart] == [logging.INFO], [r.getMessage() for r in apart]



@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_layers_inside_stages_of_growing_width_are_the_repeated_blocks(entry, tmp_path):
    """Each stage is wider than the last, so no two stages are alike; the layers inside a stage are: one
    compile serves all of a stage's layers but its first, which projects its input."""
    torch.manual_seed(0)
    model, x = StagedLayers(), torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x)
        before = len(regionc.reports())
        compiled = compile_regionc(model) if entry == "backend" else \
            regionc.compile(model, options={"cache_dir": str(tmp_path)})
        assert_close(compiled(x), expected)
    if entry == "regionc.compile":
        assert {s.path for s in compiled.forward.stacks} == {"stages.0.layers", "stages.1.layers"}
    reports = regionc.reports()[before:]
    if entry == "backend" or compiled.forward.strategy != "per_block":  # one graph: its blocks
        (report,) = reports
        assert report.stacks == {"stages.0.layers": 3, "stages.1.layers": 3}, report.summary()
        assert block_compiles(report) == 4, report.summary()


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("over_stack", [False, True])
def test_a_functorch_transform_stays_in_one_piece(over_stack, entry, caplog, tmp_path):
    """``torch.vmap`` traced inline enters and leaves a level of functorch's process-wide stack: split
    between two pieces, each piece's compile fails or runs at the wrong level. A transform inside each
    block stays in its block (one compile, reused); one over the whole stack runs in the glue."""
    torch.manual_seed(0)
    model, x = VmapLayers(over_stack=over_stack), torch.randn(4, 8)
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        expected = model(x)
        compiled = compile_regionc(model) if entry == "backend" else \
            regionc.compile(model, options={"cache_dir": str(tmp_path)})
        assert_close(compiled(x), expected)
    report = regionc.last_report()
    eager = [r.getMessage() for r in caplog.records if r.name == "regionc" and "eager" in r.getMessage()]
    assert not report.fallbacks and not eager, (report.fallbacks, eager)
    if entry == "backend":  # one graph (regionc.compile on torch 2.11 compiles each block frame on its own)
        assert block_compiles(report) == (0 if over_stack else 1), report.summary()


def test_a_float_read_in_the_glue_after_every_layer_compiles_once_for_every_value():
    """A float attribute set between calls becomes a graph input that Dynamo reads once; each piece that
    uses it reads it itself (a piece cannot return a float), so every piece compiles, and one compile
    serves every later value."""
    torch.manual_seed(0)
    model, x = ScaledBetweenLayers(), torch.randn(2, 8)
    compiled = compile_regionc(model, options={"strict": True})
    with torch.no_grad():
        for scale in (1.0, 2.0, 3.0, 0.5):
            model.scale = scale
            expected = model.forward(x)
            before = len(regionc.reports())
            assert_close(compiled(x), expected)
            if scale == 3.0:
                assert len(regionc.reports()) == before  # the float is an input: no new compile
        assert not regionc.last_report().fallbacks


def test_a_float_written_back_per_call_compiles_once_for_every_value():
    """A float passed per call rescales a float attribute of every layer, which the forward sets again on
    exit (diffusers' LoRA ``scale``): Dynamo writes the attribute back from a ``torch.scalar_tensor`` the
    graph returns, computed from the float. The piece that returns it reads the float for nothing else;
    computed as tensor math, a new value compiles nothing, and the attributes written back are eager's.
    Torch 2.11's tensorify pass specializes a float read only within a product (``scale * scaling``), so
    there every value compiles, as under plain ``torch.compile``."""
    import copy

    torch.manual_seed(0)
    model = ScaledPerCall()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="regionc", options={"cache": False, "strict": True})
    counts = []
    with torch.no_grad():
        for scale in (0.5, 0.8, 0.3, 0.9):
            x = torch.randn(2, 8)
            before = len(regionc.reports())
            assert_close(compiled(x, scale), reference(x, scale))
            counts.append(len(regionc.reports()) - before)
            assert lora_scalings(model) == lora_scalings(reference)
    if TENSORIFIES_PRODUCTS:  # the second value made the float an input; no value after compiles
        assert counts[2:] == [0, 0], counts


def test_a_float_written_back_from_a_size_stays_eager_correct(caplog):
    """A written-back float computed from a symbolic size too has no tensor form here: it is left as
    Dynamo traced it, with a log line, and every value written back is still eager's."""
    import copy
    import logging

    torch.manual_seed(0)
    model = ScaledPerCall(by_rows=True)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="regionc", dynamic=True, options={"cache": False})
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        for scale, rows in ((0.5, 2), (0.8, 3), (0.3, 4)):
            x = torch.randn(rows, 8)
            assert_close(compiled(x, scale), reference(x, scale))
            assert lora_scalings(model) == lora_scalings(reference)
    assert any("stay Python floats" in r.getMessage() for r in caplog.records)


def test_dynamic_sizes_share_one_compile():
    model = build_demo_model(LlamaConfig.tiny(3))
    compiled = compile_regionc(model)
    before = len(regionc.reports())
    with torch.no_grad():
        for seq in (8, 11, 5, 16):
            tokens = torch.randint(0, 128, (2, seq))
            torch._dynamo.mark_dynamic(tokens, 1)
            assert_close(compiled(tokens), model(tokens))
    new = regionc.reports()[before:]
    assert len(new) == 1  # one symbolic graph served every size
    assert block_compiles(new[0]) == 1


def test_a_size_symbol_per_layer_shares_one_compile():
    """Each layer reads an int of its own that Dynamo makes a symbol (HF's sliding-window cache counters),
    layer 0's doubling as the position: one block compiles, and every layer, layer 0 included, runs it."""
    torch.manual_seed(0)
    model = PerLayerCounters(n_layers=4)
    compiled = torch.compile(model, backend="regionc", dynamic=True, options={"cache": False})
    before = len(regionc.reports())
    with torch.no_grad():
        for counters in ([5, 6, 7, 8], [9, 3, 12, 1]):
            x = torch.randn(3, 16)
            assert_close(compiled(x, counters), model(x, counters))
    new = regionc.reports()[before:]
    assert len(new) == 1
    assert block_compiles(new[0]) == 1 and new[0].count("reused", "block") == 3
    assert new[0].reuse_breakers == []


def test_a_float_that_changes_keeps_one_block_compile():
    """A float every layer reads (a LoRA scale set with ``set_adapters``) changes between calls: Dynamo
    traces it again as a tensor input read by ``.item()``, and Inductor's tensorify pass turns the float
    math into tensor math, so later values compile nothing. Compiled a piece at a time, the block still
    compiles once for every layer (not eagerly, not once per layer as constants)."""
    torch.manual_seed(0)
    model = PerLayerConstant(n_layers=4)
    compiled = torch.compile(model, backend="regionc", options={"cache": False})
    before = len(regionc.reports())
    with torch.no_grad():
        for scale in (0.5, 0.3, 0.7, 0.9):
            for layer in model.layers:
                layer.scale = scale
            x = torch.randn(3, 32)
            assert_close(compiled(x), model(x))
    new = regionc.reports()[before:]
    assert len(new) == 2, [r.summary() for r in new]  # the first value; then the float is an input
    assert block_compiles(new[1]) == 1 and new[1].count("reused", "block") == 3, new[1].summary()


def test_training_gradients_match_eager():
    model = build_demo_model(LlamaConfig.tiny(2)).train()
    tokens = torch.randint(0, 128, (2, 8))
    compile_regionc(model)(tokens).square().mean().backward()
    compiled_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model(tokens).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(compiled_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert block_compiles(regionc.last_report()) == 1


def test_activation_checkpointed_layers_compile_one_block_and_match_eager_gradients():
    """Gradient checkpointing (HF's ``gradient_checkpointing_enable``) gives each layer's body its own
    subgraph object in Dynamo's graph: the layers still compile once, and the gradients are eager's."""
    torch.manual_seed(0)
    model = CheckpointedStack(scales=(1.0, 1.0, 1.0, 1.0))
    x = torch.randn(4, 32, requires_grad=True)
    compile_regionc(model)(x).square().mean().backward()
    compiled_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    report = regionc.last_report()
    model.zero_grad()
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(compiled_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert block_compiles(report) == 1 and report.count("reused", "block") == 3, report.summary()


def test_piece_that_fails_to_compile_runs_eagerly(monkeypatch, caplog):
    from regionc.compiler import graph

    real = graph.compile_piece

    def fail_on_blocks(gm, inputs, patches, **kwargs):
        if any("linear" in str(n.target) for n in gm.graph.nodes) and len(list(gm.graph.nodes)) > 20:
            raise RuntimeError("injected lowering failure")
        return real(gm, inputs, patches, **kwargs)

    monkeypatch.setattr(graph, "compile_piece", fail_on_blocks)
    model = build_demo_model(LlamaConfig.tiny(2))
    tokens = torch.randint(0, 128, (2, 8))
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        out = torch.compile(model, backend="regionc", options={"cache": False})(tokens)
        assert_close(out, model(tokens))
    report = regionc.last_report()
    assert [p.source for p in report.pieces if p.kind == "block"] == ["eager", "eager"]
    assert "falls back to eager: RuntimeError: injected lowering failure" in caplog.text
    assert report.count("compiled", "glue") == 2


@pytest.mark.parametrize("user, expected", [(None, False), ({"triton.autotune_pointwise": True}, True)])
def test_pieces_compile_with_regionc_defaults_under_user_config(monkeypatch, user, expected):
    """Pointwise kernels get one config (no first-call benchmarking) unless the user's
    ``inductor_config`` asks for Inductor's autotuning back."""
    from regionc.compiler import graph

    seen = []
    real = graph.compile_piece

    def record(gm, inputs, patches, **kwargs):
        seen.append(patches.get("triton.autotune_pointwise"))
        return real(gm, inputs, patches, **kwargs)

    monkeypatch.setattr(graph, "compile_piece", record)
    model = build_demo_model(LlamaConfig.tiny(2))
    tokens = torch.randint(0, 128, (2, 8))
    options = {"cache": False, **({"inductor_config": user} if user else {})}
    with torch.no_grad():
        assert_close(torch.compile(model, backend="regionc", options=options)(tokens), model(tokens))
    assert seen and set(seen) == {expected}
