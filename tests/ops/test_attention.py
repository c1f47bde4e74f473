"""regionc::attention: numerics vs a float64 reference (explicit top-left causal mask, GQA by
repeat_interleave) on CPU (torch reference kernel), the SDPA is_causal convention for Sq != Skv,
validation, autograd refusal, the kernel-variant switch; CUDA (Triton) numerics of both kernel
variants incl. ragged lengths, fallback dims, misaligned inputs, and CUDA-graph capture (gpu).
The Triton kernels themselves run on the CPU under the interpreter: interpret_kernels.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from regionc.ops import attention as attn_mod

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


def test_variant_switch(monkeypatch):
    """The module-level switch is validated per call; TMA needs 16-byte aligned bases/strides
    (module choice falls back to the pointer kernel, an explicit variant="tma" raises)."""
    pytest.importorskip("triton", reason="triton not installed")
    assert attn_mod.ATTENTION_VARIANT in attn_mod.VARIANTS
    q = torch.randn(1, 2, 9, 64).half()
    k = v = torch.randn(1, 1, 9, 64).half()
    if attn_mod.HAS_TMA:
        assert attn_mod.tma_unusable(q, k, v) is None
        assert attn_mod._pick_variant(q, k, v, "auto", False) == "auto"
        assert attn_mod._pick_variant(q, k, v, "auto", True) == "tma"
    odd = torch.randn(2 * 9 * 64 + 1).half()[1:].view(1, 2, 9, 64)  # base 2 bytes off
    assert attn_mod.tma_unusable(odd, k, v) is not None
    assert attn_mod._pick_variant(odd, k, v, "ptr", False) == "ptr"
    monkeypatch.setattr(attn_mod, "ATTENTION_VARIANT", "tma")
    assert attn_mod._pick_variant(odd, k, v, None, False) == "ptr"
    with pytest.raises(ValueError, match="TMA variant cannot run"):
        attn_mod._pick_variant(odd, k, v, "tma", False)
    monkeypatch.setattr(attn_mod, "ATTENTION_VARIANT", "fast")
    with pytest.raises(ValueError, match="variant must be one of"):
        attn_mod._pick_variant(q, k, v, None, False)


def test_tma_failure_falls_back_to_ptr(monkeypatch, caplog):
    """A TMA kernel that fails to compile/launch: the op logs a warning and uses the pointer-load
    kernel from then on; an explicitly requested TMA variant re-raises instead."""
    pytest.importorskip("triton", reason="triton not installed")
    if not attn_mod.HAS_TMA:
        pytest.skip("this triton has no tensor descriptors")
    calls = []

    class Tuner:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(self.name)
                if self.name == "tma":
                    raise RuntimeError("simulated TMA compile error\nsecond line")
            return launch

    monkeypatch.setattr(attn_mod, "TUNERS", {("tma", 64): Tuner("tma"), ("ptr", 64): Tuner("ptr")})
    monkeypatch.setattr(attn_mod, "ATTENTION_VARIANT", "tma")
    monkeypatch.setattr(attn_mod, "_tma_disabled", None)
    q = torch.randn(1, 2, 9, 64).half()
    k = v = torch.randn(1, 1, 9, 64).half()
    with pytest.raises(RuntimeError, match="simulated"):
        attn_mod.attention_triton(q, k, v, True, None, variant="tma")
    assert attn_mod._tma_disabled is None
    with caplog.at_level("WARNING", logger="regionc"):
        attn_mod.attention_triton(q, k, v, True, None)
    assert calls == ["tma", "tma", "ptr"]
    assert "simulated TMA compile error" in attn_mod._tma_disabled
    assert "pointer-load kernel from now on" in caplog.text
    attn_mod.attention_triton(q, k, v, False, None)  # no TMA attempt any more
    assert calls == ["tma", "tma", "ptr", "ptr"]
    with pytest.raises(ValueError, match="TMA variant cannot run"):
        attn_mod.attention_triton(q, k, v, True, None, variant="tma")


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
@pytest.mark.parametrize("variant", ["ptr", "tma"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [GPU_SHAPES[4], GPU_SHAPES[5], GPU_SHAPES[6], GPU_SHAPES[8]])
def test_attention_cuda_variants(shape, causal, variant, gen, cuda, assert_rel):
    """Each kernel variant through its own autotuner (every config of its list runs once)."""
    if variant == "tma" and (not attn_mod.HAS_TMA or torch.cuda.get_device_capability()[0] < 9):
        pytest.skip("TMA needs sm90+ and a triton with tl.make_tensor_descriptor")
    q, k, v = make(*shape, torch.bfloat16, gen, device=cuda)
    out = attn_mod.attention_triton(q, k, v, causal, None, variant=variant)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), causal, None).to(cuda), torch.bfloat16, attention=True)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["ptr", "tma"])
@pytest.mark.parametrize("m_major", [0, 1])
def test_attention_cuda_causal_block_orders(m_major, variant, gen, cuda, assert_rel):
    """Both causal block orders (per head / grid-wide longest-first) with a fixed config."""
    if variant == "tma" and (not attn_mod.HAS_TMA or torch.cuda.get_device_capability()[0] < 9):
        pytest.skip("TMA needs sm90+ and a triton with tl.make_tensor_descriptor")
    q, k, v = make(2, 8, 2, 333, 333, 128, torch.bfloat16, gen, device=cuda)
    cfg = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "M_MAJOR": m_major}
    out = attn_mod.attention_triton(q, k, v, True, None, config=cfg, variant=variant)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), True, None).to(cuda), torch.bfloat16, attention=True)


@pytest.mark.gpu
def test_attention_cuda_misaligned_falls_back(gen, cuda, assert_rel, monkeypatch):
    """A q whose base is not 16-byte aligned cannot be read by TMA: the pointer kernel runs."""
    monkeypatch.setattr(attn_mod, "ATTENTION_VARIANT", "tma")
    flat = torch.randn(2 * 4 * 70 * 64 + 1, generator=gen).bfloat16().to(cuda)
    q = flat[1:].view(2, 4, 70, 64)
    _, k, v = make(2, 4, 2, 70, 70, 64, torch.bfloat16, gen, device=cuda)
    out = torch.ops.regionc.attention(q, k, v, True, None)
    assert_rel(out, ref64(q.cpu(), k.cpu(), v.cpu(), True, None).to(cuda), torch.bfloat16, attention=True)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["ptr", "tma", "auto"])
def test_attention_cuda_graph(variant, gen, cuda, assert_rel, monkeypatch):
    """Capture after warm-up (autotuning runs outside capture); the TMA variant's per-launch
    descriptor workspace is allocated inside the capture from the graph's pool."""
    monkeypatch.setattr(attn_mod, "ATTENTION_VARIANT", variant)
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
    if variant != "ptr":  # the TMA kernel did not fail (and silently fall back) on the way
        assert attn_mod._tma_disabled is None, attn_mod._tma_disabled
