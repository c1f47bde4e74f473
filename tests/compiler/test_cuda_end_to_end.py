"""On a CUDA device: regionc with piecewise CUDA graphs and fusion passes matches eager.

These run on the GPU machine only (scripts/gpu-check tests); CI skips them.
"""

from __future__ import annotations

import pytest
import torch

import regionc
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import block_compiles

pytestmark = pytest.mark.gpu

#: head_dim 64, so the attention kernel (head dims 64/128) applies.
CFG = LlamaConfig(vocab_size=512, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq=128)


def graph_stats() -> dict:
    """The CUDA-graph stats of the latest report that has any (under regionc.compile's per-block
    tracing the graphs belong to the model's forward, whose report precedes its blocks')."""
    return next(r.cudagraphs for r in reversed(regionc.reports()) if r.cudagraphs)


def relative_error(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kernel_choice", ["auto", "always"])
def test_graphs_and_passes_match_eager_over_replays_and_batch_sizes(kernel_choice):
    model = build_demo_model(CFG, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(model, backend="regionc", options={
        "cache": False, "strict": True, "cudagraphs": True, "kernel_choice": kernel_choice})
    with torch.no_grad():
        for _ in range(3):
            for batch in (1, 3, 8):
                tokens = torch.randint(0, CFG.vocab_size, (batch, 16), device="cuda")
                out = compiled(tokens)
                assert relative_error(out, model(tokens)) < 2e-2
    report = regionc.last_report()
    assert block_compiles(report) == 1
    assert report.cudagraphs.get("graphs", 0) > 0, report.cudagraphs
    if kernel_choice == "always":
        assert {"fused_add_rms_norm", "rope", "attention"} <= set(report.pass_matches), report.pass_matches


@pytest.mark.parametrize("mode", ["full", "piecewise"])
def test_glue_run_as_traced_is_captured_with_the_pieces(mode):
    """Chroma's pattern: the code between blocks only slices and concatenates (run as traced, not compiled);
    under CUDA graphs it replays with the compiled blocks, over new inputs each step."""
    from tests.models import ConcatenatedModulations

    torch.manual_seed(0)
    model = ConcatenatedModulations(dim=64, depth=4).cuda().eval()
    compiled = torch.compile(model, backend="regionc", options={
        "cache": False, "strict": True, "cudagraphs": True, "cudagraph_mode": mode})
    with torch.no_grad():
        for _ in range(4):  # warm-up, capture, replays
            x, t = torch.randn(2, 5, 64, device="cuda"), torch.randn(2, 64, device="cuda")
            torch.testing.assert_close(compiled(x, t), model(x, t), atol=1e-4, rtol=1e-4)
    report = regionc.last_report()
    assert report.count("traced", "glue") == 3 and block_compiles(report) == 1, report.summary()
    assert report.cudagraphs.get("graphs", 0) > 0, report.cudagraphs


def test_outputs_are_not_overwritten_by_the_next_replay():
    model = build_demo_model(CFG, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(model, backend="regionc", options={"cache": False, "cudagraphs": True})
    a, b = (torch.randint(0, CFG.vocab_size, (2, 8), device="cuda") for _ in range(2))
    with torch.no_grad():
        outs = [compiled(a) for _ in range(3)]  # warm-up, capture, replay
        kept = outs[-1].clone()
        compiled(b)
        torch.testing.assert_close(outs[-1], kept, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["full", "piecewise"])
def test_static_kv_cache_decoder_with_graphs_over_32_steps(mode):
    cfg = LlamaConfig(**{**CFG.__dict__, "max_seq": 64})
    eager, graphed = (build_demo_model(cfg, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for m in (eager, graphed):
        m.setup_kv_cache(max_batch=2, dtype=torch.bfloat16)
    compiled = torch.compile(graphed, backend="regionc", options={
        "cache": False, "cudagraphs": True, "cudagraph_mode": mode})
    prompt = torch.randint(0, cfg.vocab_size, (2, 8), device="cuda")
    with torch.no_grad():
        pos = torch.arange(8, device="cuda")
        compiled(prompt, pos), eager(prompt, pos)
        token = prompt[:, -1:]
        for step in range(8, 40):
            pos = torch.tensor([step], device="cuda")
            out, expected = compiled(token, pos), eager(token, pos)
            assert relative_error(out, expected) < 2e-2, step
            token = expected[:, -1].argmax(-1, keepdim=True)
    for layer_g, layer_e in zip(graphed.layers, eager.layers):
        assert relative_error(layer_g.attn.kv_cache.k, layer_e.attn.kv_cache.k) < 2e-2
    assert regionc.last_report().cudagraphs.get("graphs", 0) > 0


@pytest.mark.parametrize("mode", ["full", "piecewise"])
def test_dynamic_batch_is_padded_to_capture_sizes(mode):
    model = build_demo_model(CFG, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(model, backend="regionc", options={
        "cache": False, "cudagraphs": True, "capture_sizes": (2, 4, 8), "cudagraph_mode": mode})
    with torch.no_grad():
        for batch in (3, 3, 3, 4, 2, 2, 2, 7, 5, 8, 6, 3):
            tokens = torch.randint(0, CFG.vocab_size, (batch, 1), device="cuda")
            torch._dynamo.mark_dynamic(tokens, 0)
            assert relative_error(compiled(tokens), model(tokens)) < 2e-2, batch
    stats = regionc.last_report().cudagraphs
    assert stats["padding"].startswith("batch size"), stats
    assert stats["mode"] == mode and stats["private_pool_graphs"] == 0
    for sizes in stats["captured"].values():
        assert sizes == {"N=4": 1, "N=2": 1, "N=8": 1}, stats["captured"]


def test_regionc_compile_with_graphs_matches_eager():
    """regionc.compile's choice for this torch (nested regions: one program with graphs; block
    frames: the model's whole forward under one graph per shape) over replays and KV-cache steps."""
    from regionc.tracing.compile import nested_regions_reuse_traces

    cfg = LlamaConfig(**{**CFG.__dict__, "max_seq": 64})
    model, reference = (build_demo_model(cfg, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    reference.load_state_dict(model.state_dict())
    for m in (model, reference):
        m.setup_kv_cache(max_batch=2, dtype=torch.bfloat16)
    compiled = regionc.compile(model, options={"cache": False, "cudagraphs": True})  # may compile model in place
    with torch.no_grad():
        prefill = torch.arange(8, device="cuda")
        for _ in range(4):
            tokens = torch.randint(0, cfg.vocab_size, (2, 8), device="cuda")
            assert relative_error(compiled(tokens, prefill), reference(tokens, prefill)) < 2e-2
        token = tokens[:, -1:]
        for step in range(8, 24):
            pos = torch.tensor([step], device="cuda")
            out, expected = compiled(token, pos), reference(token, pos)
            assert relative_error(out, expected) < 2e-2, step
            token = expected[:, -1].argmax(-1, keepdim=True)
    stats = graph_stats()
    assert stats["graphs"] > 0 and not stats["fallbacks"], stats
    if not nested_regions_reuse_traces():
        assert stats["mode"] == "module forward" and stats["graphs"] == 2, stats  # prefill shape, decode shape


def test_saved_trace_restores_graphs_and_padding(tmp_path):
    """A second regionc.compile start loads the saved trace (no Dynamo) and rebuilds the CUDA-graph plan."""
    from regionc.tracing.saved import traces_can_be_saved

    if not traces_can_be_saved():
        pytest.skip(f"torch {torch.__version__} cannot save Dynamo traces")
    options = {"cache_dir": str(tmp_path), "strict": True, "cudagraphs": True, "capture_sizes": (2, 4, 8)}
    sources = []
    for _ in range(2):  # two starts on one cache
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model, reference = (build_demo_model(CFG, dtype=torch.bfloat16, device="cuda") for _ in range(2))
        compiled = regionc.compile(model, options=options, dynamic=True)
        with torch.no_grad():
            for batch in (3, 3, 3, 5, 2, 8):
                tokens = torch.randint(0, CFG.vocab_size, (batch, 1), device="cuda")
                assert relative_error(compiled(tokens), reference(tokens)) < 2e-2, batch
        sources.append((regionc.last_report().trace_source, torch._dynamo.utils.counters["stats"]["unique_graphs"]))
        stats = graph_stats()
        assert stats["graphs"] > 0 and not stats["fallbacks"], stats
    assert sources[0][0].startswith("traced, saved as ") and sources[1] == (sources[1][0], 0)
    assert sources[1][0].startswith("saved trace "), sources


def test_background_compile_runs_eagerly_then_switches_to_compiled_pieces_and_graphs():
    """background_compile with CUDA graphs: no capture while a piece compiles; after the switch the
    program warms up, captures and replays, and every output matches eager."""
    model = build_demo_model(CFG, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(model, backend="regionc", options={
        "cache": False, "strict": True, "cudagraphs": True, "background_compile": True})
    tokens = torch.randint(0, CFG.vocab_size, (2, 16), device="cuda")
    with torch.no_grad():
        expected = model(tokens)
        assert relative_error(compiled(tokens), expected) < 2e-2  # eager, or compiled if the job was quick
        assert regionc.wait_compiled(timeout=600)
        outs = [compiled(tokens) for _ in range(4)]  # switch + warm-up, capture, replays
    assert all(relative_error(out, expected) < 2e-2 for out in outs)
    report = regionc.last_report()
    assert block_compiles(report) == 1
    assert report.cudagraphs.get("graphs", 0) > 0, report.cudagraphs


def test_sliding_window_decode_matches_eager_and_names_why_graphs_stop(caplog):
    """HF Gemma 2 (sliding-window layers between full ones) decoding on a CUDA StaticCache: each sliding
    layer's step counter is an int Dynamo traces as a symbol, which a CUDA graph would bake in. Outputs
    equal eager at every step, each graph compiles one block per attention type, and the graphs are
    turned off with one warning naming the changing arguments."""
    import logging

    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4)
    torch.manual_seed(0)
    model = transformers.Gemma2Model(config).eval().to("cuda")
    prompt = torch.randint(0, 128, (2, 6), device="cuda")

    def decode(fn):
        cache = transformers.StaticCache(config=config, max_cache_len=32)
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
            return [fn(input_ids=torch.full((2, 1), step % 128, device="cuda"), past_key_values=cache, use_cache=True,
                       cache_position=torch.tensor([6 + step], device="cuda")).last_hidden_state.clone()
                    for step in range(16)]

    expected = decode(model)
    before = len(regionc.reports())
    with caplog.at_level(logging.WARNING, logger="regionc"):
        actual = decode(torch.compile(model, backend="regionc", options={"cache": False}))
    assert max(relative_error(a, e) for a, e in zip(actual, expected)) < 1e-4
    for report in regionc.reports()[before:]:
        assert len({p.fingerprint for p in report.pieces if p.kind == "block"}) == 2
    assert any("change from call to call" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_a_lora_scale_set_between_calls_is_used_under_cuda_graphs(entry):
    """diffusers' ``set_adapters`` sets a LoRA scale, a Python float every attention layer reads, between
    calls; Dynamo traces it as a tensor made on the host on every call. Each call equals eager with the scale
    of that call: no graph is replayed with the scale it was captured with."""
    pytest.importorskip("peft")
    pytest.importorskip("diffusers")
    from peft import LoraConfig

    from tests.zoo.architectures import ARCHITECTURES

    torch.manual_seed(0)
    model, kwargs = ARCHITECTURES["wan"].build(3)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                 init_lora_weights=False), adapter_name="style")
    model = model.to("cuda").eval()
    kwargs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    compiled = torch.compile(model, backend="regionc") if entry == "backend" else regionc.compile(model)
    with torch.no_grad():
        for scale in (1.0, 0.3, 0.3, 0.3, 0.7, 0.7, 0.7, 0.5):  # repeats: warm-ups, captures, replays
            model.set_adapters(["style"], weights=[scale])
            expected = model(**kwargs)[0]
            assert relative_error(compiled(**kwargs)[0], expected) <= 1e-4, scale


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_wan_pipeline_with_guidance_and_a_multistep_scheduler_equals_eager(entry):
    """A diffusers Wan pipeline as its docs run it: classifier-free guidance calls the transformer twice a
    step with inputs of one shape (the second call's graph replay must not overwrite the first call's
    output), and the multistep UniPC scheduler keeps earlier steps' outputs. The latents equal eager's."""
    pytest.importorskip("diffusers")
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from tests.zoo.architectures import ARCHITECTURES

    torch.manual_seed(0)
    transformer, _ = ARCHITECTURES["wan"].build(3)
    transformer = transformer.to("cuda").eval()
    embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(4)).to("cuda")
    negative = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(5)).to("cuda")

    def run(model):
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                           scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                             flow_shift=3.0))
        with torch.no_grad():
            return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=64, width=64, num_frames=5,
                        num_inference_steps=4, guidance_scale=5.0, output_type="latent",
                        generator=torch.Generator(device="cuda").manual_seed(3)).frames

    expected = run(transformer)
    before = len(regionc.reports())
    actual = run(torch.compile(transformer, backend="regionc") if entry == "backend" else regionc.compile(transformer))
    assert len(regionc.reports()) > before
    assert relative_error(actual, expected) <= 1e-4


@pytest.mark.parametrize("move", ["data", "offload"])
@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_weights_moved_after_capture_are_read_where_they_are_now(entry, move):
    """Weights whose storage moves after the graphs were captured, the parameters staying the same objects:
    ``p.data = ...`` with new values (weights swapped by pointer), or a CPU-offload round trip with the
    weights changed on the CPU (diffusers' model offload moves a model to the CPU and back between
    pipeline calls). Every call equals eager with the weights as they are now: the graphs are captured
    anew over the new addresses (a replay read the old, freed storage)."""
    model, reference = (build_demo_model(CFG, device="cuda").eval() for _ in range(2))
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="regionc") if entry == "backend" else regionc.compile(model)
    tokens = torch.randint(0, CFG.vocab_size, (2, 16), device="cuda")
    with torch.no_grad():
        for round in range(3):  # the first round captures; each later one follows a move
            if round and move == "data":
                for p, q in zip(model.parameters(), reference.parameters()):
                    p.data, q.data = p.data * 0.9, q.data * 0.9
            elif round:
                model.to("cpu")
                held = [torch.empty_like(p, device="cuda") for p in model.parameters()]  # takes the freed blocks
                for p, q in zip(model.parameters(), reference.parameters()):
                    p.mul_(0.9), q.mul_(0.9)
                model.to("cuda")
                del held
            for _ in range(4):  # warm-up, capture, replays
                assert relative_error(compiled(tokens), reference(tokens)) < 1e-4, round
    assert graph_stats()["graphs"] > 0
