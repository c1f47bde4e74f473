"""regionc::attention: numerics vs a float64 reference (explicit top-left causal mask, GQA by
repeat_interleave) on CPU (torch reference kernel), the SDPA is_causal convention for Sq != Skv,
validation, autograd refusal; CUDA (Triton) numerics incl. ragged lengths, fallback dims, and
CUDA-graph capture (gpu)."""

import math

import pytest
import torch
import torch.nn.functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, Hq, Hkv, Sq, Skv, D)
SHAPES = [(1, 1, 1, 1, 1, 64), (2, 4, 4, 17, 17, 64), (1, 4, 2, 33, 33, 128), (2, 8, 2, 5, 40, 64),
          (1, 4, 1, 40, 7, 32)]


def ref64(q, k, v, causal, scale):
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()  # SDPA is_causal: top-left
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


def make(B, Hq, Hkv, Sq, Skv, D, dtype, gen, device="cpu"):
    r = lambda *s: torch.randn(*s, generator=gen).to(dtype).to(device)  # noqa: E731
    return r(B, Hq, Sq, D), r(B, Hkv, Skv, D), r(B, Hkv, Skv, D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_cpu(shape, causal, dtype, gen, assert_rel):
    q, k, v = make(*shape, dtype, gen)
    out = torch.ops.regionc.attention(q, k, v, causal, None)
    assert out.is_contiguous()
    assert_rel(out, ref64(q, k, v, causal, None), dtype, attention=True)


def test_attention_scale_and_views(gen, assert_rel):
    B, S, Hq, Hkv, D = 2, 9, 4, 2, 64
    q = torch.randn(B, S, Hq, D, generator=gen).transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, generator=gen).transpose(1, 2)
    v = torch.randn(B, S, Hkv, D, generator=gen).transpose(1, 2)
    out = torch.ops.regionc.attention(q, k, v, True, 0.3)
    assert_rel(out, ref64(q, k, v, True, 0.3), torch.float32, attention=True)


@pytest.mark.parametrize("sq, skv", [(3, 7), (7, 3), (5, 5)])
def test_causal_convention_matches_sdpa(sq, skv, gen):
    """The reference's top-left mask is what SDPA's is_causal does (checked, not assumed)."""
    q = torch.randn(1, 2, sq, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, skv, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, skv, 16, generator=gen, dtype=torch.float64)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ref64(q, k, v, True, None), sdpa)
    out = torch.ops.regionc.attention(q.float(), k.float(), v.float(), True, None)
    torch.testing.assert_close(out.double(), sdpa, rtol=1e-4, atol=1e-5)


def test_attention_requires_grad_raises(gen):
    q, k, v = make(1, 2, 2, 4, 4, 16, torch.float32, gen)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.attention(q, k, v, False, None)
    with torch.inference_mode():
        torch.ops.regionc.attention(q, k, v, False, None)


def _bad(**over):
    a = dict(q=torch.randn(2, 4, 5, 16), k=torch.randn(2, 2, 6, 16), v=torch.randn(2, 2, 6, 16), causal=False,
             scale=None)
    a.update(over)
    return a


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (_bad(k=torch.randn(2, 3, 6, 16), v=torch.randn(2, 3, 6, 16)), ValueError, r"Hq % Hkv == 0"),
        (_bad(k=torch.randn(3, 2, 6, 16), v=torch.randn(3, 2, 6, 16)), ValueError, "k batch 3 != q batch 2"),
        (_bad(k=torch.randn(2, 2, 6, 8), v=torch.randn(2, 2, 6, 8)), ValueError, "k head_dim 8 != q head_dim 16"),
        (_bad(v=torch.randn(2, 2, 7, 16)), ValueError, "v seq len 7 != k seq len 6"),
        (_bad(q=torch.randn(2, 4, 16)), ValueError, "q must be 4-D"),
        (_bad(v=torch.randn(2, 2, 6, 16).half()), TypeError, "share a dtype"),
        (_bad(q=torch.randn(2, 4, 5, 16, dtype=torch.float64)), TypeError, "q must be float16"),
    ],
)
def test_attention_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.regionc.attention(**args)


# ------------------------------------------------------------------------------------ GPU

GPU_SHAPES = SHAPES[:4] + [
    (2, 8, 2, 300, 300, 128),  # ragged vs BLOCK_M/BLOCK_N
    (1, 8, 8, 129, 257, 64),   # Sq != Skv, both ragged
    (1, 4, 1, 257, 100, 128),  # Sq > Skv causal
    (2, 32, 8, 1024, 1024, 64),
    (1, 4, 4, 1, 513, 128),    # decode-like
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_attention_cuda(shape, causal, dtype, gen, cuda, assert_rel):
    q, k, v = make(*shape, dtype, gen, device=cuda)
    out = torch.ops.regionc.attention(q, k, v, causal, None)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), causal, None).to(cuda), dtype, attention=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, D", [(torch.float32, 64), (torch.bfloat16, 80), (torch.float16, 32)])
def test_attention_cuda_fallback(dtype, D, gen, cuda, assert_rel):
    """fp32 and head dims other than 64/128 take the SDPA fallback (logged once)."""
    q, k, v = make(2, 4, 2, 37, 37, D, dtype, gen, device=cuda)
    out = torch.ops.regionc.attention(q, k, v, True, None)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), True, None).to(cuda), dtype, attention=True)


@pytest.mark.gpu
def test_attention_cuda_transposed_views(gen, cuda, assert_rel):
    B, S, Hq, Hkv, D = 2, 200, 8, 2, 128
    r = lambda h: torch.randn(B, S, h, D, generator=gen).bfloat16().to(cuda).transpose(1, 2)  # noqa: E731
    q, k, v = r(Hq), r(Hkv), r(Hkv)
    out = torch.ops.regionc.attention(q, k, v, True, 0.05)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), True, 0.05).to(cuda), torch.bfloat16, attention=True)


@pytest.mark.gpu
def test_attention_cuda_graph(gen, cuda, assert_rel):
    q, k, v = make(2, 8, 2, 256, 256, 128, torch.bfloat16, gen, device=cuda)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up runs the autotuner outside capture
        for _ in range(2):
            torch.ops.regionc.attention(q, k, v, True, None)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.regionc.attention(q, k, v, True, None)
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        g.replay()
        torch.cuda.synchronize()
        assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), True, None).to(cuda), torch.bfloat16, attention=True)
