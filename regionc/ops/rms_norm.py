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

**The switch: ``VARIANT``** (a module constant, the variant measured fastest; read on every call,
so a test or a benchmark can set another for a while). It names one entry of
``VARIANTS``, each a ``Variant`` of three independent choices on top of the heuristic above:

* schedule: one program per row block (``"s2"``, the baseline schedule) or a *persistent* grid
  of one wave (as many programs per SM as the compiled kernel's register use lets be resident,
  or ``programs_per_sm``), each program looping over row blocks with the weight loaded once and
  the next block's loads issued before the current block is reduced;
* L2 eviction hints (``evict``): x/residual loads ``evict_first`` and the weight ``evict_last``
  (``"loads"``), plus the stores ``evict_first`` (``"all"``);
* launch path (``cached_launch``): a repeat call with the same (variant, x shape, dtypes,
  residual or not, device) and contiguous 16-byte-aligned inputs launches the compiled kernel it
  cached on the first call (``_utils.CompiledLaunch``: ``compiled.run(grid, ..., *args)`` with the
  same argument tuple the JIT got) instead of going through ``kernel[grid](...)``, which binds and
  specialises every argument, builds its cache key and the launch metadata on each call. Same
  kernel, same grid: only host time changes (the eager latency of small shapes). Not used while a
  Triton launch hook (profiler) is installed. Measured on the 2-core dev CPU with triton 3.6 (the
  GPU machine's), Triton's compiler and C launcher stubbed (``bench_rms_norm.py
  --cpu-host-overhead``): the op's Python per 8x4096 call drops from ~19 us to ~5 us, of which
  ~1.3 us is ``empty_like``; the GPU run's ``host_us`` column measures it on the real host.

``benchmarks/kernels/bench_rms_norm.py`` times every variant on the TARGETS shapes (a row per
variant: ``variant`` column, eager and CUDA-graph latency rows for 8x4096, host microseconds per
call) and prints the variant it would pick; set ``VARIANT`` to it. Every variant is CUDA-graph
safe: no host sync, the only allocations are the outputs (the first call of a persistent variant
compiles the kernel before launching it, like any first call).
"""

from __future__ import annotations

import torch

from regionc.ops import _extension, _utils, _variants
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton
from regionc.ops._variants import DEFAULT_PROGRAMS_PER_SM, Variant, lookup, persistent_programs
from regionc.ops._variants import HINTS as _HINTS

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

#: rows wider than this are processed in chunks (two passes over the row) instead of in registers
MAX_FUSED_BLOCK = 32768

if _utils.HAS_TRITON:

    @triton.jit
    def _rms_load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask,
                  HAS_RES: tl.constexpr, LD_EV: tl.constexpr):
        """x (and residual) tiles [ROWS, BLOCK_N] of ``rows``; rows >= n_rows are masked off."""
        rows64 = rows.to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=LD_EV)
        if HAS_RES:
            r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0,
                        eviction_policy=LD_EV)
        else:
            r = x
        return x, r

    @triton.jit
    def _rms_finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask,
                    HAS_RES: tl.constexpr, W_LOADED: tl.constexpr, W_EV: tl.constexpr, ST_EV: tl.constexpr):
        """Normalise the loaded tile and store it (and x + residual). ``w`` is the weight row in
        fp32 when W_LOADED, else it is loaded here, after the reduction, so it holds no registers
        while x is reduced."""
        rows64 = rows.to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        if HAS_RES:
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(RES_OUT + rows64[:, None] * N + cols[None, :], x, mask=mask, eviction_policy=ST_EV)
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / N + eps)
        if not W_LOADED:
            w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
        y = xf * rstd[:, None] * w[None, :]
        tl.store(Y + rows64[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask,
                 eviction_policy=ST_EV)

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
        PERSISTENT: tl.constexpr,
        W_FIRST: tl.constexpr,
        LD_EV: tl.constexpr,
        W_EV: tl.constexpr,
        ST_EV: tl.constexpr,
    ):
        """Y and RES_OUT are contiguous [n_rows, N].

        * LOOP=False, PERSISTENT=False: program i owns rows [i*ROWS, (i+1)*ROWS); the whole row
          (BLOCK_N >= N) lives in registers. W_FIRST loads the weight before x (else after the
          reduction, so it holds no registers while x is reduced).
        * LOOP=False, PERSISTENT=True: a grid of at most one wave of programs; program i owns row
          blocks i, i + grid, i + 2*grid, ...; the weight is loaded once, and the next block's x
          (and residual) is loaded before the current block is reduced and stored (register
          double-buffering, so every program keeps a load in flight).
        * LOOP=True: one row per program (ROWS == 1), chunks of BLOCK_N: pass 1 sums squares (and
          writes x + residual), pass 2 normalises. No eviction hints (pass 2 re-reads the row).

        LD_EV / W_EV / ST_EV: eviction policies ("" = default) of the x/residual loads, the weight
        load and the stores."""
        pid = tl.program_id(0)
        if not LOOP:
            cols = tl.arange(0, BLOCK_N)
            col_mask = cols < N
            if PERSISTENT:
                nprog = tl.num_programs(0)
                w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
                n_blocks = tl.cdiv(n_rows, ROWS)
                rows = pid * ROWS + tl.arange(0, ROWS)
                x, r = _rms_load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
                for _blk in range(pid, n_blocks, nprog):
                    nrows = rows + nprog * ROWS
                    xn, rn = _rms_load(X, R, nrows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
                    _rms_finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask,
                                HAS_RES, True, W_EV, ST_EV)
                    x = xn
                    r = rn
                    rows = nrows
            else:
                if W_FIRST:
                    w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
                else:
                    w = 0.0  # loaded after the reduction by _rms_finish
                rows = pid * ROWS + tl.arange(0, ROWS)
                x, r = _rms_load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
                _rms_finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask,
                            HAS_RES, W_FIRST, W_EV, ST_EV)
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


def _warps_for(elems: int) -> int:
    """num_warps for a tile of ``elems`` elements held in registers (Liger / Inductor-like:
    ~8-16 elements per thread, at most 32 warps)."""
    return _variants.warps_for(elems, ((65536, 32), (8192, 16), (2048, 8)), max(1, min(4, elems // 256)))


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


# --------------------------------------------------------------------------------------
# variants: which schedule, cache hints and launch path the op uses (see the module docstring)
# --------------------------------------------------------------------------------------


#: rows wider than ``MAX_FUSED_BLOCK`` are never persistent, and the chunked path takes no eviction hints.
#: the named choices the benchmark measures side by side (``benchmarks/kernels/bench_rms_norm.py``
#: writes one row per variant and shape: the ``variant`` column)
VARIANTS: dict[str, Variant] = {
    **_variants.COMMON_VARIANTS,
    "persistent2+evict": Variant(persistent=True, programs_per_sm=2, evict="all"),
}

#: The switch: the variant ``torch.ops.regionc.rms_norm`` / ``fused_add_rms_norm`` use on CUDA.
#: Flip it to the name of the best ``variant`` row of a GPU run of bench_rms_norm.py.
#: "s2": on the large shapes every variant is within 3% of a plain copy of the same bytes (the kernel
#: is bound by memory bandwidth), so the choice is the small-shape eager latency, where s2 is lowest
#: (8x4096: 5.1 us against 6.2 us with the cached launch, H100,
#: benchmarks/results/rms_norm/h100-2026-11-25.json).
VARIANT = "s2"

_LAUNCHES = _utils.LaunchCache()
#: (variant, x dtype, weight dtype, has residual, ROWS, BLOCK_N, num_warps, device) -> programs per SM
_RESIDENT: dict[tuple, int] = {}


def _variant(name: str) -> Variant:
    return lookup("rms_norm", VARIANTS, name)


def _persistent_programs(name: str, v: Variant, args: tuple, warps: int, x: torch.Tensor) -> int:
    key = (name, x.dtype, args[2].dtype, args[10], args[11], args[12], warps, x.get_device())
    return persistent_programs(_RESIDENT, key, _rms_norm_fwd_kernel, args, warps, v, x, DEFAULT_PROGRAMS_PER_SM)


def _aligned(*ts) -> bool:
    """All data pointers 16-byte aligned (what the JIT specialises pointers on)."""
    a = 0
    for t in ts:
        a |= t.data_ptr()
    return not (a & 15)


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
    programs: int | None = None,
    variant: str | None = None,
):
    """Launch the Triton kernel. Returns ``y`` or ``(y, x + residual)`` when residual is given.

    ``variant`` names an entry of ``VARIANTS`` (default: the module's ``VARIANT``).
    ``block_n``/``rows``/``loop``/``num_warps`` override the heuristics and ``programs`` the
    persistent grid size (tests use them to exercise the multi-row, chunked and multi-block
    persistent paths on tiny shapes under TRITON_INTERPRET=1; the benchmark sweeps them); calls
    with overrides never use or fill the launch cache.

    Cached path (repeat call, contiguous and aligned inputs): a dict lookup, one or two
    ``empty_like`` and the launch. Otherwise: reshape (a copy only when the last dim is not
    unit-stride), cached heuristics, the JIT launch, and the cache entry for the next call."""
    if _utils.needs_device_switch(x):
        with torch.cuda.device(x.device):
            return rms_norm_triton(x, weight, eps, residual, block_n=block_n, rows=rows, loop=loop,
                                   num_warps=num_warps, programs=programs, variant=variant)
    name = VARIANT if variant is None else variant
    v = _variant(name)
    dev = x.get_device()
    tuned = block_n is not None or rows is not None or loop is not None or num_warps is not None or programs is not None
    if v.cached_launch and not tuned:
        key = (name, x.shape, x.dtype, weight.dtype, residual is None, dev)
        ent = _LAUNCHES.get(key)
        if (
            ent is not None
            and x.is_contiguous()
            and weight.is_contiguous()
            and not _utils.launch_hooks_active()
        ):
            m, n, consts = ent.extra
            if residual is None:
                if not ((x.data_ptr() | weight.data_ptr()) & 15):
                    y = torch.empty_like(x)
                    ent.run(ent.grid, 1, 1, _utils.cuda_stream(dev), ent.function, ent.meta, None, None, None,
                            x, x, weight, y, y, n, n, m, n, float(eps), *consts)
                    return y
            elif residual.is_contiguous() and not ((x.data_ptr() | weight.data_ptr() | residual.data_ptr()) & 15):
                y = torch.empty_like(x)
                res_out = torch.empty_like(x)
                ent.run(ent.grid, 1, 1, _utils.cuda_stream(dev), ent.function, ent.meta, None, None, None,
                        x, residual, weight, y, res_out, n, n, m, n, float(eps), *consts)
                return y, res_out
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
    persistent = v.persistent and not lp
    evict = "" if lp else v.evict
    args = (x2, r2, w, y, res_out, sx, sr, m, n, float(eps), residual is not None, rws, block, lp, persistent,
            bool(evict), *_HINTS[evict])
    n_blocks = (m + rws - 1) // rws
    if persistent:
        grid = min(n_blocks, programs or _persistent_programs(name, v, args, warps, x))
    else:
        grid = n_blocks
    compiled = _rms_norm_fwd_kernel[(grid,)](*args, num_warps=warps)
    if (
        v.cached_launch
        and not tuned
        and x2 is x
        and r2 is (x if residual is None else residual)
        and w is weight
        and sx == n
        and sr == n
        and _aligned(x, weight, r2)
    ):
        ent = _utils.CompiledLaunch.make(_rms_norm_fwd_kernel, compiled, grid, warps, extra=(m, n, args[10:]))
        if ent is not None:
            _LAUNCHES.put((name, x.shape, x.dtype, weight.dtype, residual is None, dev), ent)
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
