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

CUDA launch heuristic (``_compute_params``, cached per power-of-two bucket of the row count):
rows up to 32768 wide live in registers, one row per program, ``num_warps`` by width as in
Liger-Kernel / Inductor's persistent reductions (4 up to 1024, 8 up to 4096, 16 up to 32768);
rows narrower than 1024 take several rows per program (up to 16, about 4096 elements) as long
as the grid keeps two programs per SM; wider rows loop over 4096-element chunks (two passes).
One program per row block, launched through the Triton JIT; CUDA-graph safe (no host sync, the
outputs are the only allocations). Launch variants (a persistent grid, L2 eviction hints, a cached
launch that skips the JIT's per-call argument binding) were measured and not kept: on an H100 none
was more than 0.8% faster in geomean GB/s over the bandwidth shapes or 0.11 us faster at 8x4096 (the
cached launch cut a call's host time from 44 to 18 us, not its latency), and the decision table never
swaps the op in (``benchmarks/experiments/norm_rope_launch_variants.py``,
``benchmarks/results/rms_norm/h100-2026-11-25.json``).

``benchmarks/kernels/bench_rms_norm.py`` times the op against eager torch, Inductor, Liger and a
plain copy of the same bytes on the TARGETS shapes.
"""

from __future__ import annotations

import torch

from regionc.ops import _extension, _utils
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

#: rows wider than this are processed in chunks (two passes over the row) instead of in registers
MAX_FUSED_BLOCK = 32768

if _utils.HAS_TRITON:

    @triton.jit
    def _rms_norm_fwd_kernel(
        X,
        R,
        W,
        Y,
        RES_OUT,
        stride_x,
        stride_r,
        n_rows,
        N,
        eps,
        HAS_RES: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        LOOP: tl.constexpr,
    ):
        """Y and RES_OUT are contiguous [n_rows, N].

        * LOOP=False: program i owns rows [i*ROWS, (i+1)*ROWS); the whole row (BLOCK_N >= N)
          lives in registers. The weight is loaded after the reduction, so it holds no registers
          while x is reduced.
        * LOOP=True: one row per program (ROWS == 1), chunks of BLOCK_N: pass 1 sums squares (and
          writes x + residual), pass 2 normalises."""
        pid = tl.program_id(0)
        if not LOOP:
            cols = tl.arange(0, BLOCK_N)
            col_mask = cols < N
            rows = pid * ROWS + tl.arange(0, ROWS)
            rows64 = rows.to(tl.int64)
            mask = (rows < n_rows)[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
            if HAS_RES:
                r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
                x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
                tl.store(RES_OUT + rows64[:, None] * N + cols[None, :], x, mask=mask)
            xf = x.to(tl.float32)
            rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / N + eps)
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = xf * rstd[:, None] * w[None, :]
            tl.store(Y + rows64[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
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
                    tl.store(RES_OUT + row * N + cols, x, mask=m)
                xf = x.to(tl.float32)
                acc += xf * xf
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                m = cols < N
                if HAS_RES:
                    x = tl.load(RES_OUT + row * N + cols, mask=m, other=0.0)
                else:
                    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0)
                w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
                y = x.to(tl.float32) * rstd * w
                tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=m)


#: (at least this many elements in a tile, num_warps), largest first
_WARP_STEPS = ((65536, 32), (8192, 16), (2048, 8))


def _warps_for(elems: int) -> int:
    """num_warps for a tile of ``elems`` elements held in registers (Liger / Inductor-like:
    ~8-16 elements per thread, at most 32 warps)."""
    return next((warps for at_least, warps in _WARP_STEPS if elems >= at_least), max(1, min(4, elems // 256)))


def _compute_params(n_rows: int, n: int, sms: int) -> tuple[int, int, int, bool]:
    block = _utils.next_power_of_2(n)
    if block > MAX_FUSED_BLOCK:
        return 4096, 1, 8, True
    rows = 1
    if block < 1024:
        # narrow rows: several rows per program (about 2048-4096 elements per program), but
        # keep at least two programs per SM so small batches still spread over the GPU
        rows = max(1, min(16, 4096 // block))
        while rows > 1 and (n_rows + rows - 1) // rows < 2 * sms:
            rows //= 2
    return block, rows, _warps_for(block * rows), False


#: (row-count bucket, hidden size, SM count) -> (BLOCK_N, ROWS, num_warps, LOOP)
_PARAMS: dict[tuple[int, int, int], tuple[int, int, int, bool]] = {}


def _launch_params(n_rows: int, n: int, sms: int = 132) -> tuple[int, int, int, bool]:
    """(BLOCK_N, ROWS, num_warps, LOOP) for a [n_rows, n] problem, cached per power-of-two bucket
    of n_rows (the heuristic runs on the bucket's lower bound, so it never under-fills the GPU)."""
    key = (n_rows.bit_length(), n, sms)
    p = _PARAMS.get(key)
    if p is None:
        p = _PARAMS[key] = _compute_params(1 << max(key[0] - 1, 0), n, sms)
    return p


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    rows: int | None = None,
    loop: bool | None = None,
    num_warps: int | None = None,
):
    """Launch the Triton kernel. Returns ``y`` or ``(y, x + residual)`` when residual is given.

    ``block_n``/``rows``/``loop``/``num_warps`` override the heuristics (tests use them to exercise
    the multi-row and chunked paths on tiny shapes under TRITON_INTERPRET=1).

    Rows are read in place when the last dim is unit-stride (a copy otherwise); one program per
    block of ``ROWS`` rows."""
    if _utils.needs_device_switch(x):
        with torch.cuda.device(x.device):
            return rms_norm_triton(x, weight, eps, residual, block_n=block_n, rows=rows, loop=loop,
                                   num_warps=num_warps)
    n = x.shape[-1]
    if x.is_contiguous():
        x2, sx = x, n
        m = x.numel() // n if n else 0
        y = torch.empty_like(x)
    else:
        x2 = _as_rows(x, n)
        sx, m = x2.stride(0), x2.shape[0]
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    w = weight if weight.is_contiguous() else weight.contiguous()
    if residual is not None:
        if residual.is_contiguous():
            r2, sr = residual, n
        else:
            r2 = _as_rows(residual, n)
            sr = r2.stride(0)
        res_out = torch.empty_like(y)
    else:
        r2, sr, res_out = x2, sx, y  # unused (HAS_RES=False)
    if m == 0 or n == 0:
        return y if residual is None else (y, res_out)
    block, rws, warps, lp = _launch_params(m, n, _utils.sm_count(x))
    if block_n is not None or rows is not None or loop is not None or num_warps is not None:
        block = block_n or block
        rws = rows or rws
        lp = lp if loop is None else loop
        if lp:
            rws = 1
        warps = num_warps or warps
    _rms_norm_fwd_kernel[((m + rws - 1) // rws,)](
        x2, r2, w, y, res_out, sx, sr, m, n, float(eps), residual is not None, rws, block, lp, num_warps=warps)
    return y if residual is None else (y, res_out)


def _as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t2 = t.reshape(-1, n)
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


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
# validation
# --------------------------------------------------------------------------------------


def _check_rms(op: str, x, weight, eps, residual=None) -> None:
    """Full validation with messages naming the bad argument; works on symbolic sizes (fake
    kernels). The real kernels run ``_rms_ok`` first and call this only when it fails."""
    _utils.check_tensor(x, "x", op)
    _utils.check_tensor(weight, "weight", op)
    _utils.check_float_dtype(x, "x", op)
    _utils.check_float_dtype(weight, "weight", op)
    check(x.dim() >= 1, f"regionc.{op}: x must have at least 1 dim, got a scalar")
    check(weight.dim() == 1, f"regionc.{op}: weight must be 1-D [hidden], got shape {tuple(weight.shape)}")
    check(
        weight.shape[0] == x.shape[-1],
        f"regionc.{op}: weight has {weight.shape[0]} elements but x's last (hidden) dim is {x.shape[-1]}",
    )
    if not isinstance(eps, (float, int)):
        raise TypeError(f"regionc.{op}: eps must be a float, got {type(eps).__name__}")
    if residual is not None:
        _utils.check_tensor(residual, "residual", op)
        if residual.dtype != x.dtype:
            raise TypeError(f"regionc.{op}: residual dtype {residual.dtype} must equal x dtype {x.dtype}")
        check(residual.dim() == x.dim(), f"regionc.{op}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        for i in range(x.dim()):
            check(
                residual.shape[i] == x.shape[i],
                f"regionc.{op}: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}",
            )
        _utils.check_same_device(op, x=x, weight=weight, residual=residual)
    else:
        _utils.check_same_device(op, x=x, weight=weight)


def _rms_ok(x, weight, residual) -> bool:
    """Cheap happy-path validation for real (non-symbolic) tensors: plain attribute comparisons,
    no string formatting. False means "run _check_rms", which raises the named error."""
    return (
        x.dtype in FLOAT_DTYPES
        and weight.dtype in FLOAT_DTYPES
        and weight.dim() == 1
        and x.dim() >= 1
        and weight.shape[0] == x.shape[-1]
        and weight.get_device() == x.get_device()
        and (
            residual is None
            or (residual.dtype == x.dtype and residual.shape == x.shape and residual.get_device() == x.get_device())
        )
    )


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _rms_norm_cuda(x, weight, eps):
    if not _rms_ok(x, weight, None):
        _check_rms("rms_norm", x, weight, eps)
    _utils.check_no_grad("rms_norm", x, weight)
    return rms_norm_triton(x, weight, eps)


def _fused_add_rms_norm_cuda(x, residual, weight, eps):
    if not _rms_ok(x, weight, residual):
        _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    _utils.check_no_grad("fused_add_rms_norm", x, residual, weight)
    return rms_norm_triton(x, weight, eps, residual)


def _rms_norm_fake(x, weight, eps):
    _check_rms("rms_norm", x, weight, eps)
    _utils.check_no_grad("rms_norm", x, weight)
    return x.new_empty(x.shape)


def _fused_add_rms_norm_fake(x, residual, weight, eps):
    _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    _utils.check_no_grad("fused_add_rms_norm", x, residual, weight)
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _rms_norm_cpu(x, weight, eps):
    _check_rms("rms_norm", x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def _fused_add_rms_norm_cpu(x, residual, weight, eps):
    _check_rms("fused_add_rms_norm", x, weight, eps, residual)
    return fused_add_rms_norm_reference(x, residual, weight, eps)


_utils.define_op(
    "rms_norm", "(Tensor x, Tensor weight, float eps) -> Tensor", cuda=_rms_norm_cuda, fake=_rms_norm_fake
)
_utils.define_op(
    "fused_add_rms_norm", "(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)",
    cuda=_fused_add_rms_norm_cuda, fake=_fused_add_rms_norm_fake,
)
if not _extension.available():
    # regionc._C registers C++ CPU kernels for these ops; register the references only without it
    _utils.register_cpu("rms_norm", _rms_norm_cpu)
    _utils.register_cpu("fused_add_rms_norm", _fused_add_rms_norm_cpu)
