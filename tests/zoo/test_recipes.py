"""Hugging Face recipes as their docs run them, through regionc: StaticCache decode, ``generate`` with a
compile config, assisted generation, a diffusers pipeline, a PEFT LoRA adapter hot-swapped into a
compiled model, and LoRA fine-tuning."""

from __future__ import annotations

import pytest
import torch

import regionc
from regionc.tracing.compile import CompiledForward, nested_regions_reuse_traces
from tests.helpers import TENSORIFIES_PRODUCTS, lora_scalings
from tests.zoo.architectures import ARCHITECTURES
from tests.zoo.test_zoo import ENTRY_POINTS, relative_error

pytestmark = pytest.mark.slow


def _causal_lm(name: str, depth: int = 2):
    """The architecture's ``*ForCausalLM`` with the zoo's tiny config."""
    import transformers

    base, _ = ARCHITECTURES[name].build(depth)
    torch.manual_seed(0)
    cls = getattr(transformers, type(base).__name__.replace("Model", "ForCausalLM"))
    return cls(base.config).eval()


def _generates_eager_tokens_twice(model, entry: str, **settings) -> None:
    """``generate(**settings)`` on a copy of ``model`` compiled through ``entry`` (``regionc.compile``, or
    ``backend="regionc"`` set on the forward as HF's docs do it), twice in a row: eager's tokens, and the
    calls went through regionc."""
    import copy

    compiled = copy.deepcopy(model)
    if entry == "regionc.compile":
        regionc.compile(compiled)
    else:
        compiled.forward = torch.compile(compiled.forward, backend="regionc")
    with torch.no_grad():
        expected = model.generate(**settings)
        before = len(regionc.reports())
        assert torch.equal(compiled.generate(**settings), expected)
        assert len(regionc.reports()) > before
        assert torch.equal(compiled.generate(**settings), expected)


def _attention_kinds(config) -> int:
    """How many attention types (full, sliding) the model's layers have: its block pieces' distinct codes."""
    return len(set((getattr(config, "layer_types", None) or ["one"])[:config.num_hidden_layers]))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name", ["llama", "qwen3", "phi3", "gemma2", "gemma3_text"])
def test_static_cache_decode_matches_eager_outputs_and_cache(name, entry):
    """Prefill eagerly, then decode one token per step through regionc: logits and every layer's
    cached keys and values equal eager's (HF's StaticCache counts positions in place, per layer), and
    each graph compiles one block per attention type. Gemma's sliding-window layers keep a Python int
    each, which Dynamo makes a symbol per layer from the second step on: they still share one block."""
    from transformers import StaticCache

    model, _ = ARCHITECTURES[name].build(3)
    prompt = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))

    def decode(step_fn):
        cache = StaticCache(config=model.config, max_cache_len=16)
        outputs = []
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
            token = torch.ones(2, 1, dtype=torch.long)
            for i in range(4):
                out = step_fn(input_ids=token, past_key_values=cache, use_cache=True,
                              cache_position=torch.tensor([6 + i]))
                outputs.append(out.last_hidden_state.clone())
        return outputs, cache

    expected, expected_cache = decode(model)
    before = len(regionc.reports())
    compiled = ENTRY_POINTS[entry](model)
    actual, actual_cache = decode(compiled)
    for a, e in zip(actual, expected):
        assert relative_error(a, e) <= 1e-5
    for mine, theirs in zip(actual_cache.layers, expected_cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values, theirs.values, atol=1e-5, rtol=1e-5)
    reports = compiled.forward.reports if isinstance(compiled.forward, CompiledForward) else regionc.reports()[before:]
    kinds = _attention_kinds(model.config)
    for report in reports:
        blocks = [p for p in report.pieces if p.kind == "block"]
        assert blocks and len({p.fingerprint or p.key for p in blocks}) == kinds, report.reuse_breakers  # a loaded trace: keys


def test_static_cache_decode_with_guards_skipped_from_the_first_step_equals_eager(tmp_path):
    """A server that sets ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)`` before its first decode
    step: per-block frames (torch 2.11's default for ``regionc.compile``) specialize on HF's ``layer_idx``,
    and skipping the guards of a block's only trace ran every layer as layer 0, writing one cache layer."""
    import copy

    from transformers import StaticCache

    model, _ = ARCHITECTURES["llama"].build(4)
    prompt = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))

    def decode(step_fn, skip: bool):
        cache = StaticCache(config=model.config, max_cache_len=16)
        outputs = []
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, use_cache=True)  # an eager prefill, as servers do
            token = torch.ones(2, 1, dtype=torch.long)
            for i in range(4):
                with torch.compiler.set_stance(skip_guard_eval_unsafe=skip):
                    out = step_fn(input_ids=token, past_key_values=cache, use_cache=True,
                                  cache_position=torch.tensor([6 + i]))
                outputs.append(out.last_hidden_state.clone())
        return outputs, cache

    expected, expected_cache = decode(model, skip=False)
    compiled = regionc.compile(copy.deepcopy(model), options={"cache_dir": str(tmp_path), "block_tracing": "per_block"})
    actual, actual_cache = decode(compiled, skip=True)
    for a, e in zip(actual, expected):
        assert relative_error(a, e) <= 1e-5
    for mine, theirs in zip(actual_cache.layers, expected_cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
    assert compiled.forward.strategy == "full"  # the per-layer traces were told apart, then gave way


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2"])
def test_generate_with_a_regionc_compile_config_gives_eager_tokens(name):
    """HF ``generate`` with a static cache and a compile config (Gemma 2: sliding-window layers between
    full ones) gives eager's tokens, and its decode steps compile one block per attention type."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    model = _causal_lm(name)
    prompt = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    settings = dict(max_new_tokens=6, do_sample=False, cache_implementation="static")
    with torch.no_grad():
        expected = model.generate(prompt, generation_config=GenerationConfig(**settings))
        before = len(regionc.reports())
        compile_config = CompileConfig(backend="regionc", mode=None)
        compile_config._compile_all_devices = True  # generate compiles on accelerators only, unless told
        config = GenerationConfig(**settings, compile_config=compile_config, disable_compile=False)
        actual = model.generate(prompt, generation_config=config)
    assert torch.equal(actual, expected)
    reports = regionc.reports()[before:]
    assert reports  # the decode steps ran through regionc
    kinds = _attention_kinds(model.config)
    assert all(len({p.fingerprint for p in r.pieces if p.kind == "block"}) == kinds for r in reports)


def test_assisted_generation_under_regionc_compile_gives_eager_tokens_with_every_block_compiled(caplog):
    """Assisted generation (a draft model proposes tokens, the model checks them in one call): the
    number of tokens a call checks and the cache length vary, so Dynamo makes them symbols, each
    layer's cache length its own. A size guard one layer's compile added against another layer's
    cache length once stopped the third layer's compile (it ran eagerly, and the trace was not saved)."""
    import logging

    model = _causal_lm("llama", depth=3)
    torch.manual_seed(5)
    draft = type(model)(model.config).eval()
    prompt = torch.randint(1, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(6))
    settings = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, assistant_model=draft)
    with torch.no_grad():
        expected = model.generate(prompt, **settings)
        model.forward = regionc.compile(model.forward)
        with caplog.at_level(logging.WARNING, logger="regionc"):
            actual = model.generate(prompt, **settings)
    assert torch.equal(actual, expected)
    # torch 2.11's C++ code for the glue before the first layer does not build on a CPU (stock
    # torch.compile raises there); regionc runs that piece eagerly, and every layer compiled
    blocks_not_compiled = [m for r in caplog.records if "model.layers" in (m := r.getMessage())
                           and ("eager" in m or "not saved" in m)]
    assert not blocks_not_compiled


def test_generate_with_a_static_cache_under_regionc_compile_traces_once_and_gives_eager_tokens():
    """HF's compiled-generation recipe, ``generate(cache_implementation="static")`` on a ``regionc.compile``d
    model. The blocks are handed the cache, an input Dynamo cannot reuse a nested region's trace over
    (torch 2.13 traced the region once per layer: more than the full trace), and per-block frames would
    specialize per layer on HF's ``layer_idx``: the first call takes the full trace before tracing anything
    else. On torch 2.13 a second ``generate``, with its fresh cache, traces nothing. The tokens are
    eager's on both torch versions."""
    from regionc.tracing.compile import nested_regions_reuse_traces

    model = _causal_lm("llama", depth=3)
    prompt = torch.randint(1, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3))
    settings = dict(max_new_tokens=5, do_sample=False, cache_implementation="static")
    with torch.no_grad():
        expected = model.generate(prompt, **settings)
        regionc.compile(model)
        first = model.generate(prompt, **settings)
        traced = len(regionc.reports())
        second = model.generate(prompt, **settings)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert model.forward.strategy == "full", model.forward.fallbacks
    assert "handed a StaticCache" in model.forward.fallbacks[-1]
    if nested_regions_reuse_traces():
        assert len(regionc.reports()) == traced  # the second generate's fresh cache fits the traces held


def test_generate_compiling_the_call_of_a_regionc_compiled_model_leaves_it_to_regionc():
    """On CUDA, HF ``generate`` with a static cache compiles the model's call itself (its default
    ``CompileConfig``). Traced into, ``regionc.compile``'s own machinery broke that outer trace in many
    places and its nested region failed inside it, so the model fell back to per-block frames (torch 2.13)
    or gave up its saved trace (2.11). The model's call is opaque to an outer compile now: the outer
    backend captures none of its operations, regionc keeps its strategy, and the tokens are eager's."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    outer_graphs = []

    def outer(gm, example_inputs):
        outer_graphs.append(gm)
        return gm.forward

    model = _causal_lm("llama", depth=3)
    prompt = torch.randint(1, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3))
    settings = dict(max_new_tokens=5, do_sample=False, cache_implementation="static")
    compile_config = CompileConfig(backend=outer, mode=None)
    compile_config._compile_all_devices = True  # generate compiles on accelerators only, unless told
    with torch.no_grad():
        expected = model.generate(prompt, generation_config=GenerationConfig(**settings, disable_compile=True))
        regionc.compile(model)
        actual = model.generate(prompt, generation_config=GenerationConfig(**settings, compile_config=compile_config))
    assert torch.equal(actual, expected)
    captured = [node.target for gm in outer_graphs for node in gm.graph.nodes if node.op == "call_function"]
    assert not captured, captured
    assert all(traces.ordinary is None for traces in model.forward.trace_sets)  # every trace saved


def test_a_bad_call_after_good_ones_raises_eagers_error_and_keeps_the_traces():
    """A serving model gets a bad request after good ones (float ``input_ids``, a token past the
    vocabulary): each raises, the block tracing is kept (one such call switched a model from nested regions
    to per-block frames for good), and the next good call traces nothing. Under nested regions (GPT-2
    without a cache, torch 2.13) the call is run eagerly before any fallback, so the error is eager's; a
    strategy reached by fallbacks (torch 2.11's full trace) raises its compiled code's own error, as
    ``torch.compile``'s does."""
    import copy

    from regionc.tracing.compile import nested_regions_reuse_traces

    model, _ = ARCHITECTURES["gpt2"].build(3)
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(4))
    regionc.compile(model)
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
        strategy, fallbacks = model.forward.strategy, list(model.forward.fallbacks)
        assert strategy == "nested_region" or not nested_regions_reuse_traces(), fallbacks
        for bad in (tokens.float(), tokens + model.config.vocab_size):
            with pytest.raises(Exception) as eager_error:
                reference(input_ids=bad, use_cache=False)
            with pytest.raises(Exception) as error:
                model(input_ids=bad, use_cache=False)
            if strategy == "nested_region":
                assert (type(error.value), str(error.value)) == (type(eager_error.value), str(eager_error.value))
            assert (model.forward.strategy, model.forward.fallbacks) == (strategy, fallbacks)
        traced = len(regionc.reports())
        actual = model(input_ids=tokens, use_cache=False).last_hidden_state
    assert len(regionc.reports()) == traced
    assert relative_error(actual, reference(input_ids=tokens, use_cache=False).last_hidden_state) <= 1e-5


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_on_a_left_padded_batch_under_regionc_compile_gives_eager_tokens(cache):
    """``generate`` on a left-padded batch with its attention mask: ``regionc.compile``'s forward shows
    the model's own signature, so ``generate`` passes the mask and positions as it does uncompiled
    (behind a bare ``(*args, **kwargs)`` it dropped them, and the padded row's tokens changed)."""
    import copy
    import inspect

    from transformers import GenerationConfig

    model = _causal_lm("llama")
    prompt = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(prompt)
    prompt[1, :2], mask[1, :2] = 0, 0  # the second row is two tokens shorter, padded on the left
    settings = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0,
                                cache_implementation="static" if cache == "static" else None)
    compiled = copy.deepcopy(model)
    regionc.compile(compiled)
    assert inspect.signature(compiled.forward) == inspect.signature(model.forward)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=mask, generation_config=settings)
        actual = compiled.generate(prompt, attention_mask=mask, generation_config=settings)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_beam_search_under_regionc_compile_gives_eager_tokens(cache):
    """Beam search reorders the cache between steps (``reorder_cache``: every layer's keys and values
    gathered by beam) outside the model, so each step's compiled code must read the cache as it is now,
    not as a trace or an earlier step left it."""
    import copy

    model = _causal_lm("llama", depth=3)
    prompt = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(7))
    settings = dict(max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False, pad_token_id=0,
                    cache_implementation="static" if cache == "static" else None)
    compiled = copy.deepcopy(model)
    regionc.compile(compiled)
    with torch.no_grad():
        expected = model.generate(prompt, **settings)
        actual = compiled.generate(prompt, **settings)
    assert torch.equal(actual, expected)
    assert len({tuple(row) for row in expected[:, prompt.shape[1]:].tolist()}) > 1  # the beams differ


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "falcon", "gpt_neox"])
def test_static_cache_generate_on_a_left_padded_batch_gives_eager_tokens_across_decoders(name, entry):
    """Decoders unlike Llama inside a block (MoE routing in Mixtral and Qwen3-MoE, Falcon's fused QKV,
    GPT-NeoX's partial rotary): ``generate`` on a static cache over a left-padded batch, twice in a row,
    gives eager's tokens through ``regionc.compile`` and through ``backend="regionc"`` set on the forward
    as HF's docs do it."""
    model = _causal_lm(name, depth=3)
    prompt = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompt)
    prompt[1, :2], mask[1, :2] = 0, 0
    _generates_eager_tokens_twice(model, entry, inputs=prompt, attention_mask=mask, max_new_tokens=6,
                                  do_sample=False, pad_token_id=0, cache_implementation="static")


def _generation_case(name: str):
    """(model, generate's keyword arguments) for a model whose ``generate`` is not a decoder-only
    language model's, or whose cache is not a plain one."""
    import transformers

    torch.manual_seed(0)
    prompt = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    greedy = dict(max_new_tokens=6, do_sample=False)
    if name == "t5":
        config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return transformers.T5ForConditionalGeneration(config).eval(), dict(inputs=prompt, **greedy)
    if name == "bart":
        config = transformers.BartConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
                                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                         decoder_ffn_dim=64, max_position_embeddings=64)
        return transformers.BartForConditionalGeneration(config).eval(), dict(inputs=prompt, num_beams=1, **greedy)
    if name == "llava":
        vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, image_size=16, patch_size=8)
        text = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)
        config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=120,
                                          image_seq_length=4, vision_feature_select_strategy="default")
        ids = torch.cat([torch.full((1, 4), 120), prompt[:1]], 1)  # four image tokens, then text
        pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
        return transformers.LlavaForConditionalGeneration(config).eval(), dict(input_ids=ids, pixel_values=pixels,
                                                                                **greedy)
    config = transformers.MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    return transformers.MistralForCausalLM(config).eval(), dict(inputs=prompt, attention_mask=torch.ones_like(prompt),
                                                                pad_token_id=0, max_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("name", ["t5", "bart", "llava", "mistral_sliding_window"])
def test_generate_gives_eager_tokens_beyond_decoder_only_models(name, entry):
    """``generate`` as HF runs it for an encoder-decoder (T5, BART: the encoder once, then decoder steps
    over self- and cross-attention caches), a vision-language model (LLaVA: CLIP blocks, then Llama
    blocks, image features merged into the prompt), and Mistral with a 4-token sliding window on its
    default dynamic cache, decoding past the window: twice in a row, through ``regionc.compile`` and
    through ``backend="regionc"`` set on the forward, eager's tokens."""
    model, settings = _generation_case(name)
    _generates_eager_tokens_twice(model, entry, **settings)


@pytest.mark.parametrize("helper", ["diffusers", "accelerate"])
def test_per_block_compile_helpers_take_regionc_as_their_backend(helper):
    """The one-line per-block compiles users have, diffusers' ``compile_repeated_blocks`` and accelerate's
    ``compile_regions``, with ``backend="regionc"``: each block goes through regionc (its reports) and
    the output equals eager's."""
    if helper == "diffusers":
        model, inputs = ARCHITECTURES["flux"].build(2)
    else:
        model, inputs = ARCHITECTURES["llama"].build(3)
    with torch.no_grad():
        expected = model(**inputs)[0]
        before = len(regionc.reports())
        if helper == "diffusers":
            model.compile_repeated_blocks(backend="regionc")
            actual = model(**inputs)[0]
        else:
            from accelerate.utils import compile_regions

            actual = compile_regions(model, backend="regionc")(**inputs)[0]
    assert len(regionc.reports()) > before
    assert relative_error(actual, expected) <= 1e-5


@pytest.mark.parametrize(("cache", "tracing"), [(None, "auto"), ("first_block", "auto"), ("first_block", "per_block")])
def test_diffusers_pipeline_denoises_with_a_regionc_transformer(cache, tracing, caplog):
    """A Flux pipeline (prompt embeddings given, latents out) with its transformer compiled, bare or under
    diffusers' FirstBlockCache (hooks set as each block's forward; at this threshold every step after the
    first reuses the residual of the blocks after the first). Per-block frames would drop those forwards:
    the model takes the full trace instead, and says so."""
    import logging

    from diffusers import FirstBlockCacheConfig, FlowMatchEulerDiscreteScheduler, FluxPipeline

    def run(transform):
        torch.manual_seed(0)
        transformer, _ = ARCHITECTURES["flux"].build(2)
        if cache:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                            tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transform(transformer))
        pipe.vae_scale_factor = 1
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            return pipe(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(4)),
                        pooled_prompt_embeds=torch.randn(1, 32, generator=torch.Generator().manual_seed(5)),
                        height=8, width=8, num_inference_steps=3, guidance_scale=1.0, generator=generator,
                        output_type="latent").images

    expected = run(lambda t: t)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        actual = run(lambda t: regionc.compile(t, options={"block_tracing": tracing}))
    assert relative_error(actual, expected) <= 1e-5
    if cache:
        assert "block_tracing=per_block cannot be used" in caplog.text


#: torch 2.11's ``regionc.compile`` path (per-block tracing, which falls back to the full trace for HF
#: models: their blocks read ``layer_idx``) forced, so CI on a newer torch covers it too
LORA_ENTRIES = {**ENTRY_POINTS, "per_block": lambda model: regionc.compile(model, options={"block_tracing": "per_block"})}


@pytest.mark.parametrize("entry", LORA_ENTRIES)
def test_lora_adapter_hot_swapped_into_a_compiled_model(entry):
    """PEFT's hot-swap copies a new adapter's weights into the compiled model's LoRA tensors: the next
    call uses them without a recompile, and equals eager with that adapter."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.hotswap import hotswap_adapter_from_state_dict

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)

    def adapted(seed: int):  # the same base weights, another adapter
        torch.manual_seed(0)
        model, kwargs = ARCHITECTURES["llama"].build(3)
        torch.manual_seed(seed)
        return get_peft_model(model, config).eval(), kwargs

    first, kwargs = adapted(10)
    second, _ = adapted(11)
    with torch.no_grad():
        expected_first, expected_second = first(**kwargs), second(**kwargs)
        compiled = LORA_ENTRIES[entry](first)
        for _ in range(2):  # a per-block trace that falls back compiles the full trace on the second call
            assert relative_error(compiled(**kwargs), expected_first) <= 1e-5
        before = len(regionc.reports())
        weights = {name: value for name, value in second.state_dict().items() if "lora_" in name}
        hotswap_adapter_from_state_dict(first, weights, adapter_name="default", config=config)
        assert relative_error(compiled(**kwargs), expected_second) <= 1e-5
    assert len(regionc.reports()) == before  # nothing was compiled again


@pytest.mark.parametrize("entry", LORA_ENTRIES)
def test_lora_training_steps_equal_eager(entry):
    """PEFT LoRA fine-tuning as its docs run it (base weights frozen, a loss from ``labels``, an optimizer
    stepping the adapter's weights in place): every step's loss and adapter gradients equal eager's, so
    the compiled model reads the adapter's updated weights and gives gradients to them only."""
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(10)
    reference = get_peft_model(_causal_lm("llama", 3), config).train()
    model = copy.deepcopy(reference)
    compiled = LORA_ENTRIES[entry](model)
    tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (reference, model)]
    for _ in range(3):
        expected = reference(input_ids=tokens, labels=tokens).loss
        loss = compiled(input_ids=tokens, labels=tokens).loss
        assert relative_error(loss, expected) <= 1e-5
        expected.backward()
        loss.backward()
        theirs = dict(reference.named_parameters())
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in name for name, _ in trained)
        for name, mine in trained:
            assert relative_error(mine.grad, theirs[name].grad) <= 1e-4, name
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()


@pytest.mark.parametrize("entry", LORA_ENTRIES)
@pytest.mark.parametrize("change", ["lora_on_some_layers", "hook_on_one_layer"])
def test_layers_of_one_class_running_other_code_equal_eager(entry, change, caplog):
    """PEFT's LoRA on some layers only (``layers_to_transform``) and a forward hook on one layer's module
    make layers of one class run different code. ``regionc.compile`` traces each kind of block once (one
    log line says which layer differs and how), the backend compiles each distinct block from the graph:
    both compile two blocks, and the output equals eager's."""
    import logging

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, kwargs = ARCHITECTURES["llama"].build(3)
    if change == "lora_on_some_layers":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                            layers_pattern="layers", init_lora_weights=False)
        model = get_peft_model(model, config).eval()
        layers = model.base_model.model.layers
    else:
        model.layers[1].mlp.down_proj.register_forward_hook(lambda module, args, out: out * 2.0)
        layers = model.layers
    assert type(layers[0]) is type(layers[1])
    before = len(regionc.reports())
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="regionc"):
        expected = model(**kwargs)
        compiled = LORA_ENTRIES[entry](model)
        for _ in range(2):
            assert relative_error(compiled(**kwargs), expected) <= 1e-5
    if entry != "backend":
        assert any("hold 2 kinds of blocks, each traced once: block 1 runs other code than block 0" in r.getMessage()
                   for r in caplog.records)
        assert any("layers×3 (2 kinds)" in r.getMessage() for r in caplog.records)
    if getattr(compiled.forward, "strategy", None) != "per_block":  # per-block reports are per frame
        unique = sum(r.count("compiled", "block") + r.count("cache", "block") for r in regionc.reports()[before:])
        assert unique == 2  # compiled now, or by an earlier test of this session's cache


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_lora_scale_set_between_calls_equals_eager(entry):
    """diffusers' ``set_adapters`` sets a LoRA scale, a float in every attention layer, between calls:
    each call equals eager with that scale. Through the backend the block compiles once for all layers,
    and scales after the first change compile nothing (Dynamo makes the float an input)."""
    import copy

    from peft import LoraConfig

    torch.manual_seed(0)
    model, kwargs = ARCHITECTURES["wan"].build(3)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                 init_lora_weights=False), adapter_name="style")
    reference = copy.deepcopy(model)  # regionc.compile compiles the model in place
    compiled = ENTRY_POINTS[entry](model)
    reports = []
    with torch.no_grad():
        for scale in (1.0, 0.3, 0.7, 0.5):
            model.set_adapters(["style"], weights=[scale])
            reference.set_adapters(["style"], weights=[scale])
            before = len(regionc.reports())
            expected = reference(**kwargs)[0]
            assert relative_error(compiled(**kwargs)[0], expected) <= 1e-5, scale
            reports.append(regionc.reports()[before:])
    if entry == "backend":
        changed = reports[1]
        assert len(changed) == 1 and changed[0].count("compiled", "block") == 1, [r.summary() for r in changed]
        assert changed[0].count("reused", "block") == 2
        assert reports[2] == reports[3] == []


@pytest.mark.parametrize("entry", LORA_ENTRIES)
def test_two_lora_adapters_weighted_between_calls_stay_compiled(entry, caplog):
    """diffusers' ``set_adapters(names, weights)`` over two adapters of a Flux transformer (two stacks of
    blocks), the weights changed between calls: each call equals eager, and no piece, block or trace
    falls back. Under nested regions Dynamo hands a stack's second block the new scales as constants
    (it meets them there first) and, a change later, as the symbolic floats of their ``.item()``, where
    the region was traced on tensors; and the check of the blocks' input layouts ran the scales'
    ``.item()`` on copies without their symbols, leaving symbols behind that failed the next compile."""
    import copy
    import logging

    from peft import LoraConfig

    model, kwargs = ARCHITECTURES["flux"].build(2)
    names = ["style", "detail"]
    for name in names:
        model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False), adapter_name=name)
    reference = copy.deepcopy(model)  # regionc.compile compiles the model in place
    compiled = LORA_ENTRIES[entry](model)
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        for weights in ([1.0, 1.0], [0.5, 1.5], [1.0, -0.3], [0.2, 0.7]):
            model.set_adapters(names, weights=weights)
            reference.set_adapters(names, weights=weights)
            assert relative_error(compiled(**kwargs)[0], reference(**kwargs)[0]) <= 1e-5, weights
    fallbacks = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()
                 or "block_tracing=" in r.getMessage() and " failed " in r.getMessage()]
    assert fallbacks == []


@pytest.mark.parametrize("entry", LORA_ENTRIES)
@pytest.mark.parametrize("name,kwarg", [("flux", "joint_attention_kwargs"), ("wan", "attention_kwargs")])
def test_lora_scale_passed_per_call_stops_compiling(name, kwarg, entry):
    """diffusers' per-call LoRA scale (``joint_attention_kwargs={"scale": s}``, as a Flux pipeline passes
    it): the transformer rescales its LoRA layers by ``s`` on entry and back on exit, and Dynamo writes the
    restored scales back. Each call equals eager and leaves eager's scales behind, and new values stop
    compiling as they do under ``compile_repeated_blocks``: through the backend and per-block frames
    after the second value; regionc.compile under nested regions, which Dynamo refuses here (a scale
    computed outside a region and read inside it), runs one call eagerly and then traces its per-block
    frames for two values. Torch 2.11's tensorify pass specializes a scale read only within a product, so
    there the backend compiles every value, as plain ``torch.compile`` does."""
    import copy

    from peft import LoraConfig

    model, kwargs = ARCHITECTURES[name].build(2)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                 init_lora_weights=False), adapter_name="style")
    reference = copy.deepcopy(model)  # regionc.compile compiles the model in place
    compiled = LORA_ENTRIES[entry](model)
    scales = (1.0, 0.5, 0.8, 0.3, 0.9)
    counts = []
    with torch.no_grad():
        for scale in scales:
            call = {**kwargs, kwarg: {"scale": scale}}
            before = len(regionc.reports())
            assert relative_error(compiled(**call)[0], reference(**call)[0]) <= 1e-5, scale
            counts.append(len(regionc.reports()) - before)
            assert lora_scalings(model) == lora_scalings(reference), scale
    settled = 4 if entry == "regionc.compile" and nested_regions_reuse_traces() else 2
    if entry != "backend" or TENSORIFIES_PRODUCTS:
        assert counts[settled:] == [0] * (len(scales) - settled), counts


def _runs_eagerly(call, block_class) -> bool:
    """Whether ``call()`` runs ``block_class.forward``'s own code: compiled code runs Dynamo's bytecode
    instead (a trace does not run it either)."""
    import sys

    code, ran = block_class.forward.__code__, []
    sys.setprofile(lambda frame, event, arg: ran.append(1) if event == "call" and frame.f_code is code else None)
    try:
        call()
    finally:
        sys.setprofile(None)
    return bool(ran)


@pytest.mark.parametrize("name", ["ltx_video", "qwenimage"])
def test_resolutions_after_the_first_run_compiled_under_regionc_compile(name, caplog):
    """A diffusers transformer called at one resolution, then others. At the second, torch 2.13's reuse of a
    nested region's trace fails in Dynamo itself (``KeyError: 4*s98``, once the sizes are symbolic). That
    call's kind was then marked untraceable, and every later resolution ran eagerly; now the call runs
    eagerly and the model takes per-block frames, which compile the resolutions after it. Each call equals
    eager, and a resolution seen before runs compiled code."""
    import copy
    import logging

    model, kwargs = ARCHITECTURES[name].build(2)
    compiled = regionc.compile(copy.deepcopy(model))

    def at(rows: int, cols: int) -> dict:
        latent = kwargs["hidden_states"].shape[-1]
        if name == "ltx_video":
            sizes = {"num_frames": 1, "height": rows, "width": cols}
        else:
            sizes = {"img_shapes": [(1, rows, cols)]}
        latents = torch.randn(1, rows * cols, latent, generator=torch.Generator().manual_seed(rows))
        return {**kwargs, **sizes, "hidden_states": latents}

    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        for rows, cols in ((4, 4), (4, 6), (6, 4), (4, 8), (4, 6)):
            assert relative_error(compiled(**at(rows, cols))[0], model(**at(rows, cols))[0]) <= 1e-5, (rows, cols)
        assert not _runs_eagerly(lambda: compiled(**at(4, 8)), type(model.transformer_blocks[0]))
    assert not [r.getMessage() for r in caplog.records if "run eagerly" in r.getMessage()]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_t5_training_gradients_equal_eager(entry, caplog):
    """T5's first decoder block returns its position bias as a permuted view, which requires grad. Torch
    2.13's Inductor computes a wrong gradient for the bias embedding when that block is compiled as a
    piece of its own: such a piece runs eagerly there (one warning naming it), and every gradient equals
    eager's."""
    import copy
    import logging

    import transformers

    from regionc.compiler.inductor import STRIDED_GRAD_OUTPUT_BUG

    config = transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_heads=4, vocab_size=128, num_layers=2,
                                   num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                   dropout_rate=0.0)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).train()
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(2, 128, (2, 8), generator=generator),
              "labels": torch.randint(2, 128, (2, 5), generator=generator)}
    reference(**inputs).loss.backward()
    with caplog.at_level(logging.WARNING, logger="regionc"):
        ENTRY_POINTS[entry](model)(**inputs).loss.backward()
    theirs = dict(reference.named_parameters())
    for name, mine in model.named_parameters():
        assert relative_error(mine.grad, theirs[name].grad) <= 1e-4, name
    if STRIDED_GRAD_OUTPUT_BUG and entry == "backend":
        assert any("non-contiguous tensor that requires grad" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_decode_loop_on_the_models_own_cache_past_the_sliding_window_equals_eager(entry):
    """One token a call, handing back the cache the model made (a decode loop written by hand), past Gemma 2's
    sliding window. Dynamo finds the sliding layer's ``cumulative_length`` (a Python int) equal to its cache
    length and makes the two one symbol, which the glue building the masks receives only as that int: Inductor
    bound the int's own symbol and computed with the other (``NameError``). A later piece's compile then
    specialized that symbol, and the full-attention layer, compiled on that constant, was stored as right for
    every length; the next length loaded it (a relative error of 4e-4 at the window). Every step equals eager."""
    import copy

    model = _causal_lm("gemma2")
    window = model.config.sliding_window
    compiled = ENTRY_POINTS[entry](copy.deepcopy(model))
    ids = torch.randint(3, 120, (2, window - 3), generator=torch.Generator().manual_seed(0))  # see above: 3 steps in
    with torch.no_grad():
        expected, actual = model(ids, use_cache=True), compiled(ids, use_cache=True)
        for step in range(4):
            token = expected.logits[:, -1:].argmax(-1)
            expected = model(token, past_key_values=expected.past_key_values, use_cache=True)
            actual = compiled(token, past_key_values=actual.past_key_values, use_cache=True)
            assert relative_error(actual.logits, expected.logits) <= 1e-5, f"step {step}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_rwkv_recurrent_state_equals_eager(entry, caplog):
    """RWKV's blocks read their layer's slice of a recurrent state the model makes before them, then assign
    the new state into it. Torch 2.11's Inductor, compiling such a block as a piece of its own, computed it
    wrong (relative error 0.59): there those pieces run eagerly, one warning each; the output equals eager."""
    import logging

    import transformers

    from regionc.compiler.inductor import INPUT_SLICE_WRITE_BUG

    config = transformers.RwkvConfig(hidden_size=64, num_hidden_layers=3, vocab_size=128, attention_hidden_size=64,
                                     intermediate_size=128, context_length=32)
    torch.manual_seed(0)
    model = transformers.RwkvModel(config).eval()
    ids = torch.randint(3, 120, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        expected = model(input_ids=ids).last_hidden_state  # the first eval call rescales weights: before compiling
        actual = ENTRY_POINTS[entry](model)(input_ids=ids).last_hidden_state
    assert relative_error(actual, expected) <= 1e-5
    held_back = [r for r in caplog.records if "assigns into a slice of its input" in r.getMessage()]
    assert bool(held_back) == INPUT_SLICE_WRITE_BUG, [r.getMessage() for r in held_back]


def _tensors(output) -> list[torch.Tensor]:
    """Every tensor of an HF output (caches left out), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _tensors(value)]
    if hasattr(output, "keys"):
        return [t for key in output.keys() if key not in ("past_key_values", "cache") for t in _tensors(output[key])]
    return []


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_hidden_states_or_attentions_asked_after_plain_calls_equal_eager(name, caplog):
    """HF collects ``output_hidden_states`` and ``output_attentions`` through a context variable and
    warns through a logger, which Dynamo refuses inside a nested region or a block frame. Asked for after
    plain calls settled the model's block tracing, they raised, and the model then raised on every call.
    Such a call now runs eagerly (one warning), equals eager, and the plain calls keep their block
    tracing and their trace."""
    import copy
    import logging

    torch.manual_seed(0)
    model, kwargs = ARCHITECTURES[name].build(3)
    reference = copy.deepcopy(model)
    compiled = regionc.compile(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
        assert relative_error(compiled(**kwargs).last_hidden_state, reference(**kwargs).last_hidden_state) <= 1e-5
        strategy = compiled.forward.strategy
        for flags in ({"output_hidden_states": True}, {"output_attentions": True}, {"output_hidden_states": True}):
            expected, actual = _tensors(reference(**kwargs, **flags)), _tensors(compiled(**kwargs, **flags))
            assert len(actual) == len(expected) > ("output_hidden_states" in flags), flags
            assert max(relative_error(a, e) for a, e in zip(actual, expected)) <= 1e-5, flags
        before = len(regionc.reports())
        assert relative_error(compiled(**kwargs).last_hidden_state, reference(**kwargs).last_hidden_state) <= 1e-5
    assert compiled.forward.strategy == strategy
    if strategy != "full":  # nested regions (torch >= 2.12), or per-block frames where they settle
        assert len(regionc.reports()) == before  # the plain call ran on its trace
        eager = [r.getMessage() for r in caplog.records if "run eagerly" in r.getMessage()]
        assert len(eager) == 2, eager  # one per kind of call, not per call



def _flux_with_controlnet_residuals():
    from diffusers import FluxTransformer2DModel

    _, kwargs = ARCHITECTURES["flux"].build(2)
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                   axes_dims_rope=(4, 6, 6), guidance_embeds=True).eval()
    kwargs = {**kwargs, "guidance": torch.tensor([3.5]), "controlnet_block_samples": [torch.randn(1, 16, 32)],
              "controlnet_single_block_samples": [torch.randn(1, 16, 32)]}
    return model, kwargs, lambda out: out[0]


def _idefics3_with_an_image():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    image = 150
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": 160, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0},
        scale_factor=2, image_token_id=image)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    ids = torch.tensor([[5, 6, 7, *[image] * 4, 8, 9]])  # (32 / 8)² patches / 2² = 4 image tokens
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 1, 3, 32, 32)}
    return model, kwargs, lambda out: out.logits


@pytest.mark.parametrize("build", [_flux_with_controlnet_residuals, _idefics3_with_an_image],
                         ids=["flux_controlnet", "idefics3_image"])
def test_graphs_aotautograd_refused_start_warm_from_the_cache(build, tmp_path, caplog):
    """Calls that AOTAutograd's cache refuses, in real models' graphs through the backend: Flux given
    ControlNet residuals computes their interval with ``int(np.ceil(...))`` (unread NumPy calls), Idefics3
    splits its image features by sizes read with ``.tolist()`` (``torch.Tensor.split`` as a function). Their
    pieces compiled again on every start; now every piece is saved cold and loaded warm, both equal to eager."""
    import copy
    import logging

    model, kwargs, output = build()
    with torch.no_grad():
        expected = output(model(**kwargs))
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(model), backend="regionc", options={"cache_dir": str(tmp_path)})
        before = len(regionc.reports())
        caplog.clear()
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="regionc"):
            assert relative_error(output(compiled(**kwargs)), expected) <= 1e-5, start
        assert not [r.getMessage() for r in caplog.records if "cannot be serialized" in r.getMessage()], start
        sources = {p.source for r in regionc.reports()[before:] for p in r.pieces}
        assert ("compiled" in sources) if start == "cold" else (sources <= {"cache", "reused", "traced"}), (start, sources)
