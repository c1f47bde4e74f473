"""rms_norm, rope and attention through their Triton launchers under the interpreter (``interpreted.py``),
against float64 references, with the launchers' tiling overrides for the multi-row, chunked and ragged-tile
paths; attention in fp16/fp32 only (tl.dot)."""

import math
import sys

import pytest
import torch
from interpreted import ATOL, failures, finish, gen

from regionc.ops.attention import attention_triton
from regionc.ops.rms_norm import rms_norm_triton
from regionc.ops.rope import rope_triton

TOL = {torch.float32: 2e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}


def rel(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def expect(name, out, ref, tol):
    err = rel(out, ref)
    ok = err <= tol and out.shape == ref.shape
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (tol {tol:g})")
    if not ok:
        failures.append(name)


def rms64(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


# ---------------------------------------------------------------- rms_norm
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for shape, kw, strided in (((5, 40), {}, False), ((9, 24), {"rows": 4}, False),
                               ((3, 50), {"loop": True, "block_n": 16}, False), ((2, 3, 33), {}, False),
                               ((7, 20), {"rows": 2}, True), ((4, 3, 20), {"loop": True, "block_n": 8}, True)):
        if strided:  # x: row stride 2*hidden, unit last stride (read in place); r: last dim not unit-stride (copied)
            x = torch.randn(shape[:-1] + (2 * shape[-1],), generator=gen).to(dtype)[..., :shape[-1]]
            r = torch.randn(shape[::-1], generator=gen).to(dtype).permute(*range(len(shape) - 1, -1, -1))
        else:
            x = torch.randn(shape, generator=gen).to(dtype)
            r = torch.randn(shape, generator=gen).to(dtype)
        w = (1 + 0.1 * torch.randn(shape[-1], generator=gen))  # fp32 weight with any x dtype
        expect(f"rms_norm {dtype} {shape} {kw}", rms_norm_triton(x, w, 1e-6, **kw), rms64(x, w, 1e-6), TOL[dtype])
        y, nr = rms_norm_triton(x, w, 1e-6, residual=r, **kw)
        if dtype == torch.bfloat16:  # the interpreter truncates fp32->bf16 casts (GPU rounds to nearest)
            expect(f"fused_add new_residual {dtype} {shape} {kw}", nr, (x.double() + r.double()), TOL[dtype])
        elif not torch.equal(nr, x + r):
            failures.append(f"fused_add new_residual {dtype} {shape} {kw}")
        expect(f"fused_add_rms_norm {dtype} {shape} {kw}", y, rms64(x + r, w, 1e-6), TOL[dtype])


# ---------------------------------------------------------------- rope
def rot64(x, style):
    if style == "rotate_half":
        a, b = x.chunk(2, -1)
        return torch.cat((-b, a), -1)
    o = torch.empty_like(x)
    o[..., 0::2], o[..., 1::2] = -x[..., 1::2], x[..., 0::2]
    return o


# (B, S, Hq, Hk, D), launcher overrides, table form ("b": [B, S, D], "1": [1, S, D], "2": [S, D]),
# q/k given as transpose views of the other layout
ROPE_CASES = [
    ((2, 3, 4, 2, 16), {}, "b", False),                                   # heuristics
    ((1, 2, 5, 1, 12), {"heads_per_block": 2}, "1", False),               # D/2 = 6 (masked), k groups empty
    ((2, 7, 3, 2, 12), {"block_s": 4}, "2", False),                       # ragged token blocks
    ((1, 5, 6, 3, 16), {"block_s": 2, "heads_per_block": 4, "num_warps": 2}, "b", True),
    ((3, 4, 2, 2, 8), {"block_s": 8, "heads_per_block": 8}, "1", True),   # tile larger than the problem
    ((1, 1, 1, 1, 2), {}, "b", False),                                    # D = 2: one pair, BLOCK_D 1 / 2
]
for dtype in (torch.float32, torch.bfloat16):
    for style in ("rotate_half", "interleaved"):
        for layout in ("bhsd", "bshd"):
            for (B, S, Hq, Hk, D), kw, table, view in ROPE_CASES:
                if view:  # build the other layout, then transpose it into this one
                    shp = (lambda h: (B, S, h, D)) if layout == "bhsd" else (lambda h: (B, h, S, D))
                    q = torch.randn(shp(Hq), generator=gen).to(dtype).transpose(1, 2)
                    k = torch.randn(shp(Hk), generator=gen).to(dtype).transpose(1, 2)
                else:
                    shp = (lambda h: (B, h, S, D)) if layout == "bhsd" else (lambda h: (B, S, h, D))
                    q = torch.randn(shp(Hq), generator=gen).to(dtype)
                    k = torch.randn(shp(Hk), generator=gen).to(dtype)
                tb = {"b": (B, S, D), "1": (1, S, D), "2": (S, D)}[table]
                cos = torch.randn(tb, generator=gen)
                sin = torch.randn(tb, generator=gen)
                qo, ko = rope_triton(q, k, cos, sin, style, layout, **kw)
                ax = 1 if layout == "bhsd" else 2
                c3, s3 = (cos, sin) if cos.dim() == 3 else (cos[None], sin[None])
                c, s = c3.double().unsqueeze(ax), s3.double().unsqueeze(ax)
                for name, x, o in (("q", q, qo), ("k", k, ko)):
                    ref = x.double() * c + rot64(x.double(), style) * s
                    if not o.is_contiguous():
                        failures.append(f"rope {name} output not contiguous")
                    expect(f"rope {name} {dtype} {style} {layout} {(B, S, Hq, Hk, D)} {kw} table={table} view={view}",
                           o, ref, TOL[dtype])


# ---------------------------------------------------------------- attention
def attn64(q, k, v, causal, scale):
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    if causal:
        s = s.masked_fill(~torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1) @ v


# (B, Hq, Hkv, Sq, Skv, D), fixed launch config, q/k/v as transpose(1, 2) views of [B, S, H, D].
# Tiny K/V always fit in L2, so causal runs take the grid-wide longest-first order unless the
# config forces the per-head one (M_MAJOR=0).
ATTN_CASES = (
    ((1, 4, 2, 37, 29, 64), {"BLOCK_M": 16, "BLOCK_N": 16, "M_MAJOR": 0}, False),  # GQA 2, Sq > Skv, ragged
    ((1, 2, 1, 20, 45, 64), {"BLOCK_M": 32, "BLOCK_N": 16}, False),   # Sq < Skv
    ((2, 2, 2, 33, 33, 128), {"BLOCK_M": 16, "BLOCK_N": 32}, False),  # BLOCK_N > BLOCK_M
    ((2, 8, 2, 19, 23, 64), {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 8, "maxnreg": 128}, True),  # GQA 4, views
    ((2, 8, 2, 19, 23, 64), {"BLOCK_M": 16, "BLOCK_N": 16, "M_MAJOR": 0}, True),
    ((1, 4, 4, 1, 40, 128), {"BLOCK_M": 16, "BLOCK_N": 16}, False),   # decode-like: one query row
)


def attn_inputs(B, Hq, Hkv, Sq, Skv, D, dtype, view):
    if view:
        r = lambda h, s: torch.randn(B, s, h, D, generator=gen).to(dtype).transpose(1, 2)  # noqa: E731
    else:
        r = lambda h, s: torch.randn(B, h, s, D, generator=gen).to(dtype)  # noqa: E731
    return r(Hq, Sq), r(Hkv, Skv), r(Hkv, Skv)


# both kernel variants ("ptr": pointer loads, "tma": tensor descriptors) through the launcher
for variant in ("ptr", "tma"):
    for dtype in (torch.float16, torch.float32):
        for shape, cfg, view in ATTN_CASES:
            q, k, v = attn_inputs(*shape, dtype, view)
            for causal in (False, True):
                out = attention_triton(q, k, v, causal, None, config=cfg, variant=variant)
                expect(f"attention[{variant}] {dtype} {shape} causal={causal} {cfg} view={view}", out,
                       attn64(q, k, v, causal, None), ATOL[dtype])

# a q that TMA cannot read (base not 16-byte aligned): the module's "tma" choice falls back to the
# pointer kernel; asking for the TMA variant explicitly is an error
attn_mod = sys.modules["regionc.ops.attention"]
q, k, v = attn_inputs(1, 2, 1, 9, 9, 64, torch.float16, False)
q_odd = torch.randn(2 * 9 * 64 + 1, generator=gen).half()[1:].view(1, 2, 9, 64)
with pytest.MonkeyPatch.context() as mp:
    mp.setattr(attn_mod, "ATTENTION_VARIANT", "tma")
    expect("attention misaligned q, module choice tma -> ptr",
           attention_triton(q_odd, k, v, True, 0.2, config={"BLOCK_M": 16, "BLOCK_N": 16}),
           attn64(q_odd, k, v, True, 0.2), ATOL[torch.float16])
try:
    attention_triton(q_odd, k, v, True, None, config={"BLOCK_M": 16, "BLOCK_N": 16}, variant="tma")
    failures.append("attention misaligned q with variant='tma' did not raise")
except ValueError as exc:
    print(f"ok   attention misaligned q, variant='tma' raises: {exc}")

finish()
