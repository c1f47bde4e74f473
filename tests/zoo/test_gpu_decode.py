"""Every decoder of the zoo decoding on a CUDA ``StaticCache`` through both entry points, at widths
where regionc's decode passes have their Triton kernels (heads of 64 and 128, eight rows): outputs
and caches equal eager's at every step, in fp32 (every decoder; MoE routing in bf16 may pick another
expert on a near tie) and within bf16 noise in bf16. This is where the passes meet what the CPU
tests cannot show them — biases, fused projections, q/k norms, MoE routing, multipliers,
softcapping, sliding windows — with the GPU kernels and CUDA graphs of a real run; and where HF's
``generate`` runs its default ``DynamicCache`` under CUDA graphs."""

from __future__ import annotations

import pytest
import torch

import regionc
from regionc.tracing.compile import CompiledForward
from tests.zoo.architectures import ARCHITECTURES
from tests.zoo.test_zoo import ENTRY_POINTS

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

#: the zoo's decoders; the width every one is widened to (its own features kept): 8 query heads of 64
#: over 2 kv heads, unless the entry names others
DECODERS = {
    "llama": {}, "mistral": {}, "mixtral": {"intermediate_size": 512}, "qwen2": {},
    "qwen3": {"head_dim": 128}, "qwen3_moe": {"moe_intermediate_size": 256}, "gemma": {}, "gemma2": {},
    "gemma3_text": {}, "phi3": {}, "gpt2": {"num_key_value_heads": None}, "gpt_neox": {"num_key_value_heads": None},
    "falcon": {"num_kv_heads": 2, "num_key_value_heads": None, "head_dim": None}, "olmo2": {}, "starcoder2": {}, "granite": {},
}
WIDTH = {"hidden_size": 512, "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2,
         "head_dim": 64, "vocab_size": 256}
BATCH, PROMPT, STEPS, CACHE = 8, 6, 4, 256
#: relative error of a step's hidden states (and of the cache) against eager's, two layers
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def widened(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """The zoo's two-layer model of ``name`` at ``WIDTH`` (a config attribute the model lacks is left out,
    ``None`` in ``DECODERS`` drops a width key), on the GPU."""
    base, _ = ARCHITECTURES[name].build(2)
    config = base.config
    for key, value in {**WIDTH, **DECODERS[name]}.items():
        if value is not None and (hasattr(config, key) or key in getattr(config, "attribute_map", {})):
            setattr(config, key, value)
    torch.manual_seed(0)
    return type(base)(config).eval().to("cuda", dtype)


def decode(model, fn):
    """Prefill eagerly, then ``STEPS`` one-token steps through ``fn``: each step's hidden states and the cache."""
    from transformers import StaticCache

    generator = torch.Generator(device="cuda").manual_seed(1)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (BATCH, PROMPT), device="cuda", generator=generator)
    cache = StaticCache(config=model.config, max_cache_len=CACHE)
    steps = []
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        for i in range(STEPS):
            token = torch.randint(0, vocab, (BATCH, 1), device="cuda", generator=generator)
            out = fn(input_ids=token, past_key_values=cache, use_cache=True,
                     cache_position=torch.tensor([PROMPT + i], device="cuda"))
            steps.append(out.last_hidden_state.float().clone())
    return steps, cache


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name, dtype", [(name, torch.float32) for name in DECODERS]
                         + [(name, torch.bfloat16) for name in ("llama", "qwen3", "gemma2", "phi3")]
                         + [(name, torch.float16) for name in ("llama", "qwen3")])
def test_static_cache_decode_equals_eager(name, dtype, entry):
    model = widened(name, dtype)
    expected, expected_cache = decode(model, model)
    before = len(regionc.reports())
    compiled = ENTRY_POINTS[entry](model)
    actual, actual_cache = decode(model, compiled)
    errors = [relative_error(a, e) for a, e in zip(actual, expected)]
    forward = compiled.forward
    reports = forward.reports if isinstance(forward, CompiledForward) else regionc.reports()[before:]
    swaps = {}
    for report in reports:
        for op, count in report.pass_matches.items():
            swaps[op] = swaps.get(op, 0) + count
    print(f"{name} {dtype} {entry}: errors {[f'{e:.1e}' for e in errors]} swaps {swaps}")
    assert max(errors) <= TOLERANCE[dtype], (errors, swaps)
    for mine, theirs in zip(actual_cache.layers, expected_cache.layers):
        for a, e in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
            assert (a is None) == (e is None)  # layers past the model's depth are never written
            assert a is None or relative_error(a, e) <= TOLERANCE[dtype], (name, swaps)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name", ["llama", "gemma2"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_gives_eager_tokens(name, cache, entry):
    """HF ``generate`` as its docs run it, greedy: its default ``DynamicCache`` (a tensor assigned anew
    each step) with the forward compiled, and a static cache (Gemma 2's sliding layers count tokens in a
    Python int) with generate's own compile config naming regionc, or the model under ``regionc.compile``,
    with generate's own compile off and then on (with a static cache on CUDA, ``generate`` compiles the
    model's call with its default Inductor config: around ``regionc.compile``, an opaque call)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    torch.manual_seed(0)
    base = widened(name, torch.float32)
    model = getattr(__import__("transformers"), type(base).__name__.replace("Model", "ForCausalLM"))(base.config)
    model = model.eval().to("cuda")
    prompt = torch.randint(0, model.config.vocab_size, (2, PROMPT), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(2))
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    if cache == "static":
        settings["cache_implementation"] = "static"
    with torch.no_grad():
        expected = model.generate(prompt, generation_config=GenerationConfig(**settings, disable_compile=True))
        if entry == "regionc.compile":
            regionc.compile(model)
            config = GenerationConfig(**settings)
            off = model.generate(prompt, generation_config=GenerationConfig(**settings, disable_compile=True))
            assert torch.equal(off, expected), (off, expected)
        elif cache == "static":
            config = GenerationConfig(**settings, compile_config=CompileConfig(backend="regionc", mode=None))
        else:
            model.forward = torch.compile(model.forward, backend="regionc")
            config = GenerationConfig(**settings)
        actual = model.generate(prompt, generation_config=config)
    assert torch.equal(actual, expected), (actual, expected)


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_beam_search_on_a_static_cache_gives_eager_tokens(entry):
    """Beam search on a static cache: between steps ``generate`` reorders the cache by beam
    (``reorder_cache`` assigns every layer new key and value tensors), outside the model. A CUDA graph
    captured over the old tensors must not be replayed over them: the tokens are eager's (through
    ``regionc.compile`` the forward's graph was once replayed over the old cache, and the beams went wrong)."""
    from transformers import GenerationConfig

    torch.manual_seed(0)
    base = widened("llama", torch.float32)
    model = getattr(__import__("transformers"), "LlamaForCausalLM")(base.config).eval().to("cuda")
    prompt = torch.randint(0, model.config.vocab_size, (2, PROMPT), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(3))
    settings = dict(max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False, pad_token_id=0,
                    cache_implementation="static")
    config = GenerationConfig(**settings, disable_compile=True)
    with torch.no_grad():
        expected = model.generate(prompt, generation_config=config)
        before = len(regionc.reports())
        if entry == "regionc.compile":
            regionc.compile(model)
        else:
            model.forward = torch.compile(model.forward, backend="regionc")
        actual = model.generate(prompt, generation_config=config)
    assert len(regionc.reports()) > before  # the steps ran through regionc
    assert torch.equal(actual, expected), (actual, expected)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_regionc_compile_decode_replays_one_graph_over_the_forward(name):
    """HF decoders trace their whole forward under ``regionc.compile`` on torch 2.11 (the per-block
    trace specializes on ``layer_idx``) and nested regions on >= 2.12: either way a decode step
    replays one graph over the forward, without Dynamo's guards, and still equals eager."""
    from regionc.cudagraph.module import ModuleGraphs

    model = widened(name, torch.bfloat16)
    expected, _ = decode(model, model)
    compiled = regionc.compile(model)
    actual, _ = decode(model, compiled)
    run = compiled.forward.run
    assert isinstance(run, ModuleGraphs) and run.runner.capturable
    assert run.forward.traces.ordinary is None  # the trace was saved: a restart loads it
    assert run.report.cudagraphs["graphs"] == 1  # warm-up, capture, then STEPS - 2 replays
    assert max(relative_error(a, e) for a, e in zip(actual, expected)) <= TOLERANCE[torch.bfloat16]


def _causal_lm_on_cuda(name: str, seed: int = 0):
    """The zoo's widened two-layer ``name`` as its ``*ForCausalLM``, fp32, on the GPU."""
    base = widened(name, torch.float32)
    torch.manual_seed(seed)
    model = getattr(__import__("transformers"), type(base).__name__.replace("Model", "ForCausalLM"))(base.config)
    return model.eval().to("cuda")


def _compiled(model, entry: str):
    """``model`` with its forward through ``entry``: ``regionc.compile`` in place, or the backend."""
    if entry == "regionc.compile":
        return regionc.compile(model)
    model.forward = torch.compile(model.forward, backend="regionc")
    return model


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_on_a_left_padded_batch_gives_eager_tokens(cache, entry):
    """``generate`` on a batch of prompts of different lengths, padded on the left, with their attention
    mask: the decode attention's kernel reads the mask (each row starts at its own key) inside the
    step's CUDA graph, and every row's tokens are eager's."""
    import copy

    from transformers import GenerationConfig

    model = _causal_lm_on_cuda("llama")
    generator = torch.Generator(device="cuda").manual_seed(4)
    prompt = torch.randint(1, model.config.vocab_size, (BATCH, 12), device="cuda", generator=generator)
    mask = torch.ones_like(prompt)
    for row in range(BATCH):  # row r is r tokens shorter
        prompt[row, :row], mask[row, :row] = 0, 0
    settings = GenerationConfig(max_new_tokens=8, do_sample=False, pad_token_id=0, disable_compile=True,
                                cache_implementation="static" if cache == "static" else None)
    compiled = _compiled(copy.deepcopy(model), entry)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=mask, generation_config=settings)
        before = len(regionc.reports())
        actual = compiled.generate(prompt, attention_mask=mask, generation_config=settings)
    assert len(regionc.reports()) > before
    assert torch.equal(actual, expected), (actual, expected)


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
def test_assisted_generation_gives_eager_tokens(entry):
    """Assisted generation on the GPU: a draft model proposes tokens, the model checks several in one
    call, and ``generate`` crops the cache back to the accepted ones, so the tokens a call checks and the
    cache length change from call to call. The tokens are eager's."""
    model = _causal_lm_on_cuda("llama")
    draft = _causal_lm_on_cuda("llama", seed=5)
    prompt = torch.randint(1, model.config.vocab_size, (1, 7), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(6))
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, assistant_model=draft, pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(prompt, **settings)
        actual = _compiled(model, entry).generate(prompt, **settings)
    assert torch.equal(actual, expected), (actual, expected)


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_whisper_generate_gives_eager_tokens(cache, entry):
    """Whisper's ``generate``, as HF's compile recipe for it runs (a static cache): an encoder-decoder cache,
    whose cross-attention half is written on the first decode step and then only read (a Python flag per
    layer says so), under the step's CUDA graphs. The tokens are eager's, twice in a row."""
    import copy

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=256, num_mel_bins=16, encoder_layers=2, decoder_layers=2, d_model=256,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                           decoder_ffn_dim=512, max_source_positions=32, max_target_positions=64,
                           decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1,
                           suppress_tokens=None, begin_suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval().to("cuda")
    features = torch.randn(BATCH, 16, 64, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7))
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, disable_compile=True,
                    cache_implementation="static" if cache == "static" else None)
    compiled = _compiled(copy.deepcopy(model), entry)
    with torch.no_grad():
        expected = model.generate(features, **settings)
        before = len(regionc.reports())
        first, second = (compiled.generate(features, **settings) for _ in range(2))
    assert len(regionc.reports()) > before
    assert torch.equal(first, expected) and torch.equal(second, expected), (first, second, expected)
