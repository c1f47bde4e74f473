"""Linears over few rows (decode), several weights that read one input in one launch: Triton
kernel, launcher, torch reference, op registration.

Ops (namespace ``regionc``)::

    skinny_linear(Tensor x, Tensor[] weights, int splits=1) -> Tensor[]
    skinny_swiglu(Tensor x, Tensor w_gate, Tensor w_up) -> Tensor

* x ``[M, K]``; each weight ``[N_i, K]`` as ``nn.Linear`` stores it (any row stride, unit stride
  on K). Output ``i`` is ``[splits, M, N_i]`` in fp32: partial products over ``splits`` ranges of
  K whose sum over dim 0 is ``x @ weights[i].T`` (how K is divided is the kernel's business).
  x and the weights share one float dtype.
* Why partials: at ``M`` ≤ ``MAX_ROWS`` a linear is a read of its weight, and a 2048 × 2048
  weight cut into 32-column slabs is 64 programs on a 132-SM GPU — too few to keep HBM busy
  (cuBLAS reads it at a third of copy bandwidth on an H200). Splitting K multiplies the programs;
  the sum of the partials, the bias and the cast to the model's dtype are left to the graph, where
  Inductor folds them into the consumer's kernel (RoPE, the residual add, SiLU·mul) as a few extra
  loads: no reduction launch, no zeroed workspace, no atomics, the same result on every run.
  ``passes/skinny_linear.py`` emits that; ``splits_for`` picks the split count from the shapes.

Why several weights in one call: the projections that read the same input (q, k and v; gate and
up) are small alone (a k projection is 512 columns: 16 programs); one launch over all of them
fills the GPU. The weights stay where the model keeps them — nothing is packed or copied — so an
in-place update of a weight (``load_state_dict``, a LoRA merge, a weight swap between requests)
is read on the next call, as by the linears this op replaces.

``skinny_swiglu`` is a SwiGLU MLP's first half, ``silu(x @ w_gate.T) * (x @ w_up.T)`` in x's dtype,
``[M, N]``: gate and up read the same input and are consumed only by that product, so one kernel
computes both over the whole of K and applies the product in its epilogue — no fp32 partials
written and read back, and no pointwise launch between the projection and ``down`` (one launch a
decoder layer fewer). Each product rounds as the model's graph does: both projections to x's
dtype, SiLU to x's dtype, the product to x's dtype. Without a K split a program reads
``2 × BLOCK_N × K`` weights, so the swap is only worth it where the column blocks alone fill the
GPU (``SWIGLU_MIN_PROGRAMS``, checked by the pass).

CUDA kernel ``_skinny_kernel`` (bf16/fp16/fp32): grid ``(column blocks of all weights, splits,
row blocks)``; a program owns ``BLOCK_N`` output columns of one weight, one range of K and every
row of its row block, streams that ``BLOCK_N × K / splits`` slab of the weight once through a
``num_stages`` software pipeline, and multiplies with ``tl.dot`` in fp32. Launch parameters come
from ``_config`` (measured by benchmarks/kernels/bench_skinny_linear.py). Past ``MAX_ROWS`` rows
the op computes with torch's linear, and the launcher launches again for every ``MAX_WEIGHTS``
weights: the op is correct for any size, fast where it is meant to be.

On Hopper and newer both kernels launch with programmatic dependent launch (``regionc/ops/pdl.py``):
a program first asks L2 for the first ``PREFETCH_STEPS`` K-steps of its weights, then waits for the
kernel before it (which writes x) and reads nothing before that.
"""

from __future__ import annotations

import torch

from regionc.logs import log_once
from regionc.ops import _utils
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton
from regionc.ops.pdl import launch_args

#: most rows the Triton kernel takes; more rows are a GEMM's job (cuBLAS)
MAX_ROWS = 64
#: weights per launch (the kernel's pointer slots)
MAX_WEIGHTS = 4
#: programs a launch aims at when ``splits_for`` picks the split count: a few per SM of a 132-SM
#: H100/H200 (benchmarks/results/skinny_linear/, ``split_sweep``)
TARGET_PROGRAMS = 512
#: fewest programs (column blocks × row blocks) ``skinny_swiglu`` is swapped in with: about two per
#: SM of a 132-SM GPU; below that, ``skinny_linear``'s K split keeps more of HBM busy
SWIGLU_MIN_PROGRAMS = 256
#: K-steps of its weight slab a program asks L2 for before it waits for the kernel before it (under
#: PDL, ``regionc/ops/pdl.py``): two steps of every program of a 2048-wide decoder layer's linears
#: are 8 to 13 MB, what HBM moves in the 2 to 3 µs of the norm or attention reduce before them,
#: and well inside L2, so the prefetched lines are still there when the program reads them
PREFETCH_STEPS = 2

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if _utils.HAS_TRITON:
    from regionc.ops.pdl import prefetch_rows, start

    @triton.jit
    def _tile(ptrs, rows_ok, k_left, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
        """One [rows, BLOCK_K] tile: masked on rows, and on K past ``k_left`` unless every step is whole."""
        if EVEN_K:
            return tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        k_ok = tl.arange(0, BLOCK_K) < k_left
        return tl.load(ptrs, mask=rows_ok[:, None] & k_ok[None, :], other=0.0)

    @triton.jit
    def _prefetch_weight(w, offs_n, n_cols, sw, k_lo, K, BLOCK_K: tl.constexpr, LINES: tl.constexpr,
                         STEPS: tl.constexpr):
        """Ask L2 for the first ``STEPS`` K-steps of a program's slab of a weight (one address per
        128-byte line; ``LINES`` lines a row a step), addresses clamped into the weight. The
        launcher passes ``STEPS`` = 0 (nothing) unless the kernel launches with PDL."""
        lines = tl.arange(0, LINES) * (BLOCK_K // LINES)
        for s in tl.static_range(STEPS):
            prefetch_rows(w, offs_n, n_cols - 1, sw, tl.minimum(k_lo + s * BLOCK_K + lines, K - 1))

    # The per-weight values are chosen at run time by branch, so each must keep one type: a column
    # count may be 1, which Triton would turn into a constant, so those are not specialised. The
    # row strides are (the launcher never passes 1): their divisibility by 16, like the pointers'
    # alignment, is what lets the weight loads be 16-byte vectors.
    @triton.jit(do_not_specialize=[f"N{i}" for i in range(4)])
    def _skinny_kernel(
        X, W0, W1, W2, W3, Y0, Y1, Y2, Y3,
        M, K, K_SPLIT, stride_xm,
        N0, N1, N2, N3, SW0, SW1, SW2, SW3,
        NUM_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
        PDL: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        pid = tl.program_id(0)
        split = tl.program_id(1)
        pid_m = tl.program_id(2)
        # which weight this column block belongs to: weights are laid end to end over the grid
        c1 = tl.cdiv(N0, BLOCK_N)
        c2 = c1 + tl.cdiv(N1, BLOCK_N)
        c3 = c2 + tl.cdiv(N2, BLOCK_N)
        which = (pid >= c1).to(tl.int32) + (pid >= c2).to(tl.int32) + (pid >= c3).to(tl.int32)
        w, y, n_cols, sw, blk = W0, Y0, N0, SW0, pid
        if NUM_W > 1:
            if which == 1:
                w, y, n_cols, sw, blk = W1, Y1, N1, SW1, pid - c1
        if NUM_W > 2:
            if which == 2:
                w, y, n_cols, sw, blk = W2, Y2, N2, SW2, pid - c2
        if NUM_W > 3:
            if which == 3:
                w, y, n_cols, sw, blk = W3, Y3, N3, SW3, pid - c3

        # this program's range of K: [k_lo, k_lo + k_len), K_SPLIT a multiple of BLOCK_K (the last
        # split may be shorter, or empty: it then writes zeros)
        k_lo = split * K_SPLIT
        k_len = tl.minimum(K - k_lo, K_SPLIT)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < n_cols
        _prefetch_weight(w, offs_n, n_cols, sw, k_lo, K, BLOCK_K, LINES, PREFETCH)
        start(PDL)
        x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + k_lo + offs_k[None, :]
        w_ptrs = w + offs_n[:, None].to(tl.int64) * sw + k_lo + offs_k[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(k_len, BLOCK_K)):
            xt = _tile(x_ptrs, m_ok, k_len - k * BLOCK_K, BLOCK_K, EVEN_K)
            wt = _tile(w_ptrs, n_ok, k_len - k * BLOCK_K, BLOCK_K, EVEN_K)
            acc += tl.dot(xt, tl.trans(wt), input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        rows = split * M + offs_m
        tl.store(y + rows[:, None].to(tl.int64) * n_cols + offs_n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _swiglu_kernel(
        X, WG, WU, Y, M, N, K, stride_xm, stride_wg, stride_wu, stride_ym,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
        DOT_PRECISION: tl.constexpr, PDL: tl.constexpr, LINES: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < N
        _prefetch_weight(WG, offs_n, N, stride_wg, 0, K, BLOCK_K, LINES, PREFETCH)
        _prefetch_weight(WU, offs_n, N, stride_wu, 0, K, BLOCK_K, LINES, PREFETCH)
        start(PDL)
        x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
        g_ptrs = WG + offs_n[:, None].to(tl.int64) * stride_wg + offs_k[None, :]
        u_ptrs = WU + offs_n[:, None].to(tl.int64) * stride_wu + offs_k[None, :]
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            xt = _tile(x_ptrs, m_ok, K - k * BLOCK_K, BLOCK_K, EVEN_K)
            gt = _tile(g_ptrs, n_ok, K - k * BLOCK_K, BLOCK_K, EVEN_K)
            ut = _tile(u_ptrs, n_ok, K - k * BLOCK_K, BLOCK_K, EVEN_K)
            acc_g += tl.dot(xt, tl.trans(gt), input_precision=DOT_PRECISION)
            acc_u += tl.dot(xt, tl.trans(ut), input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        dt = Y.dtype.element_ty
        g = acc_g.to(dt).to(tl.float32)  # each projection rounds to the model's dtype, as its linear does
        u = acc_u.to(dt).to(tl.float32)
        act = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
        tl.store(Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :], (act * u).to(dt),
                 mask=m_ok[:, None] & n_ok[None, :])


# --------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------


def _config(rows: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): 32 columns × 128 of K per step in a
    3-deep pipeline. With K split, the best or within 0.2 µs of it for all four projections of a
    2048-wide GQA layer at 8 rows on an H200 (q/k/v 6.4 µs, o 5.2, gate/up 20.7, down 11.5, against
    cuBLAS's 17.7, 6.2, 23.5, 14.0; benchmarks/results/skinny_linear/h200-2026-12-03-split-k-sweep.json,
    ``config_sweep``)."""
    return max(16, _utils.next_power_of_2(rows)), 32, min(128, max(32, _utils.next_power_of_2(k))), 4, 3


def splits_for(rows: int, columns: list[int], k: int, most: int) -> int:
    """The split count (a power of two, at most ``most``) that brings a launch over weights of
    ``columns`` output columns each to ``TARGET_PROGRAMS`` programs, as long as every split keeps
    at least one full ``BLOCK_K`` step of K."""
    bm, bn, bk, _, _ = _config(rows, k)
    programs = sum(-(-n // bn) for n in columns) * -(-rows // bm)
    splits = 1
    while splits * 2 <= most and programs * splits < TARGET_PROGRAMS and k // (splits * 2) >= bk:
        splits *= 2
    return splits


def _pdl_args(x: torch.Tensor, block_k: int) -> dict:
    """The kernels' PDL arguments (``pdl.launch_args``), the 128-byte lines in a row of one
    ``block_k`` step, and the steps prefetched (none without PDL)."""
    args = launch_args(x)
    return {**args, "LINES": max(1, block_k * x.element_size() // 128),
            "PREFETCH": PREFETCH_STEPS if args["PDL"] else 0}


def skinny_linear_triton(x, weights, splits: int = 1, *, config: tuple[int, int, int, int, int] | None = None):
    """Launch ``_skinny_kernel`` over ``weights`` (in launches of at most ``MAX_WEIGHTS``).

    ``config`` overrides ``_config`` (tests use it to exercise ragged blocks on tiny shapes under
    TRITON_INTERPRET=1; the benchmark sweeps it)."""
    if _utils.needs_device_switch(x):
        with torch.cuda.device(x.device):
            return skinny_linear_triton(x, weights, splits, config=config)
    (x,) = _utils.unit_stride_last(x)
    weights = _utils.unit_stride_last(*weights)
    M, K = x.shape
    outs = [torch.empty((splits, M, w.shape[0]), dtype=torch.float32, device=x.device) for w in weights]
    if M == 0:
        return outs
    if K == 0:
        return [o.zero_() for o in outs]
    bm, bn, bk, warps, stages = config or _config(M, K)
    k_split = -(-K // (splits * bk)) * bk  # whole BLOCK_K steps per split
    pdl = _pdl_args(x, bk)
    for lo in range(0, len(weights), MAX_WEIGHTS):
        ws, ys = weights[lo:lo + MAX_WEIGHTS], outs[lo:lo + MAX_WEIGHTS]
        n = len(ws)
        blocks = sum(-(-w.shape[0] // bn) for w in ws)
        pad = MAX_WEIGHTS - n
        sizes = [w.shape[0] for w in ws] + [0] * pad
        # a one-row weight's row stride is never used: K keeps every stride a non-constant
        strides = [w.stride(0) if w.shape[0] > 1 else K for w in ws] + [K] * pad
        _skinny_kernel[(blocks, splits, -(-M // bm))](
            x, *ws, *[x] * pad, *ys, *[x] * pad,  # unused slots: x (never written; no output aliased)
            M, K, k_split, x.stride(0),
            *sizes, *strides,
            NUM_W=n, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0,
            DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            num_warps=warps, num_stages=stages, **pdl,
        )
    return outs


def swiglu_programs(rows: int, columns: int, k: int) -> int:
    """Programs ``skinny_swiglu``'s kernel launches for ``rows`` × ``columns`` outputs."""
    bm, bn, _, _, _ = _config(rows, k)
    return -(-columns // bn) * -(-rows // bm)


def skinny_swiglu_triton(x, w_gate, w_up, *, config: tuple[int, int, int, int, int] | None = None):
    """Launch ``_swiglu_kernel`` (``config`` overrides ``_config``, as for ``skinny_linear_triton``)."""
    if _utils.needs_device_switch(x):
        with torch.cuda.device(x.device):
            return skinny_swiglu_triton(x, w_gate, w_up, config=config)
    x, w_gate, w_up = _utils.unit_stride_last(x, w_gate, w_up)
    M, K = x.shape
    N = w_gate.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    bm, bn, bk, warps, stages = config or _config(M, K)
    _swiglu_kernel[(-(-N // bn), -(-M // bm))](
        x, w_gate, w_up, out, M, N, K, x.stride(0), w_gate.stride(0), w_up.stride(0), out.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages,
        **_pdl_args(x, bk),
    )
    return out


def triton_supported(x: torch.Tensor) -> bool:
    """Few rows, a float dtype, and K past one (a weight's row stride of 1 would become a constant)."""
    return _utils.HAS_TRITON and x.dtype in FLOAT_DTYPES and x.shape[0] <= MAX_ROWS and x.shape[1] > 1


# --------------------------------------------------------------------------------------
# torch reference (the CPU kernel, the CUDA path past MAX_ROWS, the tests' oracle)
# --------------------------------------------------------------------------------------


def skinny_linear_reference(x, weights, splits: int = 1):
    """fp32 partial products over ``splits`` near-equal ranges of K (an empty range gives zeros),
    computed with torch's matmul on views of x and the weights."""
    xf, k = x.float(), x.shape[1]
    bounds = [k * i // splits for i in range(splits + 1)]
    return [torch.stack([xf[:, lo:hi] @ w[:, lo:hi].float().T for lo, hi in zip(bounds, bounds[1:])])
            for w in weights]


def skinny_swiglu_reference(x, w_gate, w_up):
    """``silu(x @ w_gate.T) * (x @ w_up.T)`` with torch's linear, in x's dtype (a SwiGLU MLP's eager code)."""
    return torch.nn.functional.silu(torch.nn.functional.linear(x, w_gate)) * torch.nn.functional.linear(x, w_up)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

_OP = "skinny_linear"
_SWIGLU = "skinny_swiglu"


def _check(x, weights, splits, op: str = _OP) -> None:
    """Full validation with messages naming the bad argument; works on symbolic sizes."""
    _utils.check_tensor(x, "x", op)
    _utils.check_float_dtype(x, "x", op)
    check(x.dim() == 2, f"regionc.{op}: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    check(len(weights) > 0, f"regionc.{op}: weights is empty")
    check(splits >= 1, f"regionc.{op}: splits must be at least 1, got {splits}")
    tensors = {"x": x}
    for i, w in enumerate(weights):
        _utils.check_tensor(w, f"weights[{i}]", op)
        check(w.dim() == 2, f"regionc.{op}: weights[{i}] must be 2-D [N, K], got shape {tuple(w.shape)}")
        check(w.shape[1] == x.shape[1], f"regionc.{op}: weights[{i}] has K={w.shape[1]}, x has K={x.shape[1]}")
        if w.dtype != x.dtype:
            raise TypeError(f"regionc.{op}: weights[{i}] dtype {w.dtype} != x dtype {x.dtype}")
        tensors[f"weights[{i}]"] = w
    _utils.check_same_device(op, **tensors)


def _check_swiglu(x, w_gate, w_up) -> None:
    _check(x, [w_gate, w_up], 1, _SWIGLU)
    check(w_gate.shape[0] == w_up.shape[0],
          f"regionc.{_SWIGLU}: w_gate has N={w_gate.shape[0]}, w_up has N={w_up.shape[0]}")


def _ok(x, weights, splits) -> bool:
    """Cheap happy-path validation for real tensors: attribute comparisons, no formatting."""
    if x.dim() != 2 or x.dtype not in FLOAT_DTYPES or len(weights) == 0 or splits < 1:
        return False
    K, dt, dev = x.shape[1], x.dtype, x.get_device()
    return all(w.dim() == 2 and w.shape[1] == K and w.dtype == dt and w.get_device() == dev for w in weights)


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _skinny_cuda(x, weights, splits=1):
    if not _ok(x, weights, splits):
        _check(x, weights, splits)
    _utils.check_no_grad(_OP, x, weights)
    if triton_supported(x):
        return skinny_linear_triton(x, weights, splits)
    if x.shape[0] <= MAX_ROWS:  # a fallback (more rows are a GEMM's job, by design)
        why = "triton is not installed" if not _utils.HAS_TRITON else f"K={x.shape[1]}"
        log_once(f"skinny-fallback-{why}", "regionc.skinny_linear: no Triton kernel (%s); using torch's matmul", why)
    return skinny_linear_reference(x, weights, splits)


def _skinny_fake(x, weights, splits=1):
    _check(x, weights, splits)
    _utils.check_no_grad(_OP, x, weights)
    return [x.new_empty((splits, x.shape[0], w.shape[0]), dtype=torch.float32) for w in weights]


def _skinny_cpu(x, weights, splits=1):
    _check(x, weights, splits)
    return skinny_linear_reference(x, weights, splits)


_utils.define_op(_OP, "(Tensor x, Tensor[] weights, int splits=1) -> Tensor[]", cuda=_skinny_cuda,
                 fake=_skinny_fake)
_utils.register_cpu(_OP, _skinny_cpu)


def _swiglu_cuda(x, w_gate, w_up):
    if not (_ok(x, [w_gate, w_up], 1) and w_gate.shape[0] == w_up.shape[0]):
        _check_swiglu(x, w_gate, w_up)
    _utils.check_no_grad(_SWIGLU, x, w_gate, w_up)
    if triton_supported(x):
        return skinny_swiglu_triton(x, w_gate, w_up)
    if x.shape[0] <= MAX_ROWS:
        why = "triton is not installed" if not _utils.HAS_TRITON else f"K={x.shape[1]}"
        log_once(f"swiglu-fallback-{why}", "regionc.skinny_swiglu: no Triton kernel (%s); using torch's linear", why)
    return skinny_swiglu_reference(x, w_gate, w_up)


def _swiglu_fake(x, w_gate, w_up):
    _check_swiglu(x, w_gate, w_up)
    _utils.check_no_grad(_SWIGLU, x, w_gate, w_up)
    return x.new_empty((x.shape[0], w_gate.shape[0]))


def _swiglu_cpu(x, w_gate, w_up):
    _check_swiglu(x, w_gate, w_up)
    return skinny_swiglu_reference(x, w_gate, w_up)


_utils.define_op(_SWIGLU, "(Tensor x, Tensor w_gate, Tensor w_up) -> Tensor", cuda=_swiglu_cuda, fake=_swiglu_fake)
_utils.register_cpu(_SWIGLU, _swiglu_cpu)
