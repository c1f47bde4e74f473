"""RMSNorm and residual-add + RMSNorm: Triton kernel, launcher, torch reference, op registration.

Ops (namespace ``regionc``)::

    rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
    fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor normed, Tensor new_residual)

Numerics (all kernels, CPU and CUDA)::

    rstd = rsqrt(mean(x.float() ** 2, -1) + eps)
    out  = (x.float() * rstd * weight.float()).to(x.dtype)

i.e. the weight multiply happens in fp32 before the single rounding to ``x.dtype`` (HF Llama
rounds ``x * rstd`` to x.dtype first and then multiplies by the weight; ours rounds once, so it
is closer to a float64 reference). ``weight`` may have another float dtype than ``x`` (an fp32
weight with bf16 activations); the output always has ``x.dtype`` and ``x``'s shape, contiguous.

``fused_add_rms_norm`` is functional: ``new_residual = x + residual`` rounded to ``x.dtype``
(what eager's ``x + residual`` gives), ``normed = rms_norm(new_residual)``; nothing is written
in place, so it is safe inside Inductor graphs. ``residual`` must have x's shape and dtype.

Inputs whose last dim is not unit-stride (or whose rows cannot be viewed as a 2-D matrix) are
made contiguous by the launcher (one copy); outputs are always contiguous.
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
    next_power_of_2,
    forbid_autograd,
    tl,
    triton,
)

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

#: rows wider than this are processed in chunks (two passes over the row) instead of in registers
MAX_FUSED_BLOCK = 32768

if HAS_TRITON:

    @triton.jit
    def _rms_norm_fwd_kernel(
        X,
        R,
        W,
        Y,
        RES_OUT,
        stride_x,
        stride_r,
        stride_y,
        stride_ro,
        n_rows,
        N,
        eps,
        HAS_RES: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        LOOP: tl.constexpr,
    ):
        """ROWS rows per program. LOOP=False: the whole row (BLOCK_N >= N) lives in registers.
        LOOP=True: one row per program, chunks of BLOCK_N: pass 1 sums squares (and writes
        x + residual), pass 2 normalises."""
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        rows64 = rows.to(tl.int64)
        if not LOOP:
            cols = tl.arange(0, BLOCK_N)
            col_mask = cols < N
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
            if HAS_RES:
                r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
                x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
                tl.store(RES_OUT + rows64[:, None] * stride_ro + cols[None, :], x, mask=mask)
            xf = x.to(tl.float32)
            rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / N + eps)
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = xf * rstd[:, None] * w[None, :]
            tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
        else:
            # one row per program (ROWS == 1)
            row = pid.to(tl.int64)
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                m = cols < N
                x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
                if HAS_RES:
                    r = tl.load(R + row * stride_r + cols, mask=m, other=0.0)
                    x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
                    tl.store(RES_OUT + row * stride_ro + cols, x, mask=m)
                xf = x.to(tl.float32)
                acc += xf * xf
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                m = cols < N
                if HAS_RES:
                    x = tl.load(RES_OUT + row * stride_ro + cols, mask=m, other=0.0)
                else:
                    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
                w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
                y = x.to(tl.float32) * rstd * w
                tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=m)


def _launch_params(n_rows: int, n: int) -> tuple[int, int, int, bool]:
    """(BLOCK_N, ROWS, num_warps, LOOP) for a [n_rows, n] problem."""
    block = next_power_of_2(n)
    if block > MAX_FUSED_BLOCK:
        return 4096, 1, 8, True
    # narrow rows: several rows per program, about 4096 elements per program
    rows = 1
    if block <= 1024:
        rows = max(1, min(16, 4096 // block))
        # keep at least ~ 2 programs per SM-ish when the batch is small
        while rows > 1 and (n_rows + rows - 1) // rows < 128:
            rows //= 2
    elems = block * rows
    if elems >= 32768:
        warps = 32 if elems >= 65536 else 16
    elif elems >= 8192:
        warps = 16
    elif elems >= 2048:
        warps = 8
    else:
        warps = 4
    return block, rows, warps, False


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t2 = t.reshape(-1, n)
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    rows: int | None = None,
    loop: bool | None = None,
):
    """Launch the Triton kernel. Returns ``y`` or ``(y, x + residual)`` when residual is given.

    ``block_n``/``rows``/``loop`` override the heuristics (tests use them to exercise the
    multi-row and chunked paths on tiny shapes under TRITON_INTERPRET=1)."""
    n = x.shape[-1]
    x2 = _as_rows(x, n)
    m = x2.shape[0]
    w = weight if weight.stride(0) == 1 else weight.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = _as_rows(residual, n)
        res_out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        r2, res_out = x2, y  # unused (HAS_RES=False)
    block, rws, warps, lp = _launch_params(m, n)
    if block_n is not None:
        block = block_n
    if rows is not None:
        rws = rows
    if loop is not None:
        lp = loop
    if lp:
        rws = 1
    if m > 0 and n > 0:
        with cuda_guard(x):
            _rms_norm_fwd_kernel[(triton.cdiv(m, rws),)](
                x2, r2, w, y, res_out,
                x2.stride(0), r2.stride(0), y.stride(0), res_out.stride(0),
                m, n, eps,
                HAS_RES=residual is not None, ROWS=rws, BLOCK_N=block, LOOP=lp,
                num_warps=warps,
            )
    y = y.view(x.shape)
    if residual is None:
        return y
    return y, res_out.view(x.shape)


# --------------------------------------------------------------------------------------
# torch reference (CPU kernel when regionc._C is absent; also the test oracle's cousin)
# --------------------------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.float()).to(x.dtype).contiguous()


def fused_add_rms_norm_reference(x, residual, weight, eps):
    new_res = (x + residual).contiguous()
    return rms_norm_reference(new_res, weight, eps), new_res


# --------------------------------------------------------------------------------------
# validation (shared by fake and real kernels; works on symbolic sizes)
# --------------------------------------------------------------------------------------


def _check_rms(op: str, x, weight, eps, residual=None) -> None:
    check_tensor(x, "x", op)
    check_tensor(weight, "weight", op)
    check_float_dtype(x, "x", op)
    check_float_dtype(weight, "weight", op)
    check(x.dim() >= 1, f"regionc.{op}: x must have at least 1 dim, got a scalar")
    check(weight.dim() == 1, f"regionc.{op}: weight must be 1-D [hidden], got shape {tuple(weight.shape)}")
    check(
        weight.shape[0] == x.shape[-1],
        f"regionc.{op}: weight has {weight.shape[0]} elements but x's last (hidden) dim is {x.shape[-1]}",
    )
    if not isinstance(eps, (float, int)):
        raise TypeError(f"regionc.{op}: eps must be a float, got {type(eps).__name__}")
    if residual is not None:
        check_tensor(residual, "residual", op)
        if residual.dtype != x.dtype:
            raise TypeError(f"regionc.{op}: residual dtype {residual.dtype} must equal x dtype {x.dtype}")
        check(residual.dim() == x.dim(), f"regionc.{op}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        for i in range(x.dim()):
            check(
                residual.shape[i] == x.shape[i],
                f"regionc.{op}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}",
            )
        check_same_device(op, x=x, weight=weight, residual=residual)
    else:
        check_same_device(op, x=x, weight=weight)


# --------------------------------------------------------------------------------------
# op registration
# --------------------------------------------------------------------------------------


@torch.library.custom_op("regionc::rms_norm", mutates_args=(), device_types="cuda")
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """CUDA kernel (Triton)."""
    _check_rms("rms_norm", x, weight, eps)
    return rms_norm_triton(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    _check_rms("rms_norm", x, weight, eps)
    return x.new_empty(x.shape)


@torch.library.custom_op("regionc::fused_add_rms_norm", mutates_args=(), device_types="cuda")
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA kernel (Triton)."""
    _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    return rms_norm_triton(x, weight, eps, residual)


@fused_add_rms_norm.register_fake
def _(x, residual, weight, eps):
    _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _rms_norm_cpu(x, weight, eps):
    _check_rms("rms_norm", x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def _fused_add_rms_norm_cpu(x, residual, weight, eps):
    _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    return fused_add_rms_norm_reference(x, residual, weight, eps)


if not _extension.available():
    # regionc._C registers C++ CPU kernels for these ops; register the references only without it
    rms_norm.register_kernel("cpu")(_rms_norm_cpu)
    fused_add_rms_norm.register_kernel("cpu")(_fused_add_rms_norm_cpu)

forbid_autograd(rms_norm, "rms_norm")
forbid_autograd(fused_add_rms_norm, "fused_add_rms_norm")
