"""HF caches that would set themselves up inside a compiled call are set up before it, as ``generate``
does for a compiled prefill, and only where that gives the cache the call would have made."""

from __future__ import annotations

import logging

import pytest
import torch

from regionc.tracing.caches import set_up_caches

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _prompt(batch=3):
    return torch.randint(0, 128, (batch, 5), generator=torch.Generator().manual_seed(1))


def test_a_fresh_static_cache_is_set_up_as_the_call_would_set_it_up(model, caplog):
    ids = _prompt()
    lazy = transformers.StaticCache(config=model.config, max_cache_len=16)
    early = transformers.StaticCache(config=model.config, max_cache_len=16)
    with caplog.at_level(logging.INFO, logger="regionc"):
        set_up_caches(model, (), {"input_ids": ids, "past_key_values": early}, object())
    assert all(layer.is_initialized for layer in early.layers)
    assert "set up LlamaForCausalLM's StaticCache before the call" in caplog.text
    with torch.no_grad():
        expected = model(input_ids=ids, past_key_values=lazy).logits
        actual = model(input_ids=ids, past_key_values=early).logits
    assert torch.equal(actual, expected)
    for mine, theirs in zip(early.layers, lazy.layers):
        assert mine.keys.shape == theirs.keys.shape and mine.keys.dtype == theirs.keys.dtype
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.cumulative_length, theirs.cumulative_length)


def test_a_cache_whose_keys_may_take_another_dtype_is_left_to_the_call(model, caplog):
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    with caplog.at_level(logging.INFO, logger="regionc"), torch.autocast("cpu", dtype=torch.bfloat16):
        set_up_caches(model, (), {"input_ids": _prompt(), "past_key_values": cache}, object())
    assert not any(layer.is_initialized for layer in cache.layers)
    assert "sets itself up inside the call (autocast is on" in caplog.text


def test_a_dynamic_cache_and_a_call_without_tokens_are_left_alone(model):
    dynamic = transformers.DynamicCache(config=model.config)
    set_up_caches(model, (), {"input_ids": _prompt(), "past_key_values": dynamic}, object())
    assert not any(layer.is_initialized for layer in dynamic.layers)
    static = transformers.StaticCache(config=model.config, max_cache_len=16)
    set_up_caches(model, (), {"past_key_values": static, "use_cache": True}, object())
    assert not any(layer.is_initialized for layer in static.layers)


def test_a_cache_with_layers_the_model_does_not_run_is_left_to_the_call(model, caplog):
    """Set up early, a layer the model never reaches would hold zeros where the call leaves it unset (HF
    sizes a cache by its config's layer types, which a config may list past its layer count)."""
    import copy

    wider = copy.deepcopy(model.config)
    wider.num_hidden_layers = model.config.num_hidden_layers + 2
    cache = transformers.StaticCache(config=wider, max_cache_len=16)
    with caplog.at_level(logging.INFO, logger="regionc"):
        set_up_caches(model, (), {"input_ids": _prompt(), "past_key_values": cache}, object())
    assert not any(layer.is_initialized for layer in cache.layers)
    assert "sets itself up inside the call (it has 5 layers, the model runs 3)" in caplog.text


def test_a_config_whose_heads_the_model_does_not_use_leaves_the_cache_to_the_call(caplog):
    """GPT-NeoX has no grouped heads and ignores a ``num_key_value_heads`` its config carries; HF sizes an
    early cache by it, so a cache set up that way is narrower than the keys and the call failed. The fused
    key projection's width tells: the cache is left to the call, whose outputs equal eager's."""
    config = transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=128)
    consistent = transformers.GPTNeoXForCausalLM(config).eval()
    cache = transformers.StaticCache(config=config, max_cache_len=16)
    set_up_caches(consistent, (), {"input_ids": _prompt(), "past_key_values": cache}, object())
    assert all(layer.is_initialized for layer in cache.layers)

    config.num_key_value_heads = 2
    model = transformers.GPTNeoXForCausalLM(config).eval()
    cache = transformers.StaticCache(config=config, max_cache_len=16)
    with caplog.at_level(logging.INFO, logger="regionc"):
        set_up_caches(model, (), {"input_ids": _prompt(), "past_key_values": cache}, object())
    assert not any(layer.is_initialized for layer in cache.layers)
    assert "sets itself up inside the call (its gpt_neox.layers.0.attention.query_key_value outputs 192 " \
           "features, not the 128" in caplog.text
    with torch.no_grad():
        model(input_ids=_prompt(), past_key_values=cache)  # the call sets it up, at the keys' width
    assert cache.layers[0].keys.shape[1] == 4
