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

One program per tile, launched through the Triton JIT; CUDA-graph safe (no host sync, the outputs
are the only allocations). Launch variants (a persistent grid, L2 eviction hints, a cached launch
that skips the JIT's per-call argument binding) were measured and not kept: on an H100 none beat this
launch in geomean GB/s, the cached launch only shortened eager calls outside CUDA graphs (about 5 us
against 38-48 us at 8 tokens; inside a graph this launch was 1.5-1.6 us against 1.6-1.7), and the
decision table never swaps the op in (``benchmarks/experiments/norm_rope_launch_variants.py``,
``benchmarks/results/rope/h100-2026-11-25.json``).

``benchmarks/kernels/bench_rope.py`` times the op against eager HF RoPE, Inductor, Liger and plain
copies of q and k on the TARGETS shapes, in both layouts.
"""

from __future__ import annotations

import torch

from regionc.ops import _extension, _utils
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton

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
        D: tl.constexpr, BHSD: tl.constexpr, INTERLEAVED: tl.constexpr,
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
            x = tl.load(X + in_off + d3, mask=mask, other=0.0).to(tl.float32)
            xp = tl.load(X + in_off + (offs_d ^ 1)[None, None, :], mask=mask, other=0.0).to(tl.float32)
            even = ((offs_d % 2) == 0)[None, None, :]
            out = x * c1 + tl.where(even, -xp, xp) * s1
            tl.store(XO + out_off + d3, out.to(XO.dtype.element_ty), mask=mask)
        else:
            # the tile covers one half; both halves are loaded (each element read once)
            x1 = tl.load(X + in_off + d3, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(X + in_off + D // 2 + d3, mask=mask, other=0.0).to(tl.float32)
            o1 = x1 * c1 - x2 * s1
            o2 = x2 * c2 + x1 * s2
            tl.store(XO + out_off + d3, o1.to(XO.dtype.element_ty), mask=mask)
            tl.store(XO + out_off + D // 2 + d3, o2.to(XO.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_fwd_kernel(
        Q, K, COS, SIN, QO, KO,
        sq_b, sq_s, sq_h,
        sk_b, sk_s, sk_h,
        sc_b, sc_s,
        S, HQ, HK, n_sblocks, n_groups,
        D: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_HQ: tl.constexpr,
        BLOCK_HK: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        BHSD: tl.constexpr,
    ):
        """One program per tile: program t = (batch b, token block, head group g), g fastest, of
        B * n_sblocks * n_groups. cos/sin [BLOCK_S, 1, BLOCK_D] loaded once and reused for every q
        and k head of the group. cos and sin share strides."""
        t = tl.program_id(0)
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
        c1 = tl.load(COS + t_off, mask=t_mask, other=0.0).to(tl.float32)
        s1 = tl.load(SIN + t_off, mask=t_mask, other=0.0).to(tl.float32)
        if INTERLEAVED:
            c2 = c1
            s2 = s1
        else:
            c2 = tl.load(COS + t_off + D // 2, mask=t_mask, other=0.0).to(tl.float32)
            s2 = tl.load(SIN + t_off + D // 2, mask=t_mask, other=0.0).to(tl.float32)
        offs_hq = g * BLOCK_HQ + tl.arange(0, BLOCK_HQ)
        _rope_tile(Q, QO, b, offs_s, s_mask, s64, offs_hq, HQ, S, sq_b, sq_s, sq_h,
                   offs_d, d_mask, c1, s1, c2, s2, D, BHSD, INTERLEAVED)
        offs_hk = g * BLOCK_HK + tl.arange(0, BLOCK_HK)
        _rope_tile(K, KO, b, offs_s, s_mask, s64, offs_hk, HK, S, sk_b, sk_s, sk_h,
                   offs_d, d_mask, c1, s1, c2, s2, D, BHSD, INTERLEAVED)


#: elements (q + k, whole head dims) one program's tiles may hold
TILE_ELEMS = 4096
#: programs per SM the grid should reach before tiles are made larger
MIN_PROGRAMS_PER_SM = 4


#: (at least this many elements in a tile, num_warps), largest first
_WARP_STEPS = ((4096, 8), (2048, 4), (1024, 2))


def _warps_for(elems: int) -> int:
    """~8-16 elements per thread: memory-bound, keep registers low and occupancy high."""
    return next((warps for at_least, warps in _WARP_STEPS if elems >= at_least), 1)


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


def rope_triton(q, k, cos, sin, style: str, layout: str, *, block_s: int | None = None,
                heads_per_block: int | None = None, num_warps: int | None = None):
    """Launch the Triton kernel, one program per tile. ``block_s`` (tokens per program),
    ``heads_per_block`` (q heads per program; k heads scale by Hk/Hq) and ``num_warps`` override
    the heuristics (tests use them for ragged and multi-group tiles on tiny shapes)."""
    if _utils.needs_device_switch(q):
        with torch.cuda.device(q.device):
            return rope_triton(q, k, cos, sin, style, layout, block_s=block_s, heads_per_block=heads_per_block,
                               num_warps=num_warps)
    qst, kst, cst = q.stride(), k.stride(), cos.stride()
    if qst[3] != 1:
        q = q.contiguous()
        qst = q.stride()
    if kst[3] != 1:
        k = k.contiguous()
        kst = k.stride()
    if cst[-1] != 1 or sin.stride() != cst:
        cos, sin = cos.contiguous(), sin.contiguous()
        cst = cos.stride()
    qo = torch.empty_like(q) if q.is_contiguous() else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty_like(k) if k.is_contiguous() else torch.empty(k.shape, dtype=k.dtype, device=k.device)
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
    _rope_fwd_kernel[(B * n_sblocks * groups,)](
        q, k, cos, sin, qo, ko, sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_b, sc_s, S, HQ, HK, n_sblocks, groups,
        D, _utils.next_power_of_2(D if interleaved else D // 2), bs, bhq, bhk, interleaved, bhsd, num_warps=warps)
    return qo, ko


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
