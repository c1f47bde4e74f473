"""Linears over few rows (decode), several weights that read one input in one launch: Triton
kernel, launcher, torch reference, op registration.

Op (namespace ``regionc``)::

    skinny_linear(Tensor x, Tensor[] weights, Tensor?[] biases) -> Tensor[]

* x ``[M, K]``; each weight ``[N_i, K]`` as ``nn.Linear`` stores it (any row stride, unit stride
  on K); bias ``i`` ``[N_i]`` or None. Output ``i`` is ``x @ weights[i].T + biases[i]``, ``[M, N_i]``
  contiguous in x's dtype. x, the weights and the biases share one float dtype.
* ``M`` is a batch of decode tokens: at ``M`` ≤ ``MAX_ROWS`` a step reads every weight byte once and
  does almost no arithmetic per byte, so the time is the weight bytes over the memory bandwidth,
  and a GEMM library tuned for large tiles leaves much of that bandwidth unused: on an H200 at
  ``M`` = 8 cuBLAS reads a 2048 × 512 weight (HF Llama's k and v projections) at 0.4 TB/s and a
  2048 × 2048 one at 1.4 TB/s, of ≈ 4.3 (benchmarks/results/decode_profile/h200-2026-12-02-hf-llama-b8-cudnn-mask.log).

Why several weights in one call: the projections that read the same input (q, k and v; gate and
up) are small alone (a k projection is 512 columns: 32 programs, a quarter of the SMs); one
launch over all of them fills the GPU. The weights stay where the model keeps them — nothing is
packed or copied — so an in-place update of a weight (``load_state_dict``, a LoRA merge, a
weight swap between requests) is read on the next call, as by the linears this op replaces.

CUDA kernel ``_skinny_kernel`` (bf16/fp16/fp32): grid ``(column blocks of all weights, row
blocks)``; a program owns ``BLOCK_N`` output columns of one weight and every row of its row
block, streams that weight's ``BLOCK_N × K`` slab once through a ``num_stages`` software pipeline,
and multiplies with ``tl.dot`` in fp32. Launch parameters come from ``_config`` (measured by
benchmarks/kernels/bench_skinny_linear.py). Past ``MAX_ROWS`` rows the op calls torch's linear, and
the launcher launches again for every ``MAX_WEIGHTS`` weights: the op is correct for any size, fast
where it is meant to be.
"""

from __future__ import annotations

import torch

from regionc.logs import log_once
from regionc.ops import _utils
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton

#: most rows the Triton kernel takes; more rows are a GEMM's job (cuBLAS)
MAX_ROWS = 64
#: weights per launch (the kernel's pointer slots)
MAX_WEIGHTS = 4

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if _utils.HAS_TRITON:

    # The per-weight values are chosen at run time by branch, so each must keep one type: a column
    # count may be 1, which Triton would turn into a constant, so those are not specialised. The
    # row strides are (the launcher never passes 1): their divisibility by 16, like the pointers'
    # alignment, is what lets the weight loads be 16-byte vectors.
    @triton.jit(do_not_specialize=[f"N{i}" for i in range(4)])
    def _skinny_kernel(
        X, W0, W1, W2, W3, B0, B1, B2, B3, Y0, Y1, Y2, Y3,
        M, K, stride_xm,
        N0, N1, N2, N3, SW0, SW1, SW2, SW3,
        NUM_W: tl.constexpr, BIAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        pid_m = tl.program_id(1)
        # which weight this column block belongs to: weights are laid end to end over the grid
        c1 = tl.cdiv(N0, BLOCK_N)
        c2 = c1 + tl.cdiv(N1, BLOCK_N)
        c3 = c2 + tl.cdiv(N2, BLOCK_N)
        which = (pid >= c1).to(tl.int32) + (pid >= c2).to(tl.int32) + (pid >= c3).to(tl.int32)
        w, bias, y, n_cols, sw, blk = W0, B0, Y0, N0, SW0, pid
        if NUM_W > 1:
            if which == 1:
                w, bias, y, n_cols, sw, blk = W1, B1, Y1, N1, SW1, pid - c1
        if NUM_W > 2:
            if which == 2:
                w, bias, y, n_cols, sw, blk = W2, B2, Y2, N2, SW2, pid - c2
        if NUM_W > 3:
            if which == 3:
                w, bias, y, n_cols, sw, blk = W3, B3, Y3, N3, SW3, pid - c3
        has_bias = (BIAS_MASK >> which) & 1

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        n_ok = offs_n < n_cols
        x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
        w_ptrs = w + offs_n[:, None].to(tl.int64) * sw + offs_k[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                xt = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
                wt = tl.load(w_ptrs, mask=n_ok[:, None], other=0.0)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                xt = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                wt = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(xt, tl.trans(wt), input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        if has_bias:
            acc += tl.load(bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y + offs_m[:, None].to(tl.int64) * n_cols + offs_n[None, :], acc.to(y.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


# --------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------


def _config(rows: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): 32 columns × 256 of K per step in a
    3-deep pipeline, the fastest for the grouped projections at 8 rows on an H200 (q/k/v of a
    2048-wide GQA layer 8.1 µs against cuBLAS's 18.0, gate/up 20.4 against 23.2;
    benchmarks/results/skinny_linear/h200-2026-12-03.json, ``config_sweep``)."""
    return max(16, _utils.next_power_of_2(rows)), 32, min(256, max(32, _utils.next_power_of_2(k))), 4, 3


def skinny_linear_triton(x, weights, biases, *, config: tuple[int, int, int, int, int] | None = None):
    """Launch ``_skinny_kernel`` over ``weights`` (in launches of at most ``MAX_WEIGHTS``).

    ``config`` overrides ``_config`` (tests use it to exercise ragged blocks on tiny shapes under
    TRITON_INTERPRET=1; the benchmark sweeps it)."""
    if _utils.needs_device_switch(x):
        with torch.cuda.device(x.device):
            return skinny_linear_triton(x, weights, biases, config=config)
    (x,) = _utils.unit_stride_last(x)
    weights = _utils.unit_stride_last(*weights)
    M, K = x.shape
    outs = [torch.empty((M, w.shape[0]), dtype=x.dtype, device=x.device) for w in weights]
    if M == 0:
        return outs
    if K == 0:
        return [o.zero_() if b is None else o.copy_(b.expand_as(o)) for o, b in zip(outs, biases)]
    bm, bn, bk, warps, stages = config or _config(M, K)
    for lo in range(0, len(weights), MAX_WEIGHTS):
        ws, bs, ys = (list(seq[lo:lo + MAX_WEIGHTS]) for seq in (weights, biases, outs))
        n = len(ws)
        blocks = sum(-(-w.shape[0] // bn) for w in ws)
        pad = MAX_WEIGHTS - n
        bias_mask = sum(1 << i for i, b in enumerate(bs) if b is not None)
        bs = [b if b is not None else x for b in bs] + [x] * pad
        sizes = [w.shape[0] for w in ws] + [0] * pad
        # a one-row weight's row stride is never used: K keeps every stride a non-constant
        strides = [w.stride(0) if w.shape[0] > 1 else K for w in ws] + [K] * pad
        _skinny_kernel[(blocks, -(-M // bm))](
            x, *ws, *[x] * pad, *bs, *ys, *[x] * pad,  # unused slots: x (never written; no output aliased)
            M, K, x.stride(0),
            *sizes, *strides,
            NUM_W=n, BIAS_MASK=bias_mask, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0,
            DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            num_warps=warps, num_stages=stages,
        )
    return outs


def triton_supported(x: torch.Tensor) -> bool:
    """Few rows, a float dtype, and K past one (a weight's row stride of 1 would become a constant)."""
    return _utils.HAS_TRITON and x.dtype in FLOAT_DTYPES and x.shape[0] <= MAX_ROWS and x.shape[1] > 1


# --------------------------------------------------------------------------------------
# torch reference (the CPU kernel, the CUDA path past MAX_ROWS, the tests' oracle)
# --------------------------------------------------------------------------------------


def skinny_linear_reference(x, weights, biases):
    """``F.linear`` per weight, in the inputs' dtype (what the replaced linears computed)."""
    return [torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases)]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

_OP = "skinny_linear"


def _check(x, weights, biases) -> None:
    """Full validation with messages naming the bad argument; works on symbolic sizes."""
    _utils.check_tensor(x, "x", _OP)
    _utils.check_float_dtype(x, "x", _OP)
    check(x.dim() == 2, f"regionc.{_OP}: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    check(len(weights) > 0, f"regionc.{_OP}: weights is empty")
    check(len(biases) == len(weights),
          f"regionc.{_OP}: {len(weights)} weights but {len(biases)} biases (one per weight, None for none)")
    tensors = {"x": x}
    for i, (w, b) in enumerate(zip(weights, biases)):
        _utils.check_tensor(w, f"weights[{i}]", _OP)
        check(w.dim() == 2, f"regionc.{_OP}: weights[{i}] must be 2-D [N, K], got shape {tuple(w.shape)}")
        check(w.shape[1] == x.shape[1], f"regionc.{_OP}: weights[{i}] has K={w.shape[1]}, x has K={x.shape[1]}")
        if w.dtype != x.dtype:
            raise TypeError(f"regionc.{_OP}: weights[{i}] dtype {w.dtype} != x dtype {x.dtype}")
        tensors[f"weights[{i}]"] = w
        if b is not None:
            _utils.check_tensor(b, f"biases[{i}]", _OP)
            check(b.dim() == 1 and b.shape[0] == w.shape[0],
                  f"regionc.{_OP}: biases[{i}] must be [{w.shape[0]}], got shape {tuple(b.shape)}")
            if b.dtype != x.dtype:
                raise TypeError(f"regionc.{_OP}: biases[{i}] dtype {b.dtype} != x dtype {x.dtype}")
            tensors[f"biases[{i}]"] = b
    _utils.check_same_device(_OP, **tensors)


def _ok(x, weights, biases) -> bool:
    """Cheap happy-path validation for real tensors: attribute comparisons, no formatting."""
    if x.dim() != 2 or x.dtype not in FLOAT_DTYPES or len(weights) == 0 or len(biases) != len(weights):
        return False
    K, dt, dev = x.shape[1], x.dtype, x.get_device()
    for w, b in zip(weights, biases):
        if w.dim() != 2 or w.shape[1] != K or w.dtype != dt or w.get_device() != dev:
            return False
        if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0] or b.dtype != dt or b.get_device() != dev):
            return False
    return True


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _skinny_cuda(x, weights, biases):
    if not _ok(x, weights, biases):
        _check(x, weights, biases)
    _utils.check_no_grad(_OP, x, weights, biases)
    if triton_supported(x):
        return skinny_linear_triton(x, weights, biases)
    if x.shape[0] <= MAX_ROWS:  # a fallback (more rows are a GEMM's job, by design)
        why = "triton is not installed" if not _utils.HAS_TRITON else f"K={x.shape[1]}"
        log_once(f"skinny-fallback-{why}", "regionc.skinny_linear: no Triton kernel (%s); using torch's linear", why)
    return skinny_linear_reference(x, weights, biases)


def _skinny_fake(x, weights, biases):
    _check(x, weights, biases)
    _utils.check_no_grad(_OP, x, weights, biases)
    return [x.new_empty((x.shape[0], w.shape[0])) for w in weights]


def _skinny_cpu(x, weights, biases):
    _check(x, weights, biases)
    return skinny_linear_reference(x, weights, biases)


_utils.define_op(_OP, "(Tensor x, Tensor[] weights, Tensor?[] biases) -> Tensor[]", cuda=_skinny_cuda,
                 fake=_skinny_fake)
_utils.register_cpu(_OP, _skinny_cpu)
