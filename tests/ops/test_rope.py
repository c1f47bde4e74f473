"""regionc::rope: numerics vs a float64 reference for both styles, both layouts, GQA head counts,
all dtypes, broadcast and per-batch cos/sin (CPU kernel: C++ when built, torch reference
otherwise), validation, autograd refusal, and CUDA (Triton) numerics + CUDA-graph capture (gpu)."""

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
STYLES = ["rotate_half", "interleaved"]
LAYOUTS = ["bhsd", "bshd"]
# (B, S, Hq, Hk, D)
SHAPES = [(1, 1, 1, 1, 2), (2, 7, 4, 2, 16), (1, 5, 3, 1, 96), (3, 4, 8, 8, 128), (2, 3, 32, 8, 64)]


def tables(b, s, d, style, gen, dtype=torch.float32):
    """HF-style tables: rotate_half repeats the frequencies over the two halves, interleaved per pair."""
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    pos = torch.arange(s, dtype=torch.float64)[None, :, None] + torch.randint(0, 50, (b, 1, 1), generator=gen)
    ang = pos * inv  # [b, s, d/2]
    ang = torch.cat((ang, ang), -1) if style == "rotate_half" else ang.repeat_interleave(2, -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate64(x, style):
    if style == "rotate_half":
        x1, x2 = x.chunk(2, -1)
        return torch.cat((-x2, x1), -1)
    out = torch.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out


def ref64(q, k, cos, sin, style, layout):
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    ax = 1 if layout == "bhsd" else 2
    c, s = cos.double().unsqueeze(ax), sin.double().unsqueeze(ax)
    return tuple(x.double() * c + rotate64(x.double(), style) * s for x in (q, k))


def make(B, S, Hq, Hk, D, layout, dtype, gen, device="cpu"):
    shp = (lambda h: (B, h, S, D)) if layout == "bhsd" else (lambda h: (B, S, h, D))
    q = torch.randn(shp(Hq), generator=gen).to(dtype).to(device)
    k = torch.randn(shp(Hk), generator=gen).to(dtype).to(device)
    return q, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rope_cpu(shape, style, layout, dtype, gen, assert_rel):
    B, S, Hq, Hk, D = shape
    q, k = make(B, S, Hq, Hk, D, layout, dtype, gen)
    cos, sin = tables(B, S, D, style, gen)
    q0, k0 = q.clone(), k.clone()
    qo, ko = torch.ops.regionc.rope(q, k, cos, sin, style, layout)
    assert torch.equal(q, q0) and torch.equal(k, k0), "rope must be functional"
    rq, rk = ref64(q, k, cos, sin, style, layout)
    assert_rel(qo, rq, dtype)
    assert_rel(ko, rk, dtype)


@pytest.mark.parametrize("style", STYLES)
def test_rope_table_forms(style, gen, assert_rel):
    """cos/sin broadcast over batch ([1, S, D]), 2-D ([S, D]), and in q's dtype."""
    B, S, Hq, Hk, D = 3, 6, 4, 2, 32
    q, k = make(B, S, Hq, Hk, D, "bhsd", torch.bfloat16, gen)
    cos, sin = tables(1, S, D, style, gen)
    for c, s in ((cos, sin), (cos[0], sin[0]), (cos.bfloat16(), sin.bfloat16())):
        qo, ko = torch.ops.regionc.rope(q, k, c, s, style, "bhsd")
        rq, rk = ref64(q, k, c, s, style, "bhsd")
        assert_rel(qo, rq, torch.bfloat16)
        assert_rel(ko, rk, torch.bfloat16)


def test_rope_strided_views(gen, assert_rel):
    """q/k given as transpose views of [B, S, H, D] projections (the usual HF pattern)."""
    B, S, Hq, Hk, D = 2, 5, 4, 2, 16
    q = torch.randn(B, S, Hq, D, generator=gen).transpose(1, 2)
    k = torch.randn(B, S, Hk, D, generator=gen).transpose(1, 2)
    cos, sin = tables(B, S, D, "rotate_half", gen)
    qo, ko = torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")
    assert qo.is_contiguous() and ko.is_contiguous()
    rq, rk = ref64(q, k, cos, sin, "rotate_half", "bhsd")
    assert_rel(qo, rq, torch.float32)
    assert_rel(ko, rk, torch.float32)


def test_rope_requires_grad_raises(gen):
    q, k = make(1, 3, 2, 2, 8, "bhsd", torch.float32, gen)
    cos, sin = tables(1, 3, 8, "rotate_half", gen)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")
    with torch.inference_mode():
        torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")


def _bad(**over):
    a = dict(q=torch.randn(2, 4, 5, 8), k=torch.randn(2, 2, 5, 8), cos=torch.randn(1, 5, 8),
             sin=torch.randn(1, 5, 8), style="rotate_half", layout="bhsd")
    a.update(over)
    return a


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (_bad(style="neox"), ValueError, "style must be one of"),
        (_bad(layout="sbhd"), ValueError, "layout must be one of"),
        (_bad(q=torch.randn(2, 4, 5, 8, dtype=torch.float64)), TypeError, "q must be float16"),
        (_bad(k=torch.randn(2, 2, 5, 8).half()), TypeError, "k dtype"),
        (_bad(k=torch.randn(3, 2, 5, 8)), ValueError, "k batch 3 != q batch 2"),
        (_bad(k=torch.randn(2, 2, 4, 8)), ValueError, "k seq len"),
        (_bad(k=torch.randn(2, 2, 5, 6)), ValueError, "k head_dim"),
        (_bad(q=torch.randn(2, 4, 5), ), ValueError, "q must be 4-D"),
        (_bad(cos=torch.randn(1, 5, 6), sin=torch.randn(1, 5, 6)), ValueError, "cos/sin last dim"),
        (_bad(cos=torch.randn(1, 4, 8), sin=torch.randn(1, 4, 8)), ValueError, "cos/sin seq dim"),
        (_bad(cos=torch.randn(3, 5, 8), sin=torch.randn(3, 5, 8)), ValueError, "cos/sin batch dim"),
        (_bad(sin=torch.randn(2, 5, 8)), ValueError, "sin shape"),
        (_bad(q=torch.randn(2, 4, 5, 7), k=torch.randn(2, 2, 5, 7), cos=torch.randn(1, 5, 7),
              sin=torch.randn(1, 5, 7)), ValueError, "head_dim must be even"),
    ],
)
def test_rope_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.regionc.rope(**args)


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("shape", SHAPES + [(1, 33, 32, 8, 128), (2, 17, 80, 8, 64)])
def test_rope_cuda(shape, style, layout, dtype, gen, cuda, assert_rel):
    B, S, Hq, Hk, D = shape
    q, k = make(B, S, Hq, Hk, D, layout, dtype, gen, device=cuda)
    cos, sin = (t.to(cuda) for t in tables(B, S, D, style, gen))
    qo, ko = torch.ops.regionc.rope(q, k, cos, sin, style, layout)
    rq, rk = ref64(q, k, cos, sin, style, layout)
    assert_rel(qo, rq, dtype)
    assert_rel(ko, rk, dtype)
    # bf16/fp16 tables and transposed views take the same kernel
    if layout == "bshd":
        qt, kt = q.transpose(1, 2), k.transpose(1, 2)
        qo2, ko2 = torch.ops.regionc.rope(qt, kt, cos.to(dtype), sin.to(dtype), style, "bhsd")
        rq, rk = ref64(qt, kt, cos.to(dtype), sin.to(dtype), style, "bhsd")
        assert_rel(qo2, rq, dtype)
        assert_rel(ko2, rk, dtype)


@pytest.mark.gpu
def test_rope_cuda_graph(gen, cuda, assert_rel):
    B, S, Hq, Hk, D = 2, 64, 32, 8, 128
    q, k = make(B, S, Hq, Hk, D, "bshd", torch.bfloat16, gen, device=cuda)
    cos, sin = (t.to(cuda) for t in tables(B, S, D, "rotate_half", gen))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bshd")
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        qo, ko = torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bshd")
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        c2, s2 = tables(B, S, D, "rotate_half", gen)
        cos.copy_(c2)
        sin.copy_(s2)
        g.replay()
        torch.cuda.synchronize()
        rq, rk = ref64(q, k, cos, sin, "rotate_half", "bshd")
        assert_rel(qo, rq, torch.bfloat16)
        assert_rel(ko, rk, torch.bfloat16)


@pytest.mark.parametrize("B, S, Hq, Hk, D", [(1, 4096, 32, 8, 128), (16, 1024, 32, 8, 128), (8, 1, 32, 8, 128),
                                             (2, 17, 80, 8, 64), (1, 5, 3, 1, 96), (4, 4680, 24, 24, 128),
                                             (3, 7, 1, 1, 2), (1, 100000, 8, 8, 256)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_launch_params(B, S, Hq, Hk, D, interleaved):
    """The heuristic's tiles are powers of two, cover every head, stay within the tile budget (or
    are one token x one head), and the grid is not starved when the problem allows it."""
    from regionc.ops.rope import MIN_PROGRAMS_PER_SM, TILE_ELEMS, _compute_params, _launch_params

    bs, bhq, bhk, groups, warps = _compute_params(B, S, Hq, Hk, D, interleaved, 132)
    for v in (bs, bhq, bhk, warps):
        assert v & (v - 1) == 0, (bs, bhq, bhk, warps)
    assert groups * bhq >= Hq and groups * bhk >= Hk
    assert (groups - 1) * bhq < Hq or (groups - 1) * bhk < Hk, "a group with no heads at all"
    dpad = 1 << (D - 1).bit_length()
    assert bs * (bhq + bhk) * dpad <= TILE_ELEMS or (bs == 1 and bhq == 1 and bhk == 1)
    programs = B * -(-S // bs) * groups
    assert programs >= min(MIN_PROGRAMS_PER_SM * 132, B * S * max(Hq, Hk)) or (bs == 1 and bhq == 1 and bhk == 1)
    assert _launch_params(B, S, Hq, Hk, D, interleaved, 132) is _launch_params(B, S, Hq, Hk, D, interleaved, 132)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("cfg", [{}, {"block_s": 4, "heads_per_block": 32, "num_warps": 8},
                                 {"block_s": 2, "heads_per_block": 8, "num_warps": 4},
                                 {"block_s": 1, "heads_per_block": 16, "num_warps": 2}])
def test_rope_cuda_launch_configs(cfg, style, layout, gen, cuda, assert_rel):
    """The configurations the benchmark sweeps give the right answer too (ragged token blocks)."""
    from regionc.ops.rope import rope_triton

    B, S, Hq, Hk, D = 2, 37, 32, 8, 128
    q, k = make(B, S, Hq, Hk, D, layout, torch.bfloat16, gen, device=cuda)
    cos, sin = (t.to(cuda) for t in tables(B, S, D, style, gen))
    qo, ko = rope_triton(q, k, cos, sin, style, layout, **cfg)
    rq, rk = ref64(q, k, cos, sin, style, layout)
    assert_rel(qo, rq, torch.bfloat16)
    assert_rel(ko, rk, torch.bfloat16)


@pytest.mark.gpu
def test_rope_cuda_requires_grad_raises(gen, cuda):
    q, k = make(1, 3, 2, 2, 8, "bhsd", torch.float32, gen, device=cuda)
    cos, sin = (t.to(cuda) for t in tables(1, 3, 8, "rotate_half", gen))
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")
    with torch.no_grad():
        torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape, style", [((1, 33, 32, 8, 128), "rotate_half"), ((2, 300, 32, 8, 64), "interleaved"),
                                          ((4, 1, 32, 8, 128), "rotate_half")])
def test_rope_cuda_repeat_and_misaligned(layout, shape, style, gen, cuda, assert_rel):
    """Each call goes through the Triton JIT: a repeat call on the same tensors, then a q 4 bytes
    off 16-byte alignment (another specialisation of the kernel), give the right answer."""
    from regionc.ops.rope import rope_triton

    B, S, Hq, Hk, D = shape
    q, k = make(B, S, Hq, Hk, D, layout, torch.bfloat16, gen, device=cuda)
    cos, sin = (t.to(cuda) for t in tables(B, S, D, style, gen))
    mis = torch.randn(q.numel() + 2, generator=gen).bfloat16().to(cuda)[2:].view(q.shape)
    assert mis.data_ptr() % 16
    for qi in (q, q, mis):
        qo, ko = rope_triton(qi, k, cos, sin, style, layout)
        rq, rk = ref64(qi, k, cos, sin, style, layout)
        assert_rel(qo, rq, torch.bfloat16)
        assert_rel(ko, rk, torch.bfloat16)
