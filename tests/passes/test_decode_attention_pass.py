"""The decode-attention pass: SDPA over a GQA-expanded KV cache → ``regionc.decode_attention`` on
the un-expanded cache. Whole models (HF Llama on a StaticCache, the demo decoder's gpt-fast cache)
and small functions for the masks it reads and the cases it must leave alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import regionc
from regionc.config import Config
from regionc.models.llama import LlamaConfig, build_demo_model
from regionc.passes import PassManager
from tests.helpers import assert_close
from tests.passes.pass_util import (
    capture,
    compile_fn_with_passes,
    compile_with_passes,
    cuda_hf_decode,
    hf_decoder,
    prefilled_cache,
)

DECODE = torch.ops.regionc.decode_attention.default
ALWAYS = {"kernel_choice": "always"}


def decode_nodes(cap):
    return [n for g in cap.graphs for n in g.nodes if n.target is DECODE]


def assert_reads_cache(node, kv_heads: int):
    """The op reads the cache write itself: kv heads un-expanded, nothing copied in between."""
    _, k, v = node.args[:3]
    assert k.meta["val"].shape[1] == kv_heads and v.meta["val"].shape[1] == kv_heads
    assert "index_put" in str(k.target) and "index_put" in str(v.target), (k.target, v.target)


# ---------------------------------------------------------------- whole models


def test_hf_llama_static_cache_decode():
    transformers = pytest.importorskip("transformers")
    model, cfg = hf_decoder(transformers)
    batch, prompt = 2, 5

    with capture() as cap, torch.no_grad():
        eager_cache, compiled_cache = (prefilled_cache(transformers, model, cfg, batch, prompt, 32) for _ in range(2))
        compiled = compile_with_passes(model, ALWAYS, cap)
        for pos in (prompt, prompt + 1):  # one compile serves every position
            tok = torch.randint(0, 128, (batch, 1))
            expected = model(tok, past_key_values=eager_cache, use_cache=True, cache_position=torch.tensor([pos]))
            actual = compiled(tok, past_key_values=compiled_cache, use_cache=True, cache_position=torch.tensor([pos]))
            assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    for layer_e, layer_c in zip(eager_cache.layers, compiled_cache.layers):
        assert_close(layer_c.keys, layer_e.keys, atol=1e-5, rtol=1e-4)
    nodes = decode_nodes(cap)
    assert nodes and cap.matches.get("decode_attention", 0) >= 1, (cap.matches, cap.skips)
    for node in nodes:
        assert_reads_cache(node, kv_heads=2)
        mask = node.args[3].meta["val"]
        assert mask.dtype == torch.bool and mask.shape[1] == 1  # SDPA's bool -> additive conversion undone
    assert not [t for g in cap.with_op("decode_attention") for t in cap.targets(g) if "scaled_dot_product" in str(t)]


@pytest.mark.parametrize("arch, overrides, swapped", [
    ("Qwen2", {}, True),  # q/k/v biases
    ("Mistral", {"sliding_window": None}, True),
    # a sliding-window cache layer: written at a position until it is full (the op may read it), then rolled
    # (not a cache write the pass knows: SDPA stays); a recompile separates the two
    ("Mistral", {"sliding_window": 6}, None),
])
def test_other_hf_decoders_on_a_static_cache(arch, overrides, swapped):
    """Held-out architectures: every step equals eager, and where the op is swapped in it reads the
    un-expanded cache and the bool mask."""
    transformers = pytest.importorskip("transformers")
    model, cfg = hf_decoder(transformers, arch, **overrides)
    batch, prompt = 2, 5

    with capture() as cap, torch.no_grad():
        eager_cache, compiled_cache = (prefilled_cache(transformers, model, cfg, batch, prompt, 16) for _ in range(2))
        compiled = compile_with_passes(model, ALWAYS, cap)
        for pos in range(prompt, prompt + 4):  # past the window: the oldest keys drop out of the mask
            tok = torch.randint(0, 128, (batch, 1))
            expected = model(tok, past_key_values=eager_cache, use_cache=True, cache_position=torch.tensor([pos]))
            actual = compiled(tok, past_key_values=compiled_cache, use_cache=True, cache_position=torch.tensor([pos]))
            assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    nodes = decode_nodes(cap)
    if swapped:
        assert nodes and cap.matches.get("decode_attention", 0) >= 1, (cap.matches, cap.skips)
    for node in nodes:
        assert_reads_cache(node, kv_heads=2)
        assert node.args[3].meta["val"].dtype == torch.bool


def test_demo_decoder_gpt_fast_cache():
    model = build_demo_model(LlamaConfig.tiny(2, dim=256, max_seq=32))
    model.setup_kv_cache(2, torch.float32)
    with torch.no_grad():
        model(torch.randint(0, 128, (2, 6)), torch.arange(6))
    eager = copy.deepcopy(model)
    with capture() as cap, torch.no_grad():
        compiled = compile_with_passes(model, ALWAYS, cap)
        for pos in (6, 7):
            tok = torch.randint(0, 128, (2, 1))
            assert_close(compiled(tok, torch.tensor([pos])), eager(tok, torch.tensor([pos])), atol=1e-5, rtol=1e-4)
    nodes = decode_nodes(cap)
    assert nodes and cap.matches.get("decode_attention") == 1, (cap.matches, cap.skips)
    assert_reads_cache(nodes[0], kv_heads=2)


def test_auto_on_cpu_keeps_sdpa_and_says_why():
    model = build_demo_model(LlamaConfig.tiny(2, dim=256, max_seq=16))
    model.setup_kv_cache(1, torch.float32)
    with capture() as cap, torch.no_grad():
        compiled = compile_with_passes(model, {"kernel_choice": "auto"}, cap)
        compiled(torch.randint(0, 128, (1, 1)), torch.tensor([3]))
    assert not decode_nodes(cap) and "decode_attention" not in cap.matches
    assert any("decode_attention" in s and "kept" in s and "cpu" in s for s in cap.skips), cap.skips


# ---------------------------------------------------------------- small functions: what is read


def cache_step(mask_fn, *, heads=(4, 2), seq=24, d=64, lq=1, expand="interleave", sdpa_kwargs=None):
    """A decode step: write k/v at ``pos`` into the caches, expand them, SDPA with ``mask_fn(pos)``.
    Returns (fn, args); the caches are the last two args and are written in place."""
    hq, hkv = heads
    g = hq // hkv

    def repeat(x):
        if expand == "interleave":
            return x.repeat_interleave(g, dim=1)
        if expand == "repeat_kv":  # HF
            b, h, s, dd = x.shape
            return x[:, :, None, :, :].expand(b, h, g, s, dd).reshape(b, h * g, s, dd)
        return x.repeat(1, g, 1, 1)  # tiled: head h reads kv head h % hkv

    def fn(q, k_new, v_new, pos, k_cache, v_cache):
        k_cache.index_copy_(2, pos, k_new)
        v_cache.index_copy_(2, pos, v_new)
        mask = mask_fn(pos)
        kw = dict(sdpa_kwargs or {})
        if mask is not None:
            kw["attn_mask"] = mask
        return F.scaled_dot_product_attention(q, repeat(k_cache), repeat(v_cache), **kw)

    b = 2
    pos = torch.arange(9, 9 + lq)
    args = (torch.randn(b, hq, lq, d), torch.randn(b, hkv, lq, d), torch.randn(b, hkv, lq, d), pos,
            torch.randn(b, hkv, seq, d), torch.randn(b, hkv, seq, d))
    return fn, args


def run_step(fn, args):
    """(eager out, compiled out, decode nodes, pass manager); each side gets its own caches."""
    run, pm = compile_fn_with_passes(fn)
    eager_args = tuple(a.clone() for a in args)
    with capture() as cap, torch.no_grad():
        expected = fn(*eager_args)
        actual = run(*args)
    assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    assert_close(args[-1], eager_args[-1])  # the cache write still lands
    return expected, actual, decode_nodes(cap), pm


SEQ = 24


def valid_prefix(pos):  # gpt-fast: arange(S) <= input_pos[:, None]
    return (torch.arange(SEQ)[None, :] <= pos[:, None])[None, None]


def padded_batch(pos):  # HF left padding: row 1 starts at slot 4
    m = torch.arange(SEQ)[None, None, None, :] <= pos[None, None, :, None]
    pad = torch.tensor([0, 4]).view(2, 1, 1, 1)
    return m & (torch.arange(SEQ).view(1, 1, 1, SEQ) >= pad)


def sliding_window(pos):  # a window of 4 slots, read from the mask
    j = torch.arange(SEQ)[None, :]
    return ((j <= pos[:, None]) & (j > pos[:, None] - 4))[None, None]


def additive(pos):
    m = torch.zeros(1, 1, pos.numel(), SEQ)
    return m.masked_fill(torch.arange(SEQ)[None, None, None, :] > pos[None, None, :, None], float("-inf"))


def additive_min(pos):  # HF's eager-style mask: finfo.min, not -inf
    m = torch.zeros(2, 1, pos.numel(), SEQ)
    return m.masked_fill(torch.arange(SEQ)[None, None, None, :] > pos[None, None, :, None], torch.finfo(m.dtype).min)


def sdpa_converted(pos):  # what SDPA does to a bool mask before its CPU/efficient kernels
    return torch.where(valid_prefix(pos).logical_not(), float("-inf"), torch.scalar_tensor(0.0))


def cudnn_converted(pos):  # ... and before cuDNN's: a finite -65504, which bf16 rounds to -65536
    return torch.where(valid_prefix(pos).logical_not(), -65504.0, torch.scalar_tensor(0.0))


CUDNN_EXCLUDED_BF16 = torch.tensor(-65504.0, dtype=torch.bfloat16).item()  # -65536


def cudnn_canonical(pos):  # the same as Inductor leaves it on CUDA: where(m, 0, -65504 held in bf16)
    return torch.where(valid_prefix(pos), 0.0, CUDNN_EXCLUDED_BF16)


@pytest.mark.parametrize("mask_fn", [valid_prefix, padded_batch, sliding_window, additive, additive_min,
                                     sdpa_converted, cudnn_converted, cudnn_canonical])
@pytest.mark.parametrize("expand", ["interleave", "repeat_kv"])
def test_masks_are_read(mask_fn, expand):
    fn, args = cache_step(mask_fn, expand=expand)
    _, _, nodes, pm = run_step(fn, args)
    assert len(nodes) == 1 and pm.take_matches() == {"decode_attention": 1}, pm.take_skips()
    assert nodes[0].args[1].meta["val"].shape[1] == 2


@pytest.mark.parametrize("mask_fn", [sdpa_converted, cudnn_converted, cudnn_canonical])
def test_a_converted_bool_mask_reaches_the_op_as_bool(mask_fn):
    """The kernel skips a key block only where the mask it reads excludes it; -65504 read as an
    additive value excludes nothing (the whole cache would be read every step)."""
    fn, args = cache_step(mask_fn, expand="repeat_kv")
    _, _, nodes, _ = run_step(fn, args)
    assert nodes[0].args[3].meta["val"].dtype == torch.bool


def test_speculative_rows_mha_scale_and_head_dim_128():
    fn, args = cache_step(lambda pos: (torch.arange(SEQ)[None, :] <= pos[:, None])[None, None], heads=(2, 2), d=128,
                          lq=3, sdpa_kwargs={"scale": 0.2})
    _, _, nodes, _ = run_step(fn, args)
    assert len(nodes) == 1 and nodes[0].args[5] == 0.2


# ---------------------------------------------------------------- what must stay SDPA


def alibi(pos):  # a per-head linear bias: ALiBi
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(4)]).view(1, 4, 1, 1)
    dist = (torch.arange(SEQ)[None, :] - pos[:, None]).float()[None, None]
    return (slopes * dist).masked_fill(dist > 0, float("-inf"))


def per_head_window(pos):  # a sliding window that differs per head: not one mask for all heads
    j = torch.arange(SEQ)[None, None, None, :]
    width = torch.tensor([2, 4, 8, 16]).view(1, 4, 1, 1)
    return (j <= pos.view(1, 1, -1, 1)) & (j > pos.view(1, 1, -1, 1) - width)


@pytest.mark.parametrize("case, mask_fn, kw, why", [
    ("alibi", alibi, {}, "per head"),
    ("per-head window", per_head_window, {}, "per head"),
    ("causal", lambda pos: None, {"sdpa_kwargs": {"is_causal": True}}, "is_causal"),
    ("head dim 48", valid_prefix, {"d": 48}, "head_dim 48"),
    ("too many rows", lambda pos: None, {"lq": 20, "seq": 40}, "query rows"),
    ("tiled repeat", valid_prefix, {"expand": "tiled"}, None),
])
def test_not_matched(case, mask_fn, kw, why):
    global SEQ
    seq = kw.get("seq", 24)
    saved, SEQ = SEQ, seq
    try:
        fn, args = cache_step(mask_fn, **kw)
        _, _, nodes, pm = run_step(fn, args)
    finally:
        SEQ = saved
    assert not nodes and "decode_attention" not in pm.take_matches()
    skips = pm.take_skips()
    if why is None:  # not a cache read through an expansion regionc knows: no report line
        assert not any("decode_attention" in s for s in skips), skips
    else:
        assert any("decode_attention" in s and why in s for s in skips), skips


def test_dropout_is_not_matched():
    """With dropout SDPA reaches the post-grad graph as its math decomposition (matmuls, softmax, the
    random mask), which the pass never takes; the fused SDPA overloads with dropout_p > 0 are refused."""
    fn, args = cache_step(valid_prefix, sdpa_kwargs={"dropout_p": 0.5})
    run, pm = compile_fn_with_passes(fn)
    with capture() as cap, torch.no_grad():
        run(*args)  # random: no output comparison
    assert not decode_nodes(cap)
    targets = {str(t) for t in cap.targets(cap.graphs[0])}
    assert "aten.bmm.default" in targets and any("random" in t for t in targets), targets


def test_softcapped_attention_has_no_sdpa_to_match():
    """Softcapping (Gemma 2) is computed from matmuls, not SDPA: nothing for the pass to take."""

    def fn(q, k_new, v_new, pos, k_cache, v_cache):
        k_cache.index_copy_(2, pos, k_new)
        v_cache.index_copy_(2, pos, v_new)
        k, v = k_cache.repeat_interleave(2, 1), v_cache.repeat_interleave(2, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        s = 30.0 * torch.tanh(s / 30.0)
        return s.masked_fill(~valid_prefix(pos), float("-inf")).softmax(-1) @ v

    _, args = cache_step(valid_prefix)
    _, _, nodes, pm = run_step(fn, args)
    assert not nodes and not any("decode_attention" in s for s in pm.take_skips())


def test_prefill_without_cache_is_left_to_the_attention_pass():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))

    run, pm = compile_fn_with_passes(fn)
    args = (torch.randn(1, 4, 4, 64), torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64))
    with capture() as cap, torch.no_grad():
        assert_close(run(*args), fn(*args), atol=1e-5, rtol=1e-4)
    assert not decode_nodes(cap) and pm.take_matches() == {"attention": 1}


def test_pass_can_be_turned_off():
    fn, args = cache_step(valid_prefix)
    run, pm = compile_fn_with_passes(fn, {"passes": {"decode_attention": False}})
    with capture() as cap, torch.no_grad():
        run(*args)
    assert not decode_nodes(cap)
    assert PassManager(Config.build({}), "cpu").uuid() != pm.uuid()


# ---------------------------------------------------------------- CUDA


def test_decision_table_swaps_on_cuda_only_where_a_copy_is_removed():
    from regionc.passes.decisions import decide

    assert decide("cuda", "decode_attention", "gqa_expanded").swap
    assert not decide("cuda", "decode_attention", "native").swap
    assert not decide("cpu", "decode_attention", "gqa_expanded").swap


@pytest.mark.gpu
@pytest.mark.parametrize("kernel_choice", ["always", "auto"])
def test_cuda_hf_llama_static_cache(kernel_choice):
    """On the GPU's torch (its SDPA overloads and mask conversions) the pass still finds HF decode, and
    swaps by default (the decision table's measured row)."""
    transformers = pytest.importorskip("transformers")
    report = cuda_hf_decode(transformers, kernel_choice, batch=2, max_cache_len=256, intermediate_size=256)
    assert report.pass_matches.get("decode_attention", 0) >= 1, (report.pass_matches, report.pass_skips)


@pytest.mark.gpu
def test_cuda_demo_decoder_gpt_fast_cache():
    model = build_demo_model(LlamaConfig.tiny(2, dim=512, n_heads=8, max_seq=256), dtype=torch.bfloat16, device="cuda")
    model.setup_kv_cache(2, torch.bfloat16)
    with torch.no_grad():
        model(torch.randint(0, 128, (2, 6), device="cuda"), torch.arange(6, device="cuda"))
        eager = copy.deepcopy(model)
        compiled = torch.compile(model, backend="regionc", options={"cache": False, "kernel_choice": "always"})
        for pos in (6, 7, 200):
            tok = torch.randint(0, 128, (2, 1), device="cuda")
            pos_t = torch.tensor([pos], device="cuda")
            actual, expected = compiled(tok, pos_t).float(), eager(tok, pos_t).float()
            assert ((actual - expected).norm() / expected.norm()).item() < 2e-2, pos
    report = regionc.last_report()
    assert report.pass_matches.get("decode_attention", 0) >= 1, (report.pass_matches, report.pass_skips)
