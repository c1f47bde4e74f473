"""Attention forward with native GQA: Triton flash-attention (v2 style) kernel in two variants,
launcher, torch reference, op registration.

Op (namespace ``regionc``)::

    attention(Tensor q, Tensor k, Tensor v, bool causal, float? scale) -> Tensor

* q ``[B, Hq, Sq, D]``, k/v ``[B, Hkv, Skv, D]``, ``Hq % Hkv == 0``; query head ``h`` reads kv
  head ``h // (Hq // Hkv)`` (same as ``repeat_interleave(Hq // Hkv, dim=1)``, without the copies).
  Any strides on B/H/S (e.g. a ``transpose(1, 2)`` view of ``[B, S, H, D]``); a non-unit stride
  on D costs a copy. Output ``[B, Hq, Sq, D]`` contiguous, q's dtype.
* ``scale=None`` means ``1/sqrt(D)``.
* ``causal`` follows SDPA's ``is_causal``: top-left aligned, query i sees keys ``j <= i``
  (``torch.ones(Sq, Skv).tril()``), also when ``Sq != Skv``.
* CUDA: on Hopper GPUs the warp-specialised Gluon kernel of ``attention_hopper.py`` (see
  ``HOPPER_KERNEL`` below), elsewhere this module's Triton kernel, for bf16/fp16 with D in
  {64, 128}; anything else (fp32, other head dims, no Triton) falls back to SDPA on
  ``repeat_interleave``d k/v. Each fallback is logged once on ``logging.getLogger("regionc")``.
  CPU: the torch reference (fp32 SDPA on repeated k/v), no C++ kernel.
* Forward only: with grad mode on and an input requiring grad the op raises (RuntimeError).

Kernel variants (one Triton kernel, the ``USE_TMA`` constexpr picks how K/V/Q/O move):

* ``"ptr"``: pointer loads (``tl.load`` of a ``[D, BLOCK_N]`` pointer tile, cp.async pipelining).
  Works on every GPU Triton supports and for any strides. Its configs are the ones measured best
  per TARGETS shape on the H100 (``PTR_CONFIGS``).
* ``"tma"``: Hopper tensor descriptors (``tl.make_tensor_descriptor``, one per (batch, head) over
  that head's ``[S, D]`` rows): each tile is one TMA bulk copy straight into shared memory, no
  per-element address registers, and rows past ``S`` read as zeros / are not written, so ragged
  lengths and any B/H/S strides work without flattening heads together. Needs compute capability
  >= 9.0, 16-byte aligned bases and B/H/S strides (else ``"ptr"`` runs), and a Triton allocator
  (descriptors are built on the device in a small per-launch workspace; see ``_ensure_allocator``).
* ``"auto"``: one autotuner over both config lists, so it cannot pick anything slower than the
  ``"ptr"`` configs (up to timing noise); costs the most compiles on a shape bucket's first call.

**The switch** is ``ATTENTION_VARIANT`` below, the variant measured fastest; it is read per call,
so a test or a benchmark can set another for a while.
``benchmarks/kernels/bench_attention.py`` times ``"ptr"`` and ``"tma"`` side by side with the SDPA
backends and records every config's time: set the switch to the winner there (fewer configs = a
cheaper first call). If the TMA kernel fails to compile (or raises at launch), the op logs one
warning and uses ``"ptr"`` for the rest of the process instead of failing the user's call.

Autotuning: key = head dim, causal, power-of-two buckets of Sq and Skv, dtype; sequence lengths,
head counts and the GQA group are not specialised on (a new length recompiles nothing). Run each
new shape bucket once before CUDA-graph capture (the autotuner benchmarks on first use); after
that a launch has no host sync and allocates only the output (plus, for ``"tma"``, Triton's
descriptor workspace: a size fixed by the grid, so capture-safe).

Schedule: causal grids run the query blocks longest-first so the grid's last wave is the cheap
blocks - per head (FlashAttention-2's order, keeps the heads in flight in L2) or, when all of K/V
fits in half the L2 (a GQA prefill), over the whole grid. Non-causal key ranges run without masks
except a ragged last key block; causal ones split into unmasked off-diagonal blocks and the
masked diagonal. Softmax in exp2 with the scale folded in, fp32 accumulation, 1/l at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from regionc.logs import log_once
from regionc.ops import attention_hopper as hopper
from regionc.ops._utils import (
    HAS_TRITON,
    capability,
    check_grouped_qkv,
    check_no_grad,
    check_same_device,
    define_op,
    device_properties,
    grouped_qkv_ok,
    kernel_failed,
    needs_device_switch,
    next_power_of_2,
    register_cpu,
    tl,
    triton,
    unit_stride_last,
)

TRITON_HEAD_DIMS = (64, 128)
LOG2E = 1.4426950408889634

VARIANTS = ("auto", "tma", "ptr")

#: Which kernel variant the CUDA op launches: "auto" (autotune over the "ptr" and "tma" configs),
#: "tma" (tensor-descriptor kernel where usable, else "ptr") or "ptr" (pointer-load kernel). Flip it
#: after an H100 run of benchmarks/kernels/bench_attention.py (see the module docstring).
#: "ptr": best geometric mean vs cuDNN on the TARGETS shapes, 0.86x against 0.82x ("tma") and 0.80x
#: ("auto", whose autotuning over both lists picked worse configs), and 60.0 us on the demo's GQA
#: prefill; "tma" wins D128 by ~5% (benchmarks/results/attention/h100-2026-11-25-ptr-vs-tma.json, H100, torch 2.11).
ATTENTION_VARIANT = "ptr"

#: On Hopper GPUs the op runs the warp-specialised Gluon kernel of ``attention_hopper.py`` where
#: it can (0.96-1.05x cuDNN on the TARGETS shapes against 0.80-0.88x for this module's kernel,
#: benchmarks/results/attention/h100-2026-11-25.json) and this module's Triton kernel elsewhere.
#: False keeps this module's Triton kernel everywhere (what a test of that path sets).
HOPPER_KERNEL = True

# Autotune candidates per head dim: (BLOCK_M, BLOCK_N, num_warps, num_stages, maxnreg or None).
#: Pointer-load configs: every config that was the fastest fixed config on a TARGETS shape in the
#: H100 sweep (benchmarks/results/attention/h100-2026-11-25-ptr-config-sweep.json): D128 128x128/8w/3s (causal, S4680) and
#: /2s (full), 128x64/8w/3s runner-up; D64 128x64/8w/3s (B16 S1024) and 64x64/4w/4s (GQA S2048).
#: 64x64/4w/4s stays for D128's small grids (decode-like Sq); configs that never came close on a
#: head dim are dropped for it (fewer compiles per first call).
PTR_CONFIGS = {
    128: ((128, 128, 8, 3, None), (128, 128, 8, 2, None), (128, 64, 8, 3, None), (64, 64, 4, 4, None)),
    64: ((128, 64, 8, 3, None), (64, 64, 4, 4, None)),
}
#: TMA configs, chosen from an offline sm90 compile's register and shared-memory use (triton 3.9),
#: not from a timing sweep:
#: big tiles at one CTA per SM (D128 128x128/8w: ~188 registers, 161 KB / 225 KB of shared memory
#: at 2 / 3 stages), and tiles sized so that TWO CTAs share an SM (one CTA's softmax overlaps the
#: other's tensor-core work, what FA3 gets from warp specialisation): D128 128x64/8w/2s capped at
#: 128 registers (122 used, no spills, 96 KB), 128x64/4w/2s (251 registers x 128 threads), and
#: 64-row tiles for small grids; D64 128x128/8w/2s capped at 128 registers (no spills), 128x64/8w.
TMA_CONFIGS = {
    128: ((128, 128, 8, 3, None), (128, 128, 8, 2, None), (128, 64, 8, 2, 128), (128, 64, 4, 2, None),
          (64, 64, 4, 3, None)),
    64: ((128, 128, 8, 2, 128), (128, 64, 8, 3, None), (128, 64, 4, 3, None), (64, 64, 4, 3, None)),
}

HAS_TMA = False
if HAS_TRITON:
    try:
        from triton.runtime import _allocation as _triton_allocation

        HAS_TMA = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
    except ImportError:  # pragma: no cover - older triton
        _triton_allocation = None

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _attn_fwd_inner(
        acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, lo, hi, SEQ_K, qk_scale,
        BLOCK_N: tl.constexpr, MASK_CAUSAL: tl.constexpr, MASK_K: tl.constexpr, USE_TMA: tl.constexpr,
    ):
        """Online softmax over the key blocks [lo, hi). ``k_src``/``v_src``: this head's K/V as
        tensor descriptors (USE_TMA) or pointers to its first row. Masks only where asked (the
        caller splits the range so the bulk of the blocks runs without them)."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            if USE_TMA:
                # one bulk copy of [BLOCK_N, D] rows; rows >= SEQ_K arrive as zeros; .T is a view
                k = k_src.load([start_n, 0]).T
            else:
                k_ptrs = k_src + cols[None, :].to(tl.int64) * stride_kn + offs_d[:, None]
                v_ptrs = v_src + cols[:, None].to(tl.int64) * stride_vn + offs_d[None, :]
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
                # scale folded into the exp2 argument (qk_scale = sm_scale * log2(e)): one FMA
                m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                qk = qk * qk_scale - m_ij[:, None]
            p = tl.math.exp2(qk)
            l_ij = tl.sum(p, 1)
            alpha = tl.math.exp2(m_i - m_ij)
            acc = acc * alpha[:, None]
            if USE_TMA:
                v = v_src.load([start_n, 0])
            elif MASK_K:
                v = tl.load(v_ptrs, mask=(cols < SEQ_K)[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs)
            acc = tl.dot(p.to(v.dtype), v, acc)
            l_i = l_i * alpha + l_ij
            m_i = m_ij
        return acc, l_i, m_i

    # Lengths, head counts and the group size are plain runtime ints: specialising on them (== 1,
    # % 16) would compile a new kernel for every length class without speeding anything up.
    @triton.jit(do_not_specialize=["HQ", "GROUP", "SEQ_Q", "SEQ_K", "SQ_BUCKET", "SK_BUCKET", "M_MAJOR"])
    def _attn_fwd_kernel(
        Q, K, V, O, qk_scale,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_om,
        HQ, GROUP, SEQ_Q, SEQ_K,
        SQ_BUCKET, SK_BUCKET,  # autotune key only
        M_MAJOR,  # causal block order, see below (a runtime flag: no extra compile)
        HEAD_DIM: tl.constexpr,
        CAUSAL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        USE_TMA: tl.constexpr,
    ):
        # Causal: longest query blocks first, so the grid's last wave holds the cheapest blocks.
        # CTAs start in linear order (axis 0 fastest). Default: each head's blocks longest-first,
        # heads one after another (FlashAttention-2's order), which keeps the few heads running
        # at once in L2. M_MAJOR (set when all of K/V fits in L2, e.g. a GQA prefill): every
        # head's longest block, then every head's next one - longest-first over the whole grid.
        num_m = tl.num_programs(0)
        if CAUSAL:
            if M_MAJOR:
                n_bh = tl.num_programs(1)
                lin = tl.program_id(1) * num_m + tl.program_id(0)
                start_m = num_m - 1 - lin // n_bh
                off_bh = lin % n_bh
            else:
                start_m = num_m - 1 - tl.program_id(0)
                off_bh = tl.program_id(1)
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
        if USE_TMA:
            # one descriptor per (batch, head) over its own [S, D] rows: the bounds are this head's
            # length, so a ragged last block reads zeros and stores nothing past S (a descriptor over
            # all heads flattened would read the next head's rows instead)
            q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh, shape=[SEQ_Q, HEAD_DIM],
                                               strides=[stride_qm, 1], block_shape=[BLOCK_M, HEAD_DIM])
            k_src = tl.make_tensor_descriptor(K + b * stride_kb + kvh * stride_kh, shape=[SEQ_K, HEAD_DIM],
                                              strides=[stride_kn, 1], block_shape=[BLOCK_N, HEAD_DIM])
            v_src = tl.make_tensor_descriptor(V + b * stride_vb + kvh * stride_vh, shape=[SEQ_K, HEAD_DIM],
                                              strides=[stride_vn, 1], block_shape=[BLOCK_N, HEAD_DIM])
            o_desc = tl.make_tensor_descriptor(O + b * stride_ob + h * stride_oh, shape=[SEQ_Q, HEAD_DIM],
                                               strides=[stride_om, 1], block_shape=[BLOCK_M, HEAD_DIM])
            q = q_desc.load([start_m * BLOCK_M, 0])
        else:
            q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :]
            q = tl.load(q_ptrs, mask=(offs_m < SEQ_Q)[:, None], other=0.0)
            k_src = K + b * stride_kb + kvh * stride_kh
            v_src = V + b * stride_vb + kvh * stride_vh

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
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_n, offs_d,
            0, full_end, SEQ_K, qk_scale, BLOCK_N, False, False, USE_TMA,
        )
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_vn, offs_m, offs_n, offs_d,
            full_end, hi, SEQ_K, qk_scale, BLOCK_N, CAUSAL, True, USE_TMA,
        )
        # 1/l once per row at the end (not per key block)
        acc = acc / l_i[:, None]
        if USE_TMA:
            o_desc.store([start_m * BLOCK_M, 0], acc.to(O.dtype.element_ty))
        else:
            o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :]
            tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m < SEQ_Q)[:, None])

    def _configs(table, use_tma: bool) -> list:
        out = []
        for bm, bn, w, s, maxnreg in table:
            extra = {} if maxnreg is None else {"maxnreg": maxnreg}
            out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "USE_TMA": use_tma}, num_warps=w,
                                     num_stages=s, **extra))
        return out

    def _autotune_bench(fn, quantiles=None):
        # Triton's default spends 25 ms warming up and 100 ms timing each config; a shape bucket's
        # first call times every config, which is compile time for regionc: 10 + 40 ms still
        # gives 10+ timed runs of a slow config on the largest TARGETS shape (2-4 ms per call).
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=40, quantiles=quantiles)

    def _tuners() -> dict:
        import inspect

        key = ["HEAD_DIM", "CAUSAL", "SQ_BUCKET", "SK_BUCKET"]
        extra = {"do_bench": _autotune_bench} if "do_bench" in inspect.signature(triton.autotune).parameters else {}
        out = {}
        for d in TRITON_HEAD_DIMS:
            ptr, tma = _configs(PTR_CONFIGS[d], False), _configs(TMA_CONFIGS[d], True)
            for name, cfgs in (("ptr", ptr), ("tma", tma), ("auto", ptr + tma)):
                out[name, d] = triton.autotune(configs=cfgs, key=key, **extra)(_attn_fwd_kernel)
        return out

    #: (variant, head dim) -> autotuner. All wrap the same kernel, so a config compiled for one of
    #: them (say "auto") is reused by the others without compiling again.
    TUNERS = _tuners()


# --------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------

#: why the TMA variant is off for this process (set after it failed once), or None
_tma_disabled: str | None = None


def _seq_bucket(n: int) -> int:
    return min(next_power_of_2(max(int(n), 16)), 16384)


def _l2_bytes(t: torch.Tensor) -> int:
    """L2 size of ``t``'s GPU; 50 MB (an H100) for CPU tensors (interpreter) and torch builds
    whose device properties lack it."""
    idx = t.get_device()
    return getattr(device_properties(idx), "L2_cache_size", 50 << 20) if idx >= 0 else 50 << 20


def _device_workspace(size: int, alignment: int, stream):
    # the caching allocator's blocks are 512-byte aligned (Triton asks for <= 128); during CUDA
    # graph capture this comes from the graph's pool like any other allocation
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Device-side tensor descriptors are written by each program into a global-memory workspace
    that Triton requests from ``triton.set_allocator``'s allocator at every launch (grid x 128 B
    per descriptor). Installs a torch one unless the process already has one (left alone). The
    allocator is a ContextVar, so this runs per call (cheap) and also covers new threads."""
    if isinstance(_triton_allocation._allocator.get(), _triton_allocation.NullAllocator):
        triton.set_allocator(_device_workspace)


def tma_unusable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """None when the TMA variant can run on these tensors (unit stride on D assumed), else why not.
    CPU tensors count as usable: that is the Triton interpreter (tests)."""
    if _tma_disabled is not None:
        return _tma_disabled
    if not HAS_TMA:
        return "this triton has no tl.make_tensor_descriptor / triton.set_allocator"
    if q.is_cuda:
        cap = capability(q.get_device())
        if cap[0] < 9:
            return f"TMA needs compute capability >= 9.0, this GPU has {cap[0]}.{cap[1]}"
    align = 16 // q.element_size()
    for t in (q, k, v):
        st, sh = t.stride(), t.shape
        if (t.data_ptr() % 16 or st[2] % align or (sh[0] > 1 and st[0] % align)
                or (sh[1] > 1 and st[1] % align)):
            return "q/k/v base address or B/H/S strides not 16-byte aligned"
    return None


def _pick_variant(q, k, v, variant: str | None, fixed_config: bool) -> str:
    """The variant to launch: ``variant`` or the module's ATTENTION_VARIANT; "tma"/"auto" become
    "ptr" where TMA cannot run (logged once per reason), except an explicit ``variant="tma"``,
    which raises instead. With a fixed config, "auto" means "tma" where usable."""
    want = ATTENTION_VARIANT if variant is None else variant
    if want not in VARIANTS:
        raise ValueError(f"regionc.attention: variant must be one of {VARIANTS}, got {want!r}")
    if want == "ptr":
        return "ptr"
    why = tma_unusable(q, k, v)
    if why is None:
        return "tma" if fixed_config else want
    if variant == "tma":
        raise ValueError(f"regionc.attention: the TMA variant cannot run here: {why}")
    log_once("attn-no-tma-" + why, "regionc.attention: TMA kernel not used (%s); using the pointer-load kernel", why)
    return "ptr"


def _disable_tma(exc: BaseException) -> None:
    global _tma_disabled
    _tma_disabled = kernel_failed("attention", "TMA", "pointer-load", exc)


def attention_triton(q, k, v, causal: bool, scale: float | None, *, config: dict | None = None,
                     variant: str | None = None):
    """Launch the Triton kernel. ``variant`` ("auto" | "tma" | "ptr", default the module's
    ``ATTENTION_VARIANT``) picks the autotuner (see the module docstring). ``config`` (keys
    BLOCK_M, BLOCK_N, optional num_warps, num_stages, maxnreg) bypasses the autotuner with one
    fixed launch of the chosen variant: tests use it under TRITON_INTERPRET=1, benchmarks for
    sweeps; its optional ``M_MAJOR`` forces the causal block order (tests)."""
    if needs_device_switch(q):
        with torch.cuda.device(q.device):
            return attention_triton(q, k, v, causal, scale, config=config, variant=variant)
    q, k, v = unit_stride_last(q, k, v)
    B, HQ, SQ, D = q.shape
    HKV, SK = k.shape[1], k.shape[2]
    o = torch.empty((B, HQ, SQ, D), dtype=q.dtype, device=q.device)
    if B * HQ * SQ == 0:
        return o
    if SK == 0:  # no keys: SDPA (and the CPU reference) give zeros, the kernel would give 0/0
        return o.zero_()
    use = _pick_variant(q, k, v, variant, config is not None)
    if use != "ptr" and q.is_cuda:
        _ensure_allocator()
    sm_scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cfg = dict(config) if config is not None else {}
    m_major = cfg.pop("M_MAJOR", None)  # test hook: force the causal block order
    if m_major is None:
        m_major = causal and 2 * k.numel() * k.element_size() <= _l2_bytes(q) // 2
    qs, ks, vs, os_ = q.stride(), k.stride(), v.stride(), o.stride()
    args = (
        q, k, v, o, sm_scale * LOG2E,
        qs[0], qs[1], qs[2],
        ks[0], ks[1], ks[2],
        vs[0], vs[1], vs[2],
        os_[0], os_[1], os_[2],
        HQ, HQ // HKV, SQ, SK, _seq_bucket(SQ), _seq_bucket(SK), int(bool(m_major)),
    )
    if config is None:
        grid = lambda meta: (triton.cdiv(SQ, meta["BLOCK_M"]), B * HQ)  # noqa: E731
        if use == "ptr":
            TUNERS["ptr", D][grid](*args, HEAD_DIM=D, CAUSAL=bool(causal))
            return o
        try:
            TUNERS[use, D][grid](*args, HEAD_DIM=D, CAUSAL=bool(causal))
        except Exception as exc:  # a TMA compile/launch failure must not take the op down
            if variant is not None:
                raise
            _disable_tma(exc)
            TUNERS["ptr", D][grid](*args, HEAD_DIM=D, CAUSAL=bool(causal))
    else:
        opts = {"num_warps": cfg.pop("num_warps", 4), "num_stages": cfg.pop("num_stages", 2)}
        maxnreg = cfg.pop("maxnreg", None)
        if maxnreg is not None:
            opts["maxnreg"] = maxnreg
        grid = (triton.cdiv(SQ, cfg["BLOCK_M"]), B * HQ)
        _attn_fwd_kernel[grid](*args, HEAD_DIM=D, CAUSAL=bool(causal), USE_TMA=use == "tma", **opts, **cfg)
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


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _check_attention(q, k, v, causal, scale) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"regionc.attention: causal must be a bool, got {type(causal).__name__}")
    check_grouped_qkv("attention", q, k, v, scale, names=("q", "k", "v"), seq="seq len", kv_heads="k/v")
    check_same_device("attention", q=q, k=k, v=v)


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _attention_cuda(q, k, v, causal, scale):
    """CUDA kernel: the Hopper one where usable, else Triton; SDPA for unsupported dtypes/head dims."""
    if not grouped_qkv_ok(q, k, v):
        _check_attention(q, k, v, causal, scale)
    check_no_grad("attention", q, k, v)
    if HAS_TRITON and (q.dtype == torch.float16 or q.dtype == torch.bfloat16) and q.shape[3] in TRITON_HEAD_DIMS:
        if HOPPER_KERNEL:
            why = hopper.unusable(q, k, v)
            if why is None:
                try:
                    return hopper.attention_hopper(q, k, v, causal, scale)
                except Exception as exc:  # a compile/launch failure must not take the op down
                    hopper.disable(exc)
            else:
                log_once("attn-no-hopper-" + why, "regionc.attention: Hopper kernel not used (%s); "
                         "using the Triton kernel", why)
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
