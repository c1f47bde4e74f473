"""Rotary position embedding on q and k: Triton kernel, launcher, torch reference, op registration.

Op (namespace ``regionc``)::

    rope(Tensor q, Tensor k, Tensor cos, Tensor sin, str style, str layout) -> (Tensor q_out, Tensor k_out)

* ``layout``: ``"bhsd"`` (q ``[B, Hq, S, D]``) or ``"bshd"`` (q ``[B, S, Hq, D]``); k has the same
  layout with its own head count (GQA: Hk may differ from Hq). Any strides on the B/S/H dims are
  read as they are (e.g. a ``transpose(1, 2)`` view); a non-unit stride on D costs one copy.
* ``cos``/``sin``: ``[B or 1, S, D]`` (HF convention: full head_dim; also ``[S, D]``), fp32 or any
  float dtype, same shape for both.
* ``style="rotate_half"`` (Llama/NeoX): ``out = x*cos + cat(-x2, x1)*sin`` with x1/x2 the halves
  of the head dim. ``style="interleaved"`` (GPT-J): pairs ``(x[2i], x[2i+1])`` rotate together:
  ``out[2i] = x[2i]*cos[2i] - x[2i+1]*sin[2i]``, ``out[2i+1] = x[2i+1]*cos[2i+1] + x[2i]*sin[2i+1]``.
* Computed in fp32, outputs in q's dtype (k must share it), contiguous in the given layout.
  Functional: q and k are not modified.
"""

from __future__ import annotations

import torch

from regionc.ops import _extension
from regionc.ops._utils import (
    HAS_TRITON,
    check,
    check_float_dtype,
    check_same_device,
    check_tensor,
    cuda_guard,
    forbid_autograd,
    next_power_of_2,
    tl,
    triton,
)

STYLES = ("rotate_half", "interleaved")
LAYOUTS = ("bhsd", "bshd")

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _rope_heads(
        X, XO, base_in, base_out, stride_h_in, stride_h_out, H, h_start,
        c1, s1, c2, s2, offs_d, d_mask,
        HALF: tl.constexpr, BLOCK_H: tl.constexpr, INTERLEAVED: tl.constexpr,
    ):
        offs_h = h_start + tl.arange(0, BLOCK_H)
        mask = (offs_h < H)[:, None] & d_mask[None, :]
        p_in = X + base_in + offs_h[:, None].to(tl.int64) * stride_h_in
        p_out = XO + base_out + offs_h[:, None].to(tl.int64) * stride_h_out
        if INTERLEAVED:
            # offs_d covers the full head dim; partner of d is d ^ 1
            x = tl.load(p_in + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
            xp = tl.load(p_in + (offs_d ^ 1)[None, :], mask=mask, other=0.0).to(tl.float32)
            even = (offs_d % 2) == 0
            rot = tl.where(even[None, :], -xp, xp)
            out = x * c1[None, :] + rot * s1[None, :]
            tl.store(p_out + offs_d[None, :], out.to(XO.dtype.element_ty), mask=mask)
        else:
            # offs_d covers one half; load both halves separately (no gather)
            x1 = tl.load(p_in + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(p_in + HALF + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
            o1 = x1 * c1[None, :] - x2 * s1[None, :]
            o2 = x2 * c2[None, :] + x1 * s2[None, :]
            tl.store(p_out + offs_d[None, :], o1.to(XO.dtype.element_ty), mask=mask)
            tl.store(p_out + HALF + offs_d[None, :], o2.to(XO.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_fwd_kernel(
        Q, K, COS, SIN, QO, KO,
        sq_b, sq_s, sq_h,
        sk_b, sk_s, sk_h,
        sqo_b, sqo_s, sqo_h,
        sko_b, sko_s, sko_h,
        sc_b, sc_s, ss_b, ss_s,
        S, HQ, HK,
        D: tl.constexpr,
        HALF: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_HQ: tl.constexpr,
        BLOCK_HK: tl.constexpr,
        INTERLEAVED: tl.constexpr,
    ):
        """One program per (token, block of heads): cos/sin loaded once, then the q heads
        [pid_h*BLOCK_HQ, ...) and the k heads [pid_h*BLOCK_HK, ...)."""
        tok = tl.program_id(0)
        pid_h = tl.program_id(1)
        b = (tok // S).to(tl.int64)
        s = (tok % S).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        cbase = COS + b * sc_b + s * sc_s
        sbase = SIN + b * ss_b + s * ss_s
        if INTERLEAVED:
            d_mask = offs_d < D
            c1 = tl.load(cbase + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            s1 = tl.load(sbase + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            c2 = c1
            s2 = s1
        else:
            d_mask = offs_d < HALF
            c1 = tl.load(cbase + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            s1 = tl.load(sbase + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            c2 = tl.load(cbase + HALF + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            s2 = tl.load(sbase + HALF + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        _rope_heads(Q, QO, b * sq_b + s * sq_s, b * sqo_b + s * sqo_s, sq_h, sqo_h, HQ, pid_h * BLOCK_HQ,
                    c1, s1, c2, s2, offs_d, d_mask, HALF, BLOCK_HQ, INTERLEAVED)
        _rope_heads(K, KO, b * sk_b + s * sk_s, b * sko_b + s * sko_s, sk_h, sko_h, HK, pid_h * BLOCK_HK,
                    c1, s1, c2, s2, offs_d, d_mask, HALF, BLOCK_HK, INTERLEAVED)


def _bsh_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    if layout == "bhsd":
        return t.stride(0), t.stride(2), t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _dims(t: torch.Tensor, layout: str):
    """(B, S, H, D) of a 4-D q/k tensor."""
    if layout == "bhsd":
        return t.shape[0], t.shape[2], t.shape[1], t.shape[3]
    return t.shape[0], t.shape[1], t.shape[2], t.shape[3]


def _table_strides(c: torch.Tensor) -> tuple[int, int]:
    """(batch stride, seq stride) of a cos/sin table, batch stride 0 when broadcast."""
    if c.dim() == 2:
        return 0, c.stride(0)
    return (0 if c.shape[0] == 1 else c.stride(0)), c.stride(1)


def rope_triton(q, k, cos, sin, style: str, layout: str, *, heads_per_block: int | None = None):
    """Launch the Triton kernel; ``heads_per_block`` overrides the head-block size (tests)."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    B, S, HQ, D = _dims(q, layout)
    HK = k.shape[1] if layout == "bhsd" else k.shape[2]
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if B * S == 0 or D == 0:
        return qo, ko
    interleaved = style == "interleaved"
    block_d = next_power_of_2(D if interleaved else D // 2)
    cap = heads_per_block or max(1, 4096 // next_power_of_2(D))
    bhq = min(next_power_of_2(HQ), next_power_of_2(cap))
    bhk = min(next_power_of_2(HK), next_power_of_2(cap))
    n_hblocks = max(triton.cdiv(HQ, bhq), triton.cdiv(HK, bhk))
    elems = (bhq + bhk) * next_power_of_2(D)
    warps = 8 if elems >= 4096 else (4 if elems >= 1024 else 2)
    with cuda_guard(q):
        _rope_fwd_kernel[(B * S, n_hblocks)](
            q, k, cos, sin, qo, ko,
            *_bsh_strides(q, layout), *_bsh_strides(k, layout),
            *_bsh_strides(qo, layout), *_bsh_strides(ko, layout),
            *_table_strides(cos), *_table_strides(sin),
            S, HQ, HK,
            D=D, HALF=D // 2, BLOCK_D=block_d, BLOCK_HQ=bhq, BLOCK_HK=bhk, INTERLEAVED=interleaved,
            num_warps=warps,
        )
    return qo, ko


# --------------------------------------------------------------------------------------
# torch reference
# --------------------------------------------------------------------------------------


def _rotate(x: torch.Tensor, style: str) -> torch.Tensor:
    if style == "rotate_half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def rope_reference(q, k, cos, sin, style: str, layout: str, compute_dtype=torch.float32):
    """out = x*cos + rotate(x)*sin in ``compute_dtype``, rounded to q's dtype, contiguous."""
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    head_axis = 1 if layout == "bhsd" else 2
    c = cos.to(compute_dtype).unsqueeze(head_axis)
    s = sin.to(compute_dtype).unsqueeze(head_axis)

    def apply(x):
        xf = x.to(compute_dtype)
        return (xf * c + _rotate(xf, style) * s).to(q.dtype).contiguous()

    return apply(q), apply(k)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_rope(q, k, cos, sin, style, layout) -> None:
    op = "rope"
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_tensor(t, name, op)
        check_float_dtype(t, name, op)
    if style not in STYLES:
        raise ValueError(f"regionc.rope: style must be one of {STYLES}, got {style!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"regionc.rope: layout must be one of {LAYOUTS}, got {layout!r}")
    if k.dtype != q.dtype:
        raise TypeError(f"regionc.rope: k dtype {k.dtype} must equal q dtype {q.dtype}")
    check(q.dim() == 4, f"regionc.rope: q must be 4-D ({layout}), got shape {tuple(q.shape)}")
    check(k.dim() == 4, f"regionc.rope: k must be 4-D ({layout}), got shape {tuple(k.shape)}")
    B, S, _, D = _dims(q, layout)
    Bk, Sk, _, Dk = _dims(k, layout)
    check(Bk == B, f"regionc.rope: k batch {Bk} != q batch {B} (layout {layout})")
    check(Sk == S, f"regionc.rope: k seq len {Sk} != q seq len {S} (layout {layout})")
    check(Dk == D, f"regionc.rope: k head_dim {Dk} != q head_dim {D}")
    check(D % 2 == 0, f"regionc.rope: head_dim must be even, got {D}")
    check(cos.dim() in (2, 3), f"regionc.rope: cos must be [B or 1, S, D] (or [S, D]), got shape {tuple(cos.shape)}")
    check(sin.dim() == cos.dim(), f"regionc.rope: sin shape {tuple(sin.shape)} != cos shape {tuple(cos.shape)}")
    for i in range(cos.dim()):
        check(sin.shape[i] == cos.shape[i], f"regionc.rope: sin shape {tuple(sin.shape)} != cos shape {tuple(cos.shape)}")
    check(cos.shape[-1] == D, f"regionc.rope: cos/sin last dim {cos.shape[-1]} != head_dim {D}")
    check(cos.shape[-2] == S, f"regionc.rope: cos/sin seq dim {cos.shape[-2]} != q seq len {S}")
    if cos.dim() == 3 and not (isinstance(cos.shape[0], int) and cos.shape[0] == 1):
        check(cos.shape[0] == B, f"regionc.rope: cos/sin batch dim {cos.shape[0]} must be 1 or q batch {B}")
    check_same_device(op, q=q, k=k, cos=cos, sin=sin)


# --------------------------------------------------------------------------------------
# op registration
# --------------------------------------------------------------------------------------


@torch.library.custom_op("regionc::rope", mutates_args=(), device_types="cuda")
def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA kernel (Triton)."""
    _check_rope(q, k, cos, sin, style, layout)
    return rope_triton(q, k, cos, sin, style, layout)


@rope.register_fake
def _(q, k, cos, sin, style, layout):
    _check_rope(q, k, cos, sin, style, layout)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_cpu(q, k, cos, sin, style, layout):
    _check_rope(q, k, cos, sin, style, layout)
    return rope_reference(q, k, cos, sin, style, layout)


if not _extension.available():
    rope.register_kernel("cpu")(_rope_cpu)

forbid_autograd(rope, "rope")
