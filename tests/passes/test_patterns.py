"""Each pattern's spellings, and the forms that must keep their original ops (small functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.passes.pass_util import capture, compile_fn_with_passes

regionc_ops = torch.ops.regionc


def compiled_graph(fn, *args, options=None):
    """Run ``fn`` through Inductor + regionc passes ("always"); (eager out, compiled out, graph, pm)."""
    run, pm = compile_fn_with_passes(fn, options)
    with capture() as cap, torch.no_grad():
        expected = fn(*args)
        actual = run(*args)
    assert len(cap.graphs) == 1
    return expected, actual, cap.targets(cap.graphs[0]), pm


def check(fn, *args, op=None, absent=None, atol=1e-5):
    expected, actual, targets, pm = compiled_graph(fn, *args)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-4)
    if op is not None:
        assert getattr(regionc_ops, op).default in targets, targets
    if absent is not None:
        assert getattr(regionc_ops, absent).default not in targets, targets
    return targets, pm


# ---------------------------------------------------------------- RMSNorm spellings
def test_rms_norm_functional():
    x, w = torch.randn(2, 8, 64), torch.rand(64) + 0.5
    check(lambda x, w: F.rms_norm(x, (64,), w, 1e-6), x, w, op="rms_norm")


def test_rms_norm_weight_before_cast_bf16():
    def fn(x, w):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w).to(x.dtype)

    x, w = torch.randn(2, 8, 64, dtype=torch.bfloat16), torch.rand(64, dtype=torch.bfloat16) + 0.5
    check(fn, x, w, op="rms_norm", atol=2e-2)


def test_rms_norm_no_upcast_and_square_spelling():
    def fn(x, w):
        return w * (x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-5))

    check(fn, torch.randn(4, 64), torch.rand(64) + 0.5, op="rms_norm")


def test_fused_add_rms_norm_returns_both():
    def fn(x, r, w):
        h = x + r
        hf = h.float()
        return w * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(h.dtype), h * 2

    targets, _ = check(fn, torch.randn(2, 8, 64), torch.randn(2, 8, 64), torch.rand(64) + 0.5,
                       op="fused_add_rms_norm", absent="rms_norm")


def test_norm_over_another_axis_is_not_matched():
    def fn(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5))

    targets, pm = check(fn, torch.randn(2, 8, 64), torch.rand(64) + 0.5, absent="rms_norm")
    assert torch.ops.aten.rsqrt.default in targets
    assert any("not the last dim" in s for s in pm.take_skips())


def test_norm_with_broadcast_add_is_not_fused():
    def fn(x, bias, w):
        h = x + bias  # [64] bias: broadcast, not a residual
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))

    check(fn, torch.randn(2, 8, 64), torch.randn(64), torch.rand(64) + 0.5, op="rms_norm",
          absent="fused_add_rms_norm")


# ---------------------------------------------------------------- RoPE spellings
def _rotate_half_slice(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def _rotate_interleaved(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _tables(s, d, layout_unsqueeze):
    ang = torch.arange(s)[:, None] * torch.rand(d // 2)[None]
    emb = torch.cat((ang, ang), -1)[None]  # [1, S, D]
    return emb.cos().unsqueeze(layout_unsqueeze), emb.sin().unsqueeze(layout_unsqueeze)


def test_rope_rotate_half_slicing_bhsd():
    cos, sin = _tables(8, 32, 1)

    def fn(q, k):
        return q * cos + _rotate_half_slice(q) * sin, k * cos + _rotate_half_slice(k) * sin

    check(fn, torch.randn(1, 4, 8, 32), torch.randn(1, 2, 8, 32), op="rope")


def test_rope_interleaved_bshd():
    ang = torch.arange(8)[:, None] * torch.rand(16)[None]
    cos = ang.cos().repeat_interleave(2, -1)[None, :, None, :]  # [1, S, 1, D] (GPT-J)
    sin = ang.sin().repeat_interleave(2, -1)[None, :, None, :]

    def fn(q, k):
        return q * cos + _rotate_interleaved(q) * sin, k * cos + _rotate_interleaved(k) * sin

    targets, _ = check(fn, torch.randn(1, 8, 4, 32), torch.randn(1, 8, 2, 32), op="rope")


def test_rope_on_one_tensor_only_is_not_matched():
    cos, sin = _tables(8, 32, 1)

    def fn(q, k):
        return q * cos + _rotate_half_slice(q) * sin, k * 2

    targets, pm = check(fn, torch.randn(1, 4, 8, 32), torch.randn(1, 2, 8, 32), absent="rope")
    assert any("single tensor" in s for s in pm.take_skips())


# ---------------------------------------------------------------- attention
def _repeat_kv(x, n):
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def test_attention_hf_repeat_kv_scale_carried():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, _repeat_kv(k, 2), _repeat_kv(v, 2), is_causal=True, scale=0.3)

    q, k, v = torch.randn(1, 4, 8, 64), torch.randn(1, 2, 8, 64), torch.randn(1, 2, 8, 64)
    expected, actual, targets, pm = compiled_graph(fn, q, k, v)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    assert regionc_ops.attention.default in targets
    assert torch.ops.aten.expand.default not in targets and torch.ops.aten.clone.default not in targets


def test_attention_plain_mha_non_causal():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(2, 2, 8, 128) for _ in range(3))
    check(fn, q, k, v, op="attention")


def test_attention_head_dim_48_is_not_matched():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                              is_causal=True)

    q, k, v = torch.randn(1, 4, 8, 48), torch.randn(1, 2, 8, 48), torch.randn(1, 2, 8, 48)
    targets, pm = check(fn, q, k, v, absent="attention")
    assert any("head_dim 48 unsupported" in s for s in pm.take_skips())


def test_masked_attention_is_not_matched():
    mask = torch.ones(8, 8, dtype=torch.bool).tril()

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = (torch.randn(1, 4, 8, 64) for _ in range(3))
    targets, pm = check(fn, q, k, v, absent="attention")
    assert any("attn_mask" in s for s in pm.take_skips())
