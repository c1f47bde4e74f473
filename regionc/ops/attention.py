"""Attention forward with native GQA: Triton flash-attention (v2 style) kernel, launcher, torch
reference, op registration.

Op (namespace ``regionc``)::

    attention(Tensor q, Tensor k, Tensor v, bool causal, float? scale) -> Tensor

* q ``[B, Hq, Sq, D]``, k/v ``[B, Hkv, Skv, D]``, ``Hq % Hkv == 0``; query head ``h`` reads kv
  head ``h // (Hq // Hkv)`` (same as ``repeat_interleave(Hq // Hkv, dim=1)``, without the copies).
  Any strides on B/H/S (e.g. a ``transpose(1, 2)`` view of ``[B, S, H, D]``); a non-unit stride
  on D costs a copy. Output ``[B, Hq, Sq, D]`` contiguous, q's dtype.
* ``scale=None`` means ``1/sqrt(D)``.
* ``causal`` follows SDPA's ``is_causal``: top-left aligned, query i sees keys ``j <= i``
  (``torch.ones(Sq, Skv).tril()``), also when ``Sq != Skv``.
* CUDA: Triton kernel for bf16/fp16 with D in {64, 128}; anything else (fp32, other head dims, no
  Triton) falls back to SDPA on ``repeat_interleave``d k/v, logged once on ``logging.getLogger("regionc")``.
  CPU: the torch reference (fp32 SDPA on repeated k/v), no C++ kernel.
* Forward only: with grad mode on and an input requiring grad the op raises (RuntimeError).
* The kernel is autotuned (key: head dim, causal, power-of-two buckets of Sq and Skv, dtype). Run
  each new shape bucket once before CUDA-graph capture (the autotuner benchmarks on first use).
  Causal grids run the query blocks longest-first (FlashAttention-2's order) so the grid's last
  wave is the cheap blocks. ``benchmarks/kernels/bench_attention.py`` sweeps fixed configs per
  shape (no autotuner) to pick autotune-free per-head-dim choices from measurements.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from regionc.ops._utils import (
    FLOAT_DTYPES,
    HAS_TRITON,
    check,
    check_float_dtype,
    check_no_grad,
    check_same_device,
    check_tensor,
    define_op,
    log_once,
    needs_device_switch,
    next_power_of_2,
    register_cpu,
    tl,
    triton,
)

TRITON_HEAD_DIMS = (64, 128)
TRITON_DTYPES = (torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, lo, hi, SEQ_K, qk_scale,
        BLOCK_N: tl.constexpr, MASK_CAUSAL: tl.constexpr, MASK_K: tl.constexpr,
    ):
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            k_ptrs = k_base + cols[None, :].to(tl.int64) * stride_kn + offs_d[:, None]
            v_ptrs = v_base + cols[:, None].to(tl.int64) * stride_vn + offs_d[None, :]
            if MASK_K:
                k = tl.load(k_ptrs, mask=(cols < SEQ_K)[None, :], other=0.0)
            else:
                k = tl.load(k_ptrs)
            qk = tl.dot(q, k)
            if MASK_CAUSAL or MASK_K:
                if MASK_CAUSAL:
                    valid = (offs_m[:, None] >= cols[None, :]) & (cols < SEQ_K)[None, :]
                else:
                    valid = (cols < SEQ_K)[None, :]
                qk = tl.where(valid, qk * qk_scale, float("-inf"))
                m_ij = tl.maximum(m_i, tl.max(qk, 1))
                qk = qk - m_ij[:, None]
            else:
                m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                qk = qk * qk_scale - m_ij[:, None]
            p = tl.math.exp2(qk)
            l_ij = tl.sum(p, 1)
            alpha = tl.math.exp2(m_i - m_ij)
            acc = acc * alpha[:, None]
            if MASK_K:
                v = tl.load(v_ptrs, mask=(cols < SEQ_K)[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc = tl.dot(p.to(v.dtype), v, acc)
            l_i = l_i * alpha + l_ij
            m_i = m_ij
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, qk_scale,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_om,
        HQ, GROUP, SEQ_Q, SEQ_K,
        SQ_BUCKET, SK_BUCKET,  # autotune key only
        HEAD_DIM: tl.constexpr,
        CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        if CAUSAL:
            # longest rows first (FlashAttention-2's order): the last wave of the grid then holds
            # the cheapest query blocks instead of the most expensive ones
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            start_m = tl.program_id(0)
        off_bh = tl.program_id(1)
        b = (off_bh // HQ).to(tl.int64)
        h = off_bh % HQ
        kvh = (h // GROUP).to(tl.int64)
        h = h.to(tl.int64)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :]
        q = tl.load(q_ptrs, mask=(offs_m < SEQ_Q)[:, None], other=0.0)
        k_base = K + b * stride_kb + kvh * stride_kh
        v_base = V + b * stride_vb + kvh * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            # keys < start_m*BLOCK_M are visible to every row of this block: no causal mask there;
            # the diagonal tile(s) (and a ragged last key block) take the masked loop.
            hi = tl.minimum((start_m + 1) * BLOCK_M, SEQ_K)
            full_end = (tl.minimum(start_m * BLOCK_M, SEQ_K) // BLOCK_N) * BLOCK_N
        else:
            hi = SEQ_K
            full_end = (SEQ_K // BLOCK_N) * BLOCK_N
        # whole key blocks [0, full_end) unmasked, then [full_end, hi) with the key-bound mask
        # (and the causal mask when CAUSAL)
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
            0, full_end, SEQ_K, qk_scale, BLOCK_N, False, False,
        )
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
            full_end, hi, SEQ_K, qk_scale, BLOCK_N, CAUSAL, True,
        )
        acc = acc / l_i[:, None]
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m < SEQ_Q)[:, None])

    # Small, H100-minded list: compile time matters more than the last few percent.
    _AUTOTUNE_CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=4),
    ]

    _attn_fwd_tuned = triton.autotune(
        configs=_AUTOTUNE_CONFIGS, key=["HEAD_DIM", "CAUSAL", "SQ_BUCKET", "SK_BUCKET"]
    )(_attn_fwd_kernel)


def _seq_bucket(n: int) -> int:
    return min(next_power_of_2(max(int(n), 16)), 16384)


def attention_triton(q, k, v, causal: bool, scale: float | None, *, config: dict | None = None):
    """Launch the Triton kernel. ``config`` (keys BLOCK_M, BLOCK_N, optional num_warps,
    num_stages) bypasses the autotuner: tests use it under TRITON_INTERPRET=1."""
    if needs_device_switch(q):
        with torch.cuda.device(q.device):
            return attention_triton(q, k, v, causal, scale, config=config)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    B, HQ, SQ, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    o = torch.empty((B, HQ, SQ, D), dtype=q.dtype, device=q.device)
    if B * HQ * SQ == 0:
        return o
    sm_scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    qs, ks, vs, os_ = q.stride(), k.stride(), v.stride(), o.stride()
    args = (
        q, k, v, o, sm_scale * LOG2E,
        qs[0], qs[1], qs[2],
        ks[0], ks[1], ks[2],
        vs[0], vs[1], vs[2],
        os_[0], os_[1], os_[2],
        HQ, HQ // HKV, SQ, SK, _seq_bucket(SQ), _seq_bucket(SK),
    )
    if config is None:
        grid = lambda meta: (triton.cdiv(SQ, meta["BLOCK_M"]), B * HQ)  # noqa: E731
        _attn_fwd_tuned[grid](*args, HEAD_DIM=D, CAUSAL=bool(causal))
    else:
        cfg = dict(config)
        warps = cfg.pop("num_warps", 4)
        stages = cfg.pop("num_stages", 2)
        grid = (triton.cdiv(SQ, cfg["BLOCK_M"]), B * HQ)
        _attn_fwd_kernel[grid](*args, HEAD_DIM=D, CAUSAL=bool(causal), num_warps=warps, num_stages=stages, **cfg)
    return o


# --------------------------------------------------------------------------------------
# torch reference / fallback
# --------------------------------------------------------------------------------------


def attention_reference(q, k, v, causal: bool, scale: float | None, compute_dtype=torch.float32):
    """SDPA on repeat_interleave'd k/v in ``compute_dtype``; result in q's dtype, contiguous."""
    group = q.shape[1] // k.shape[1]
    if group != 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(
        q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype), is_causal=bool(causal), scale=scale
    )
    return out.to(q.dtype).contiguous()


def _sdpa_fallback(q, k, v, causal, scale):
    group = q.shape[1] // k.shape[1]
    if group != 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=scale).contiguous()


def triton_supported(q: torch.Tensor) -> bool:
    return HAS_TRITON and q.dtype in TRITON_DTYPES and q.shape[-1] in TRITON_HEAD_DIMS


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_attention(q, k, v, causal, scale) -> None:
    op = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, op)
        check_float_dtype(t, name, op)
        check(t.dim() == 4, f"regionc.attention: {name} must be 4-D [B, H, S, D], got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"regionc.attention: q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not isinstance(causal, bool):
        raise TypeError(f"regionc.attention: causal must be a bool, got {type(causal).__name__}")
    if scale is not None and not isinstance(scale, (float, int)):
        raise TypeError(f"regionc.attention: scale must be a float or None, got {type(scale).__name__}")
    check(k.shape[0] == q.shape[0], f"regionc.attention: k batch {k.shape[0]} != q batch {q.shape[0]}")
    check(k.shape[3] == q.shape[3], f"regionc.attention: k head_dim {k.shape[3]} != q head_dim {q.shape[3]}")
    for i, what in enumerate(("batch", "heads", "seq len", "head_dim")):
        check(v.shape[i] == k.shape[i], f"regionc.attention: v {what} {v.shape[i]} != k {what} {k.shape[i]}")
    check(k.shape[1] > 0, "regionc.attention: k has 0 heads")
    check(
        q.shape[1] % k.shape[1] == 0,
        f"regionc.attention: q heads {q.shape[1]} must be a multiple of k/v heads {k.shape[1]} (Hq % Hkv == 0)",
    )
    check_same_device(op, q=q, k=k, v=v)


def _attention_ok(q, k, v, causal, scale) -> bool:
    """Cheap happy-path validation for real tensors: plain attribute comparisons, no formatting."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    qs, ks = q.shape, k.shape
    return (
        q.dtype in FLOAT_DTYPES
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and v.shape == ks
        and ks[0] == qs[0]
        and ks[3] == qs[3]
        and ks[1] > 0
        and qs[1] % ks[1] == 0
        and k.get_device() == q.get_device()
        and v.get_device() == q.get_device()
    )


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _attention_cuda(q, k, v, causal, scale):
    """CUDA kernel (Triton), SDPA fallback for unsupported dtypes/head dims."""
    if not _attention_ok(q, k, v, causal, scale):
        _check_attention(q, k, v, causal, scale)
    check_no_grad("attention", q, k, v)
    if HAS_TRITON and (q.dtype == torch.float16 or q.dtype == torch.bfloat16) and q.shape[3] in TRITON_HEAD_DIMS:
        return attention_triton(q, k, v, causal, scale)
    log_once(
        f"attn-fallback-{q.dtype}-{q.shape[-1]}",
        "regionc.attention: no Triton kernel for dtype=%s head_dim=%s (triton=%s); using SDPA with repeat_interleave",
        q.dtype, q.shape[-1], HAS_TRITON,
    )
    return _sdpa_fallback(q, k, v, causal, scale)


def _attention_fake(q, k, v, causal, scale):
    _check_attention(q, k, v, causal, scale)
    check_no_grad("attention", q, k, v)
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], q.shape[3]))


def _attention_cpu(q, k, v, causal, scale):
    _check_attention(q, k, v, causal, scale)
    return attention_reference(q, k, v, causal, scale)


define_op(
    "attention", "(Tensor q, Tensor k, Tensor v, bool causal, float? scale) -> Tensor",
    cuda=_attention_cuda, fake=_attention_fake,
)
register_cpu("attention", _attention_cpu)
