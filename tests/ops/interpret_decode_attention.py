"""The decode-attention Triton kernels through their launcher under the interpreter (``interpreted.py``),
against float64 SDPA; fp16/fp32 only (tl.dot)."""

import torch
import torch.nn.functional as F
from interpreted import ATOL, failures, finish, gen

from regionc.ops.decode_attention import decode_attention_triton


def sdpa64(q, k, v, mask, kv_len, scale):
    """float64 SDPA on repeat_interleave'd k/v; kv_len folded into a boolean mask; rows with no key -> 0."""
    B, HQ, LQ, D = q.shape
    S = k.shape[2]
    g = HQ // k.shape[1]
    allowed = torch.ones(B, 1, LQ, S, dtype=torch.bool)
    bias = torch.zeros(B, 1, LQ, S, dtype=torch.float64)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            bias = bias + mask.double()
            allowed = allowed & (mask > torch.finfo(mask.dtype).min)  # HF's lowest value excludes a key too
    if kv_len is not None:
        ends = kv_len.reshape(-1).expand(B).view(B, 1, 1, 1) - (LQ - 1 - torch.arange(LQ).view(1, 1, LQ, 1))
        allowed = allowed & (torch.arange(S).view(1, 1, 1, S) < ends)
    bias = bias.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(g, 1),
                                         v.double().repeat_interleave(g, 1), attn_mask=bias, scale=scale)
    return out.nan_to_num(0.0).masked_fill(~allowed.any(-1, keepdim=True), 0.0)


def expect(name, out, ref, tol):
    err = (out.double() - ref).abs().max().item()
    ok = err <= tol and out.shape == ref.shape and out.dtype in ATOL and not out.isnan().any()
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs err {err:.2e} (tol {tol:g})")
    if not ok:
        failures.append(name)


def rand(*shape, dtype):
    return torch.randn(*shape, generator=gen).to(dtype)


# (B, Hq, Hkv, Lq, S, D), launcher overrides, lengths per batch row (None: no kv_len), mask kind
CASES = [
    ((2, 4, 2, 1, 100, 64), {"block_n": 16, "num_splits": 3}, [37, 100], None),       # ragged, 3 splits
    ((3, 8, 2, 1, 64, 128), {"block_n": 16, "num_splits": 1}, [1, 17, 64], None),     # one split: direct store
    ((1, 8, 1, 2, 80, 64), {"block_n": 32, "num_splits": 2}, [50], None),             # GQA 8, Lq 2 causal tail
    ((2, 6, 3, 1, 72, 64), {"block_n": 16, "num_splits": 4}, None, "bool"),           # bool mask, ragged per row
    ((2, 4, 4, 3, 48, 64), {"block_n": 16, "num_splits": 2}, None, "additive"),       # MHA, additive mask
    ((2, 4, 2, 1, 96, 128), {"block_n": 16, "num_splits": 3}, [70, 20], "bool_b1"),   # both, mask broadcast over B
    ((4, 4, 1, 1, 40, 64), {}, [5, 40, 0, 33], None),                                  # default heuristics, an empty row
    ((1, 2, 2, 1, 33, 64), {"block_n": 16, "num_splits": 2}, None, "gptfast"),        # [1, 1, Lq, S] position mask
    ((2, 4, 2, 2, 200, 64), {"block_n": 16, "num_splits": 4}, [37, 190], "bool"),     # 13 blocks strided over 4 splits
    ((1, 4, 2, 1, 520, 64), {}, None, "gptfast"),                                      # default split count and block
    ((2, 4, 2, 1, 90, 64), {"block_n": 16, "num_splits": 2}, None, "hf_min"),         # additive, finfo.min excluded
]


def make_mask(kind, B, LQ, S, lengths):
    if kind is None:
        return None
    if kind == "bool":  # random per-(b, i) valid length plus a hole: exercises block skipping mid-split
        ends = torch.randint(1, S + 1, (B, 1, LQ, 1), generator=gen)
        m = torch.arange(S).view(1, 1, 1, S) < ends
        m[..., 5:21] = False
        m[..., 0] = True
        return m
    if kind == "additive":
        m = torch.randn(B, 1, LQ, S, generator=gen)
        m[..., S // 2:] = float("-inf")
        return m
    if kind == "hf_min":  # HF's additive form: 0 where seen, the dtype's lowest value elsewhere (cast below)
        return torch.zeros(B, 1, LQ, S)
    if kind == "bool_b1":
        m = torch.ones(1, 1, 1, S, dtype=torch.bool)
        m[..., 8:40] = False
        return m
    if kind == "gptfast":  # arange(S) <= input_pos[:, None], as regionc/models/llama.py builds it
        return (torch.arange(S)[None, :] <= torch.tensor([20])[:, None])[None, None]
    raise ValueError(kind)


for dtype in (torch.float16, torch.float32):
    for (B, HQ, HKV, LQ, S, D), kw, lengths, mkind in CASES:
        q, k, v = rand(B, HQ, LQ, D, dtype=dtype), rand(B, HKV, S, D, dtype=dtype), rand(B, HKV, S, D, dtype=dtype)
        mask = make_mask(mkind, B, LQ, S, lengths)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(dtype)
        if mkind == "hf_min":
            mask[0, ..., 30:] = torch.finfo(dtype).min
            mask[1, ..., :50] = torch.finfo(dtype).min
        kv_len = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
        out = decode_attention_triton(q, k, v, mask, kv_len, None, **kw)
        expect(f"decode {dtype} {(B, HQ, HKV, LQ, S, D)} {kw} len={lengths} mask={mkind}", out,
               sdpa64(q, k, v, mask, kv_len, None), ATOL[dtype])

# strided views: q as a transpose of [B, Lq, Hq, D], the caches a slice of a longer cache, a scale,
# one kv_len for every batch row (int64)
q = rand(2, 1, 4, 64, dtype=torch.float16).transpose(1, 2)
kc = rand(2, 2, 90, 64, dtype=torch.float16)[:, :, :70]
vc = rand(2, 2, 90, 64, dtype=torch.float16)[:, :, :70]
kv_len = torch.tensor([45])
expect("decode strided views, shared kv_len, scale", decode_attention_triton(q, kc, vc, None, kv_len, 0.3,
       block_n=16, num_splits=2), sdpa64(q, kc, vc, None, kv_len, 0.3), ATOL[torch.float16])

# skipping, seen through poison: K/V past kv_len, and keys the mask excludes, hold NaN; a kernel
# that let them into the PV product would return NaN (0 * NaN). One split: the masked blocks lie
# among the blocks it owns; three: each split owns some of them (splits own every third block).
for mkind, splits in (("len", 3), ("mask", 3), ("mask", 1), ("min", 3)):
    q = rand(2, 4, 1, 64, dtype=torch.float16)
    kc, vc = rand(2, 2, 96, 64, dtype=torch.float16), rand(2, 2, 96, 64, dtype=torch.float16)
    kv_len, mask = None, None
    if mkind == "len":
        kv_len = torch.tensor([37, 80], dtype=torch.int32)
        kc[0, :, 37:], vc[0, :, 37:], kc[1, :, 80:], vc[1, :, 80:] = (float("nan"),) * 4
    else:
        mask = torch.ones(2, 1, 1, 96, dtype=torch.bool)
        mask[..., 16:48] = False
        kc[:, :, 16:48], vc[:, :, 16:48] = float("nan"), float("nan")
        if mkind == "min":  # HF's additive mask: the lowest fp16 value where the bool mask is False
            mask = torch.zeros(2, 1, 1, 96, dtype=torch.float16).masked_fill(~mask, torch.finfo(torch.float16).min)
    expect(f"decode skips unread keys ({mkind}, {splits} splits)", decode_attention_triton(q, kc, vc, mask, kv_len, None,
           block_n=16, num_splits=splits), sdpa64(q, kc.nan_to_num(0.0), vc.nan_to_num(0.0), mask, kv_len, None), ATOL[torch.float16])

finish()
