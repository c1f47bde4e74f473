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

CUDA kernel (memory-bound; the goal is the device copy bandwidth): a program owns a block of
``BLOCK_S`` tokens of one batch row and a group of heads (``BLOCK_HQ`` q heads and ``BLOCK_HK``
k heads; one group = all heads unless that tile would be too large, or the grid too small).
It loads its cos/sin rows once, as ``[BLOCK_S, 1, D]``, and applies them to 3-D tiles
``[BLOCK_S, heads, D/2]`` of q and of k (both halves for rotate-half; the whole head dim plus its
pair partner, which hits the same cache lines, for interleaved). Tiles are contiguous runs of
memory in both layouts (``bshd``: all heads of a token are adjacent; ``bhsd``: the tokens of a
head are adjacent). The group index varies fastest over the grid, so the programs that share a
token block's cos/sin run together. Offsets are 64-bit.

**The switch: ``VARIANT``** (a module constant, the variant measured fastest; read on every call,
so a test or a benchmark can set another for a while). It names one entry of ``VARIANTS``,
each a ``Variant`` of three independent choices on top of the tiling heuristic
(``_compute_params``):

* schedule: one program per tile (``"s2"``, the baseline schedule) or a *persistent* grid of
  one wave (as many programs per SM as the compiled kernel's register use lets be resident, or
  ``programs_per_sm``), program i running tiles i, i + grid, ...;
* L2 eviction hints (``evict``): q/k loads ``evict_first`` and cos/sin ``evict_last``
  (``"loads"``), plus the stores ``evict_first`` (``"all"``);
* launch path (``cached_launch``): a repeat call with the same (variant, style, layout, shapes,
  strides, dtypes, device), 16-byte-aligned inputs and no input copy launches the compiled kernel
  cached on the first call (``_utils.CompiledLaunch``) instead of going through the Triton JIT's
  per-call argument binding. Same kernel and grid: only host time changes. Not used while a
  Triton launch hook (profiler) is installed. On the 2-core dev CPU with triton 3.6, compiler and
  C launcher stubbed (``bench_rope.py --cpu-host-overhead``): ~29 us -> ~9 us of Python per
  decode-shape call.

``benchmarks/kernels/bench_rope.py`` times every variant on the TARGETS shapes in both layouts (a
row per variant: ``variant`` column) and prints the variant it would pick; set ``VARIANT`` to it.
Every variant is CUDA-graph safe (no host sync; the outputs are the only allocations).
"""

from __future__ import annotations

import torch

from regionc.ops import _extension, _utils, _variants
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton
from regionc.ops._variants import DEFAULT_PROGRAMS_PER_SM, Variant, lookup, persistent_programs
from regionc.ops._variants import HINTS as _HINTS

STYLES = ("rotate_half", "interleaved")
LAYOUTS = ("bhsd", "bshd")

# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------

if _utils.HAS_TRITON:

    @triton.jit
    def _rope_tile(
        X, XO, b, offs_s, s_mask, s64, offs_h, H, S, sx_b, sx_s, sx_h,
        offs_d, d_mask, c1, s1, c2, s2,
        D: tl.constexpr, BHSD: tl.constexpr, INTERLEAVED: tl.constexpr, LD_EV: tl.constexpr, ST_EV: tl.constexpr,
    ):
        """Rotate the [BLOCK_S, BLOCK_H, BLOCK_D] tile of X (heads offs_h) into XO (contiguous)."""
        h_mask = offs_h < H
        h64 = offs_h.to(tl.int64)
        mask = s_mask[:, None, None] & h_mask[None, :, None] & d_mask[None, None, :]
        in_off = b * sx_b + (s64 * sx_s)[:, None, None] + (h64 * sx_h)[None, :, None]
        if BHSD:
            out_off = ((b * H + h64)[None, :, None] * S + s64[:, None, None]) * D
        else:
            out_off = ((b * S + s64)[:, None, None] * H + h64[None, :, None]) * D
        d3 = offs_d[None, None, :]
        if INTERLEAVED:
            # the tile covers the whole head dim; the partner of d is d ^ 1 (same cache lines)
            x = tl.load(X + in_off + d3, mask=mask, other=0.0, eviction_policy=LD_EV).to(tl.float32)
            xp = tl.load(X + in_off + (offs_d ^ 1)[None, None, :], mask=mask, other=0.0,
                         eviction_policy=LD_EV).to(tl.float32)
            even = ((offs_d % 2) == 0)[None, None, :]
            out = x * c1 + tl.where(even, -xp, xp) * s1
            tl.store(XO + out_off + d3, out.to(XO.dtype.element_ty), mask=mask, eviction_policy=ST_EV)
        else:
            # the tile covers one half; both halves are loaded (each element read once)
            x1 = tl.load(X + in_off + d3, mask=mask, other=0.0, eviction_policy=LD_EV).to(tl.float32)
            x2 = tl.load(X + in_off + D // 2 + d3, mask=mask, other=0.0, eviction_policy=LD_EV).to(tl.float32)
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
            tl.store(XO + out_off + d3, o1.to(XO.dtype.element_ty), mask=mask, eviction_policy=ST_EV)
            tl.store(XO + out_off + D // 2 + d3, o2.to(XO.dtype.element_ty), mask=mask, eviction_policy=ST_EV)

    @triton.jit
    def _rope_block(
        t, Q, K, COS, SIN, QO, KO,
        sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_b, sc_s,
        S, HQ, HK, n_sblocks, n_groups,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_HQ: tl.constexpr,
        BLOCK_HK: tl.constexpr, INTERLEAVED: tl.constexpr, BHSD: tl.constexpr,
        LD_EV: tl.constexpr, TAB_EV: tl.constexpr, ST_EV: tl.constexpr,
    ):
        """Tile t = (batch b, token block, head group g), g fastest. cos/sin [BLOCK_S, 1, BLOCK_D]
        loaded once and reused for every q and k head of the group. cos and sin share strides."""
        g = t % n_groups
        rest = t // n_groups
        sblk = rest % n_sblocks
        b = (rest // n_sblocks).to(tl.int64)
        offs_s = sblk * BLOCK_S + tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        s64 = offs_s.to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        if INTERLEAVED:
            d_mask = offs_d < D
        else:
            d_mask = offs_d < D // 2
        t_off = b * sc_b + (s64 * sc_s)[:, None, None] + offs_d[None, None, :]
        t_mask = s_mask[:, None, None] & d_mask[None, None, :]
        c1 = tl.load(COS + t_off, mask=t_mask, other=0.0, eviction_policy=TAB_EV).to(tl.float32)
        s1 = tl.load(SIN + t_off, mask=t_mask, other=0.0, eviction_policy=TAB_EV).to(tl.float32)
        if INTERLEAVED:
            c2 = c1
            s2 = s1
        else:
            c2 = tl.load(COS + t_off + D // 2, mask=t_mask, other=0.0, eviction_policy=TAB_EV).to(tl.float32)
            s2 = tl.load(SIN + t_off + D // 2, mask=t_mask, other=0.0, eviction_policy=TAB_EV).to(tl.float32)
        offs_hq = g * BLOCK_HQ + tl.arange(0, BLOCK_HQ)
        _rope_tile(Q, QO, b, offs_s, s_mask, s64, offs_hq, HQ, S, sq_b, sq_s, sq_h,
                   offs_d, d_mask, c1, s1, c2, s2, D, BHSD, INTERLEAVED, LD_EV, ST_EV)
        offs_hk = g * BLOCK_HK + tl.arange(0, BLOCK_HK)
        _rope_tile(K, KO, b, offs_s, s_mask, s64, offs_hk, HK, S, sk_b, sk_s, sk_h,
                   offs_d, d_mask, c1, s1, c2, s2, D, BHSD, INTERLEAVED, LD_EV, ST_EV)

    @triton.jit
    def _rope_fwd_kernel(
        Q, K, COS, SIN, QO, KO,
        sq_b, sq_s, sq_h,
        sk_b, sk_s, sk_h,
        sc_b, sc_s,
        S, HQ, HK, n_sblocks, n_groups, n_tiles,
        D: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_HQ: tl.constexpr,
        BLOCK_HK: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        BHSD: tl.constexpr,
        PERSISTENT: tl.constexpr,
        LD_EV: tl.constexpr,
        TAB_EV: tl.constexpr,
        ST_EV: tl.constexpr,
    ):
        """n_tiles = B * n_sblocks * n_groups tiles (see ``_rope_block``). PERSISTENT=False: one
        tile per program. PERSISTENT=True: a grid of at most one wave; program i runs tiles i,
        i + grid, ... (neighbouring programs still work on neighbouring tiles at any time).
        LD_EV / TAB_EV / ST_EV: eviction policies ("" = default) of the q/k loads, the cos/sin
        loads and the stores."""
        pid = tl.program_id(0)
        if PERSISTENT:
            for t in range(pid, n_tiles, tl.num_programs(0)):
                _rope_block(t, Q, K, COS, SIN, QO, KO, sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_b, sc_s,
                            S, HQ, HK, n_sblocks, n_groups, D, BLOCK_D, BLOCK_S, BLOCK_HQ, BLOCK_HK,
                            INTERLEAVED, BHSD, LD_EV, TAB_EV, ST_EV)
        else:
            _rope_block(pid, Q, K, COS, SIN, QO, KO, sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_b, sc_s,
                        S, HQ, HK, n_sblocks, n_groups, D, BLOCK_D, BLOCK_S, BLOCK_HQ, BLOCK_HK,
                        INTERLEAVED, BHSD, LD_EV, TAB_EV, ST_EV)


#: elements (q + k, whole head dims) one program's tiles may hold
TILE_ELEMS = 4096
#: programs per SM the grid should reach before tiles are made larger
MIN_PROGRAMS_PER_SM = 4


def _warps_for(elems: int) -> int:
    """~8-16 elements per thread: memory-bound, keep registers low and occupancy high."""
    return _variants.warps_for(elems, ((4096, 8), (2048, 4), (1024, 2)), 1)


def _compute_params(B: int, S: int, HQ: int, HK: int, D: int, interleaved: bool, sms: int):
    """(BLOCK_S, BLOCK_HQ, BLOCK_HK, n_groups, num_warps) for a problem."""
    dpad = _utils.next_power_of_2(D)
    bhq, bhk = _utils.next_power_of_2(HQ), _utils.next_power_of_2(HK)

    def split(groups):
        return _utils.next_power_of_2(-(-HQ // groups)), _utils.next_power_of_2(-(-HK // groups))

    groups = 1
    # 1) one token's heads must fit the tile budget: split heads into groups
    while (bhq + bhk) * dpad > TILE_ELEMS and (bhq > 1 or bhk > 1):
        groups *= 2
        bhq, bhk = split(groups)
    # 2) fill the tile with several tokens when heads are few / narrow
    block_s = 1
    while block_s * 2 * (bhq + bhk) * dpad <= TILE_ELEMS and block_s * 2 <= _utils.next_power_of_2(S):
        block_s *= 2

    def n_programs(bs, bq, bk):
        return B * (-(-S // bs)) * max(-(-HQ // bq), -(-HK // bk))

    # 3) small problems: fewer tokens per program, then fewer heads per program, until the grid
    #    has MIN_PROGRAMS_PER_SM programs per SM (or the tile is one token, one head)
    target = MIN_PROGRAMS_PER_SM * sms
    while n_programs(block_s, bhq, bhk) < target and block_s > 1:
        block_s //= 2
    while n_programs(block_s, bhq, bhk) < target and (bhq > 1 or bhk > 1):
        groups *= 2
        bhq, bhk = split(groups)
    n_groups = max(-(-HQ // bhq), -(-HK // bhk))
    return block_s, bhq, bhk, n_groups, _warps_for(block_s * (bhq + bhk) * dpad)


_PARAMS: dict[tuple, tuple[int, int, int, int, int]] = {}


def _launch_params(B: int, S: int, HQ: int, HK: int, D: int, interleaved: bool, sms: int):
    """``_compute_params`` cached per power-of-two buckets of the token count and of S (the
    heuristic runs on the buckets' lower bounds)."""
    key = ((B * S).bit_length(), S.bit_length(), HQ, HK, D, interleaved, sms)
    p = _PARAMS.get(key)
    if p is None:
        s_rep = 1 << (key[1] - 1)
        b_rep = max(1, (1 << (key[0] - 1)) // s_rep)
        p = _PARAMS[key] = _compute_params(b_rep, s_rep, HQ, HK, D, interleaved, sms)
    return p


# --------------------------------------------------------------------------------------
# variants: which schedule, cache hints and launch path the op uses (see the module docstring)
# --------------------------------------------------------------------------------------


#: the named choices the benchmark measures side by side (``benchmarks/kernels/bench_rope.py``
#: writes one row per variant, shape and layout: the ``variant`` column)
VARIANTS: dict[str, Variant] = dict(_variants.COMMON_VARIANTS)

#: The switch: the variant ``torch.ops.regionc.rope`` uses on CUDA. Flip it to the name of the
#: best ``variant`` row of a GPU run of bench_rope.py.
#: "s2+cached": on the large shapes every variant is within a few % of a plain copy of the same bytes,
#: and at decode shapes (8x1 tokens) the op is bound by host time, which the cached launch cuts
#: (4.4 -> 32 GB/s eager on an H100, benchmarks/results/rope/h100-2026-11-25.json).
VARIANT = "s2+cached"

_LAUNCHES = _utils.LaunchCache()
_RESIDENT: dict[tuple, int] = {}


def _variant(name: str) -> Variant:
    return lookup("rope", VARIANTS, name)


def rope_triton(q, k, cos, sin, style: str, layout: str, *, block_s: int | None = None,
                heads_per_block: int | None = None, num_warps: int | None = None,
                programs: int | None = None, variant: str | None = None):
    """Launch the Triton kernel. ``variant`` names an entry of ``VARIANTS`` (default: the
    module's ``VARIANT``). ``block_s`` (tokens per program), ``heads_per_block`` (q heads per
    program; k heads scale by Hk/Hq), ``num_warps`` and ``programs`` (persistent grid size)
    override the heuristics (tests, benchmark sweeps); calls with overrides never use or fill the
    launch cache."""
    if _utils.needs_device_switch(q):
        with torch.cuda.device(q.device):
            return rope_triton(q, k, cos, sin, style, layout, block_s=block_s, heads_per_block=heads_per_block,
                               num_warps=num_warps, programs=programs, variant=variant)
    name = VARIANT if variant is None else variant
    v = _variant(name)
    dev = q.get_device()
    qst, kst, cst = q.stride(), k.stride(), cos.stride()
    tuned = block_s is not None or heads_per_block is not None or num_warps is not None or programs is not None
    key = None
    if v.cached_launch and not tuned:
        key = (name, style, layout, q.shape, k.shape, qst, kst, cos.shape, cst, sin.stride(), q.dtype, cos.dtype,
               sin.dtype, dev)
        ent = _LAUNCHES.get(key)
        if (
            ent is not None
            and not ((q.data_ptr() | k.data_ptr() | cos.data_ptr() | sin.data_ptr()) & 15)
            and not _utils.launch_hooks_active()
        ):
            q_contig, k_contig, ints, consts = ent.extra
            qo = torch.empty_like(q) if q_contig else torch.empty(q.shape, dtype=q.dtype, device=q.device)
            ko = torch.empty_like(k) if k_contig else torch.empty(k.shape, dtype=k.dtype, device=k.device)
            ent.run(ent.grid, 1, 1, _utils.cuda_stream(dev), ent.function, ent.meta, None, None, None,
                    q, k, cos, sin, qo, ko, *ints, *consts)
            return qo, ko
    q_in, k_in, cos_in, sin_in = q, k, cos, sin
    if qst[3] != 1:
        q = q.contiguous()
        qst = q.stride()
    if kst[3] != 1:
        k = k.contiguous()
        kst = k.stride()
    if cst[-1] != 1 or sin.stride() != cst:
        cos, sin = cos.contiguous(), sin.contiguous()
        cst = cos.stride()
    q_contig, k_contig = q.is_contiguous(), k.is_contiguous()
    qo = torch.empty_like(q) if q_contig else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty_like(k) if k_contig else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    bhsd = layout == "bhsd"
    if bhsd:
        B, HQ, S, D = q.shape
        HK = k.shape[1]
        sq_b, sq_h, sq_s = qst[0], qst[1], qst[2]
        sk_b, sk_h, sk_s = kst[0], kst[1], kst[2]
    else:
        B, S, HQ, D = q.shape
        HK = k.shape[2]
        sq_b, sq_s, sq_h = qst[0], qst[1], qst[2]
        sk_b, sk_s, sk_h = kst[0], kst[1], kst[2]
    if B * S == 0 or D == 0 or HQ + HK == 0:
        return qo, ko
    if cos.dim() == 2:
        sc_b, sc_s = 0, cst[0]
    else:
        sc_b, sc_s = (0 if cos.shape[0] == 1 else cst[0]), cst[1]
    interleaved = style == "interleaved"
    bs, bhq, bhk, groups, warps = _launch_params(B, S, HQ, HK, D, interleaved, _utils.sm_count(q))
    if block_s is not None or heads_per_block is not None or num_warps is not None:
        bs = block_s or bs
        if heads_per_block is not None:
            g = -(-HQ // heads_per_block)
            bhq = _utils.next_power_of_2(heads_per_block)
            bhk = _utils.next_power_of_2(-(-HK // g))
            groups = max(-(-HQ // bhq), -(-HK // bhk))
        warps = num_warps or warps
    n_sblocks = -(-S // bs)
    n_tiles = B * n_sblocks * groups
    ints = (sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_b, sc_s, S, HQ, HK, n_sblocks, groups, n_tiles)
    consts = (D, _utils.next_power_of_2(D if interleaved else D // 2), bs, bhq, bhk, interleaved, bhsd, v.persistent,
              *_HINTS[v.evict])
    args = (q, k, cos, sin, qo, ko, *ints, *consts)
    if v.persistent:
        grid = min(n_tiles, programs or _persistent_programs(name, v, args, warps, q))
    else:
        grid = n_tiles
    compiled = _rope_fwd_kernel[(grid,)](*args, num_warps=warps)
    if (
        key is not None
        and q is q_in
        and k is k_in
        and cos is cos_in
        and sin is sin_in
        and not ((q.data_ptr() | k.data_ptr() | cos.data_ptr() | sin.data_ptr()) & 15)
    ):
        ent = _utils.CompiledLaunch.make(_rope_fwd_kernel, compiled, grid, warps, extra=(q_contig, k_contig, ints, consts))
        if ent is not None:
            _LAUNCHES.put(key, ent)
    return qo, ko


def _persistent_programs(name: str, v: Variant, args: tuple, warps: int, q: torch.Tensor) -> int:
    key = (name, q.dtype, args[2].dtype, args[3].dtype, args[20:], warps, q.get_device())
    return persistent_programs(_RESIDENT, key, _rope_fwd_kernel, args, warps, v, q, DEFAULT_PROGRAMS_PER_SM)


def _dims(t: torch.Tensor, layout: str):
    """(B, S, H, D) of a 4-D q/k tensor."""
    if layout == "bhsd":
        return t.shape[0], t.shape[2], t.shape[1], t.shape[3]
    return t.shape[0], t.shape[1], t.shape[2], t.shape[3]


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
    """Full validation with messages naming the bad argument; works on symbolic sizes (fake
    kernels). The real kernels run ``_rope_ok`` first and call this only when it fails."""
    op = "rope"
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        _utils.check_tensor(t, name, op)
        _utils.check_float_dtype(t, name, op)
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
    _utils.check_same_device(op, q=q, k=k, cos=cos, sin=sin)


def _rope_ok(q, k, cos, sin, style, layout) -> bool:
    """Cheap happy-path validation for real tensors: plain attribute comparisons, no formatting."""
    if q.dim() != 4 or k.dim() != 4:
        return False
    qs, ks, cs = q.shape, k.shape, cos.shape
    if layout == "bhsd":
        S, kS = qs[2], ks[2]
    elif layout == "bshd":
        S, kS = qs[1], ks[1]
    else:
        return False
    D = qs[3]
    nc = len(cs)
    return (
        (style == "rotate_half" or style == "interleaved")
        and q.dtype in FLOAT_DTYPES
        and k.dtype == q.dtype
        and cos.dtype in FLOAT_DTYPES
        and sin.dtype in FLOAT_DTYPES
        and ks[0] == qs[0]
        and kS == S
        and ks[3] == D
        and D % 2 == 0
        and (nc == 2 or nc == 3)
        and sin.shape == cs
        and cs[-1] == D
        and cs[-2] == S
        and (nc == 2 or cs[0] == 1 or cs[0] == qs[0])
        and k.get_device() == q.get_device()
        and cos.get_device() == q.get_device()
        and sin.get_device() == q.get_device()
    )


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _rope_cuda(q, k, cos, sin, style, layout):
    if not _rope_ok(q, k, cos, sin, style, layout):
        _check_rope(q, k, cos, sin, style, layout)
    _utils.check_no_grad("rope", q, k, cos, sin)
    return rope_triton(q, k, cos, sin, style, layout)


def _rope_fake(q, k, cos, sin, style, layout):
    _check_rope(q, k, cos, sin, style, layout)
    _utils.check_no_grad("rope", q, k, cos, sin)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_cpu(q, k, cos, sin, style, layout):
    _check_rope(q, k, cos, sin, style, layout)
    return rope_reference(q, k, cos, sin, style, layout)


_utils.define_op(
    "rope", "(Tensor q, Tensor k, Tensor cos, Tensor sin, str style, str layout) -> (Tensor, Tensor)",
    cuda=_rope_cuda, fake=_rope_fake,
)
if not _extension.available():
    _utils.register_cpu("rope", _rope_cpu)
