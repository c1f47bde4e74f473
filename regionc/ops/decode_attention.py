"""Decode attention over an un-expanded KV cache (GQA-native split-KV "flash-decoding"): Triton
kernels, launcher, torch reference, op registration.

Op (namespace ``regionc``)::

    decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor? mask, Tensor? kv_len,
                     float? scale) -> Tensor

* q ``[B, Hq, Lq, D]`` with few query rows (decode: ``Lq`` = 1, or a handful of speculative
  tokens); k_cache/v_cache ``[B, Hkv, S, D]`` — the cache as it is stored, never repeated —
  with ``Hq % Hkv == 0``: query head ``h`` reads kv head ``h // (Hq // Hkv)`` (what HF's
  ``repeat_kv`` and ``repeat_interleave(Hq // Hkv, dim=1)`` build with copies). Any strides on
  B/H/S (a cache slice, a transpose view); a non-unit stride on D costs a copy.
* ``mask`` (optional), broadcastable to ``[B, 1, Lq, S]`` (one mask for all heads, as HF and
  gpt-fast build it): boolean (True = attend) or additive float (added to the scaled scores,
  as SDPA's ``attn_mask``), where ``-inf`` and the mask dtype's lowest value (what HF writes,
  ``torch.finfo(dtype).min``) exclude a key: it is never read, as with a False entry.
* ``kv_len`` (optional), integer ``[B]`` or one element: the number of valid cache slots seen by
  the *last* query row of batch ``b``; query row ``i`` sees keys ``j < kv_len[b] - (Lq - 1 - i)``
  (bottom-right causal over the cache, as ``flash_attn_with_kvcache``'s ``cache_seqlens``).
  Combined with ``mask`` when both are given.
* ``scale=None`` means ``1/sqrt(D)``. Output ``[B, Hq, Lq, D]`` contiguous in q's dtype. A query
  row that sees no key gets zeros (as SDPA's math backend).

CUDA kernels (bf16/fp16/fp32, D in {64, 128}; anything else runs the reference, logged once):

* ``_decode_split_kernel``: grid ``(splits, B * Hkv)``. A program owns one KV head of one batch
  row and every ``splits``-th key block of the cache (strided: the valid prefix of a long cache
  is spread over all splits, so a step's latency follows the valid length divided by the split
  count, not the capacity's), and serves all ``Hq/Hkv * Lq`` query rows that read that head as
  the rows of one ``tl.dot`` tile, so each cache byte is read once per step. It skips every key
  block past ``kv_len`` and every block the mask excludes entirely (the mask of all its blocks is
  read first, in one load: S bytes against 4·D·S bytes of K/V), which is what makes a step cost
  the valid part of the cache, not its capacity. The loop runs over the live blocks only (ranked
  by a prefix sum), without a branch, so K and V of the next block load while this one computes. Online softmax in exp2, fp32 accumulation; it
  writes the un-normalised partial output and (max, sum) per row and split.
* ``_decode_reduce_kernel``: grid ``(B * Hq * Lq)``, combines the splits. With one split the
  first kernel writes the output itself and this launch is skipped.

The split count is a runtime argument (only "one split", the blocks-per-split power-of-two bucket
and the reduce's power-of-two bucket are compiled in, so new batch sizes rarely compile anew) and depends on shapes only (``_num_splits``), never on ``kv_len`` or mask values:
the launcher reads nothing from the GPU, so it has no host sync, the grid is the same on every
replay, and the split workspace is one ``torch.empty`` whose size is fixed by the shapes — inside
a CUDA-graph capture it comes from the graph's pool like any activation. CUDA-graph safe.

On Hopper and newer both kernels launch with programmatic dependent launch (``regionc/ops/pdl.py``)
and wait for the kernel before them ahead of any load: the reduce's programs are scheduled while the
split kernel runs, and the next kernel's while the reduce runs. Where the whole grid is resident at
once (one wave), a split program first asks L2 for the K and V of its first ``PREFETCH_BLOCKS`` key
blocks and for the mask bytes of all its blocks (hints that read no value, so right even where the
kernel before writes the newest key): all programs start together, and without the hint HBM sits idle
while they read q and the mask. A program of a later wave starts after the kernel before has finished,
so there the hint only delays it.
"""

from __future__ import annotations

import math

import torch

from regionc.logs import log_once
from regionc.ops import _utils
from regionc.ops._utils import FLOAT_DTYPES, check, tl, triton
from regionc.ops.pdl import launch_args

TRITON_HEAD_DIMS = (64, 128)
LOG2E = 1.4426950408889634

#: keys per block and launch shape, and programs per SM the split count aims at over the whole
#: cache (a short valid length uses fewer): the best of a sweep over block size, split count,
#: warps and stages at batch 8 on a 4096-slot cache, positions 512 and 3900 on an H200 — 7.5 and
#: 22.8 µs against 9.4 and 25.5 with 64-key blocks at 8 programs per SM
#: (benchmarks/results/decode_attention/h200-2026-12-03-split-sweep.json)
BLOCK_N = 128
NUM_WARPS = 4
NUM_STAGES = 2
PROGRAMS_PER_SM = 4
#: a split covers at least this many keys (a shorter one spends more on its partial row than it reads)
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 64
#: a split owns at most this many key blocks (their mask is one register tile); past
#: MAX_SPLITS * this many blocks the split count grows instead
MAX_BLOCKS_PER_SPLIT = 64
#: key blocks of K and V a split program asks L2 for before it waits for the kernel before it (under
#: PDL, when the grid is one wave of PROGRAMS_PER_SM per SM): its first block. On an H100, 4096-slot
#: cache, D64, 32/8 heads, bool mask: batch 8 at position 3900 took 28.5 µs against 29.7 without, batch
#: 1 4.8 / 7.5 against 5.0 / 7.8 at positions 512 / 3900, batch 8 at 512 9.0 against 9.0; batch 32 (three
#: waves) 21.5 / 100.3 against 19.9 / 98.1, and two blocks were no better anywhere
#: (benchmarks/results/decode_attention/h100-2026-12-05-prefetch-ab.json)
PREFETCH_BLOCKS = 1

_MASK_NONE, _MASK_BOOL, _MASK_ADD = 0, 1, 2

# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------

if _utils.HAS_TRITON:
    from regionc.ops.pdl import prefetch_l2, prefetch_rows, start

    @triton.jit(do_not_specialize=["HKV", "SEQ_K", "BLOCKS_PER_SPLIT", "N_SPLITS"])
    def _decode_split_kernel(
        Q, K, V, MASK, KV_LEN, PART, OUT, qk_scale,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_mb, stride_mq, stride_mn,
        stride_lb,
        stride_ob, stride_oh, stride_om,
        HKV, SEQ_K, BLOCKS_PER_SPLIT, N_SPLITS,
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, LQ: tl.constexpr, SINGLE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCKS_P2: tl.constexpr,
        MASK_KIND: tl.constexpr, HAS_LEN: tl.constexpr, DOT_PRECISION: tl.constexpr, MASK_FLOOR: tl.constexpr,
        PDL: tl.constexpr, PREFETCH: tl.constexpr, KV_LINES: tl.constexpr, MASK_LINES: tl.constexpr,
    ):
        split = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // HKV).to(tl.int64)
        kvh = (bh % HKV).to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        jj = tl.arange(0, BLOCKS_P2)
        blk = split + jj * N_SPLITS
        kv_lines = tl.arange(0, KV_LINES) * (HEAD_DIM // KV_LINES)
        for ahead in tl.static_range(PREFETCH):  # hints only (no value read): before the wait
            keys = (split + ahead * N_SPLITS) * BLOCK_N + offs_n
            prefetch_rows(K + b * stride_kb + kvh * stride_kh, keys, SEQ_K - 1, stride_kn, kv_lines)
            prefetch_rows(V + b * stride_vb + kvh * stride_vh, keys, SEQ_K - 1, stride_vn, kv_lines)
        if PREFETCH > 0 and MASK_KIND != 0:
            mcols = blk[:, None] * BLOCK_N + (tl.arange(0, MASK_LINES) * (BLOCK_N // MASK_LINES))[None, :]
            mcols = tl.minimum(mcols, SEQ_K - 1).to(tl.int64)
            for i in tl.static_range(LQ):
                prefetch_l2(MASK + b * stride_mb + i * stride_mq + mcols * stride_mn)
        start(PDL)
        # tile row r = (query head kvh * GROUP + r // LQ, query row r % LQ)
        rows = tl.arange(0, BLOCK_M)
        row_ok = rows < GROUP * LQ
        qi = rows % LQ
        h = kvh * GROUP + rows // LQ
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + qi[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        k_base = K + b * stride_kb + kvh * stride_kh
        v_base = V + b * stride_vb + kvh * stride_vh
        m_base = MASK + b * stride_mb + qi[:, None] * stride_mq

        # this program's key blocks (blk): split, split + N_SPLITS, split + 2 * N_SPLITS, ... (strided, so
        # a short valid prefix of a long cache is spread over every split instead of the first few)
        end = SEQ_K
        if HAS_LEN:
            kv_len = tl.load(KV_LEN + b * stride_lb).to(tl.int32)
            end = tl.minimum(end, kv_len)  # no row sees past the last row's length: never loaded
            row_end = kv_len - (LQ - 1 - qi)
        live = (jj < BLOCKS_PER_SPLIT) & (blk * BLOCK_N < end)
        if MASK_KIND != 0:
            # the mask of all of them in one load (S bytes against 4·D·S of K/V): a block no row may
            # see is never read, and the check costs one memory latency, not one per block
            cols2 = blk[:, None] * BLOCK_N + offs_n[None, :]
            read = live[:, None] & (cols2 < end)
            seen = tl.zeros([BLOCKS_P2], dtype=tl.int32)
            for i in tl.static_range(LQ):
                ptr = MASK + b * stride_mb + i * stride_mq + cols2 * stride_mn
                if MASK_KIND == 1:
                    ok = tl.load(ptr, mask=read, other=0) != 0
                else:
                    ok = tl.load(ptr, mask=read, other=float("-inf")).to(tl.float32) > MASK_FLOOR
                seen = tl.maximum(seen, tl.max(ok.to(tl.int32), 1))
            live = live & (seen > 0)
        live = live.to(tl.int32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # the live blocks only, in order, with no branch in the loop body, so its loads pipeline:
        # on an H200 batch 32 at position 4096 takes 75 µs against 115 with a branch per block
        # (benchmarks/results/decode_attention/h200-2026-12-03-live-block-loop.json)
        rank = tl.cumsum(live, 0) - live
        for i in range(0, tl.sum(live, 0)):
            j = tl.sum(tl.where((rank == i) & (live > 0), jj, 0), 0)
            cols = (split + j * N_SPLITS) * BLOCK_N + offs_n
            in_range = cols < end
            valid = row_ok[:, None] & in_range[None, :]
            if HAS_LEN:
                valid = valid & (cols[None, :] < row_end[:, None])
            if MASK_KIND == 1:
                mv = tl.load(m_base + cols[None, :] * stride_mn, mask=valid, other=0)
                valid = valid & (mv != 0)
            elif MASK_KIND == 2:
                bias = tl.load(m_base + cols[None, :] * stride_mn, mask=valid, other=float("-inf")).to(tl.float32)
                valid = valid & (bias > MASK_FLOOR)
            # K and V in flight together: V does not wait for the softmax, so a block costs
            # one memory latency, not two
            k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kn + offs_d[None, :],
                        mask=in_range[:, None], other=0.0)
            v = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                        mask=in_range[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            if MASK_KIND == 2:
                s = s + bias * 1.4426950408889634
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet: no NaN
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        if SINGLE:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            tl.store(OUT + b * stride_ob + h[:, None] * stride_oh + qi[:, None] * stride_om + offs_d[None, :],
                     out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
        else:
            # PART: [B * Hq * Lq, N_SPLITS, HEAD_DIM + 2] fp32 (un-normalised output, max, sum)
            row = ((b * HKV + kvh) * GROUP + rows // LQ) * LQ + qi
            base = PART + (row * N_SPLITS + split) * (HEAD_DIM + 2)
            tl.store(base[:, None] + offs_d[None, :], acc, mask=row_ok[:, None])
            tl.store(base + HEAD_DIM, m_i, mask=row_ok)
            tl.store(base + HEAD_DIM + 1, l_i, mask=row_ok)

    @triton.jit(do_not_specialize=["HQ", "N_SPLITS"])
    def _decode_reduce_kernel(
        PART, OUT, stride_ob, stride_oh, stride_om, HQ, N_SPLITS,
        HEAD_DIM: tl.constexpr, LQ: tl.constexpr, SPLITS_P2: tl.constexpr, PDL: tl.constexpr,
    ):
        start(PDL)
        row = tl.program_id(0).to(tl.int64)
        offs_s = tl.arange(0, SPLITS_P2)
        offs_d = tl.arange(0, HEAD_DIM)
        s_ok = offs_s < N_SPLITS
        base = PART + (row * N_SPLITS + offs_s) * (HEAD_DIM + 2)
        m = tl.load(base + HEAD_DIM, mask=s_ok, other=float("-inf"))
        l = tl.load(base + HEAD_DIM + 1, mask=s_ok, other=0.0)  # noqa: E741
        m_max = tl.max(m, 0)
        w = tl.math.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty splits weigh 0
        total = tl.sum(w * l, 0)
        acc = tl.load(base[:, None] + offs_d[None, :], mask=s_ok[:, None], other=0.0)
        out = tl.sum(w[:, None] * acc, 0) / tl.where(total == 0.0, 1.0, total)
        b = row // (HQ * LQ)
        h = (row // LQ) % HQ
        i = row % LQ
        tl.store(OUT + b * stride_ob + h * stride_oh + i * stride_om + offs_d, out.to(OUT.dtype.element_ty))


# --------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------


def _num_splits(batch_heads: int, seq: int, block_n: int, sms: int) -> int:
    """Splits of the cache per (batch, kv head): enough programs for ``PROGRAMS_PER_SM`` per SM
    over a full cache, none shorter than ``MIN_SPLIT_KEYS`` keys, at most ``MAX_SPLITS`` unless a
    split would own more than ``MAX_BLOCKS_PER_SPLIT`` blocks."""
    blocks = -(-seq // block_n)
    want = -(-PROGRAMS_PER_SM * sms // max(batch_heads, 1))
    n = max(1, min(blocks, -(-seq // MIN_SPLIT_KEYS), want, MAX_SPLITS), -(-blocks // MAX_BLOCKS_PER_SPLIT))
    per = -(-blocks // n)
    return -(-blocks // per)


def _mask_view(mask: torch.Tensor, B: int, Lq: int, S: int) -> tuple[torch.Tensor, int, tuple[int, int, int]]:
    """(tensor the kernel reads, mask kind, (stride over B, over Lq, over S)); broadcast dims get
    stride 0, a bool mask is read as bytes (same storage, no copy)."""
    m = mask.expand(B, 1, Lq, S)
    if m.dtype == torch.bool:
        kind = _MASK_BOOL
        m = m.view(torch.uint8)
    else:
        kind = _MASK_ADD
    st = m.stride()
    return m, kind, (st[0], st[2], st[3])


def _mask_floor(mask: torch.Tensor) -> float:
    """The additive-mask value at or below which a key is excluded: the dtype's lowest finite value."""
    return float(torch.finfo(mask.dtype).min)


def decode_attention_triton(q, k_cache, v_cache, mask=None, kv_len=None, scale=None, *,
                            block_n: int | None = None, num_splits: int | None = None,
                            num_warps: int | None = None, num_stages: int | None = None):
    """Launch the split kernel (and the reduce kernel when there is more than one split).

    ``block_n``/``num_splits``/``num_warps``/``num_stages`` override the defaults (tests use them
    to exercise several splits and ragged blocks on tiny shapes under TRITON_INTERPRET=1; the
    benchmark sweeps them)."""
    if _utils.needs_device_switch(q):
        with torch.cuda.device(q.device):
            return decode_attention_triton(q, k_cache, v_cache, mask, kv_len, scale, block_n=block_n,
                                           num_splits=num_splits, num_warps=num_warps, num_stages=num_stages)
    q, k_cache, v_cache = _utils.unit_stride_last(q, k_cache, v_cache)
    B, HQ, LQ, D = q.shape
    HKV, S = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty((B, HQ, LQ, D), dtype=q.dtype, device=q.device)
    if B * HQ * LQ == 0:
        return out
    if S == 0:
        return out.zero_()
    group = HQ // HKV
    bn = block_n or BLOCK_N
    splits = num_splits or _num_splits(B * HKV, S, bn, _utils.sm_count(q))
    blocks = -(-S // bn)
    per_split = -(-blocks // splits)
    splits = -(-blocks // per_split)
    if mask is not None:
        m, kind, (smb, smq, smn) = _mask_view(mask, B, LQ, S)
    else:
        m, kind, (smb, smq, smn) = q, _MASK_NONE, (0, 0, 0)
    if kv_len is not None:
        lens, slb = kv_len, (0 if kv_len.numel() == 1 else kv_len.stride(0))
    else:
        lens, slb = q, 0
    part = (torch.empty((B * HQ * LQ, splits, D + 2), dtype=torch.float32, device=q.device)
            if splits > 1 else out)
    sm_scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    pdl = launch_args(q)
    qs, ks, vs, os_ = q.stride(), k_cache.stride(), v_cache.stride(), out.stride()
    one_wave = splits * B * HKV <= PROGRAMS_PER_SM * _utils.sm_count(q)
    prefetch = {"PREFETCH": PREFETCH_BLOCKS if pdl["PDL"] and one_wave else 0,  # one address per 128-byte line
                "KV_LINES": max(1, D * k_cache.element_size() // 128),
                "MASK_LINES": max(1, bn * m.element_size() // 128)}
    _decode_split_kernel[(splits, B * HKV)](
        q, k_cache, v_cache, m, lens, part, out, sm_scale * LOG2E,
        qs[0], qs[1], qs[2],
        ks[0], ks[1], ks[2],
        vs[0], vs[1], vs[2],
        smb, smq, smn,
        slb,
        os_[0], os_[1], os_[2],
        HKV, S, per_split, splits,
        HEAD_DIM=D, GROUP=group, LQ=LQ, SINGLE=splits == 1,
        BLOCK_M=max(16, _utils.next_power_of_2(group * LQ)), BLOCK_N=bn,
        BLOCKS_P2=max(2, _utils.next_power_of_2(per_split)),
        MASK_KIND=kind, HAS_LEN=kv_len is not None, MASK_FLOOR=_mask_floor(m) if kind == _MASK_ADD else 0.0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES, **pdl, **prefetch,
    )
    if splits > 1:
        _decode_reduce_kernel[(B * HQ * LQ,)](
            part, out, os_[0], os_[1], os_[2], HQ, splits,
            HEAD_DIM=D, LQ=LQ, SPLITS_P2=max(2, _utils.next_power_of_2(splits)), num_warps=4, **pdl,
        )
    return out


def triton_supported(q: torch.Tensor) -> bool:
    return _utils.HAS_TRITON and q.dtype in FLOAT_DTYPES and q.shape[-1] in TRITON_HEAD_DIMS


# --------------------------------------------------------------------------------------
# torch reference (the CPU kernel, the CUDA fallback, the tests' oracle)
# --------------------------------------------------------------------------------------


def decode_attention_reference(q, k_cache, v_cache, mask=None, kv_len=None, scale=None,
                               compute_dtype=torch.float32):
    """Explicit softmax attention in ``compute_dtype`` with the cache read through a head-group
    view (no repeated copies); rows that see no key give zeros. Result in q's dtype, contiguous."""
    B, HQ, LQ, D = q.shape
    HKV, S = k_cache.shape[1], k_cache.shape[2]
    g = HQ // HKV
    qf = q.to(compute_dtype).reshape(B, HKV, g * LQ, D)
    scores = (qf @ k_cache.to(compute_dtype).transpose(-1, -2)).view(B, HKV, g, LQ, S)
    scores = scores * (1.0 / math.sqrt(D) if scale is None else float(scale))
    allowed = torch.ones((1, 1, 1, LQ, S), dtype=torch.bool, device=q.device)
    if mask is not None:
        mk = mask.expand(B, 1, LQ, S).unsqueeze(1)
        if mk.dtype == torch.bool:
            allowed = allowed & mk
        else:
            scores = scores + mk.to(compute_dtype)
            allowed = allowed & (mk > _mask_floor(mk))
    if kv_len is not None:
        ends = kv_len.reshape(-1).to(torch.int64).expand(B).view(B, 1, 1, 1, 1)
        row_end = ends - (LQ - 1 - torch.arange(LQ, device=q.device).view(1, 1, 1, LQ, 1))
        allowed = allowed & (torch.arange(S, device=q.device).view(1, 1, 1, 1, S) < row_end)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key: 0/0 -> 0
    out = probs.view(B, HKV, g * LQ, S) @ v_cache.to(compute_dtype)
    return out.view(B, HQ, LQ, D).to(q.dtype).contiguous()


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

_OP = "decode_attention"


def _check_decode(q, k, v, mask, kv_len, scale) -> None:
    """Full validation with messages naming the bad argument; works on symbolic sizes."""
    _utils.check_grouped_qkv(_OP, q, k, v, scale, names=("q", "k_cache", "v_cache"), seq="length", kv_heads="cache")
    tensors = {"q": q, "k_cache": k, "v_cache": v}
    if mask is not None:
        _utils.check_tensor(mask, "mask", _OP)
        if mask.dtype != torch.bool and mask.dtype not in FLOAT_DTYPES:
            raise TypeError(f"regionc.{_OP}: mask must be bool or float, got {mask.dtype}")
        want = (q.shape[0], 1, q.shape[2], k.shape[2])
        check(mask.dim() <= 4, f"regionc.{_OP}: mask must broadcast to [B, 1, Lq, S], got shape {tuple(mask.shape)}")
        for got, full in zip(reversed(mask.shape), reversed(want)):
            check((got == 1) | (got == full),
                  f"regionc.{_OP}: mask shape {tuple(mask.shape)} does not broadcast to [B, 1, Lq, S] = {want}")
        tensors["mask"] = mask
    if kv_len is not None:
        _utils.check_tensor(kv_len, "kv_len", _OP)
        if kv_len.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"regionc.{_OP}: kv_len must be int32 or int64, got {kv_len.dtype}")
        check(kv_len.dim() <= 1 and ((kv_len.numel() == 1) | (kv_len.numel() == q.shape[0])),
              f"regionc.{_OP}: kv_len must have B={q.shape[0]} elements or one, got shape {tuple(kv_len.shape)}")
        tensors["kv_len"] = kv_len
    _utils.check_same_device(_OP, **tensors)


def _decode_ok(q, k, v, mask, kv_len) -> bool:
    """Cheap happy-path validation for real tensors: attribute comparisons, no formatting."""
    if not _utils.grouped_qkv_ok(q, k, v):
        return False
    qs, ks = q.shape, k.shape
    dev = q.get_device()
    ok = True
    if mask is not None:
        ms = mask.shape
        ok = (mask.get_device() == dev and mask.dim() == 4 and (mask.dtype == torch.bool or mask.dtype in FLOAT_DTYPES)
              and ms[0] in (1, qs[0]) and ms[1] == 1 and ms[2] in (1, qs[2]) and ms[3] in (1, ks[2]))
    if ok and kv_len is not None:
        ok = (kv_len.get_device() == dev and kv_len.dtype in (torch.int32, torch.int64) and kv_len.dim() <= 1
              and kv_len.numel() in (1, qs[0]))
    return ok


# --------------------------------------------------------------------------------------
# op registration (torch.library directly; see regionc/ops/__init__.py for why)
# --------------------------------------------------------------------------------------


def _decode_cuda(q, k_cache, v_cache, mask, kv_len, scale):
    if not _decode_ok(q, k_cache, v_cache, mask, kv_len):
        _check_decode(q, k_cache, v_cache, mask, kv_len, scale)
    _utils.check_no_grad(_OP, q, k_cache, v_cache)
    if triton_supported(q):
        return decode_attention_triton(q, k_cache, v_cache, mask, kv_len, scale)
    log_once(f"decode-fallback-{q.dtype}-{q.shape[-1]}",
             "regionc.decode_attention: no Triton kernel for dtype=%s head_dim=%s (triton=%s); "
             "using the torch reference", q.dtype, q.shape[-1], _utils.HAS_TRITON)
    return decode_attention_reference(q, k_cache, v_cache, mask, kv_len, scale)


def _decode_fake(q, k_cache, v_cache, mask, kv_len, scale):
    _check_decode(q, k_cache, v_cache, mask, kv_len, scale)
    _utils.check_no_grad(_OP, q, k_cache, v_cache)
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], q.shape[3]))


def _decode_cpu(q, k_cache, v_cache, mask, kv_len, scale):
    _check_decode(q, k_cache, v_cache, mask, kv_len, scale)
    return decode_attention_reference(q, k_cache, v_cache, mask, kv_len, scale)


_utils.define_op(
    _OP, "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor? mask, Tensor? kv_len, float? scale) -> Tensor",
    cuda=_decode_cuda, fake=_decode_fake,
)
_utils.register_cpu(_OP, _decode_cpu)
