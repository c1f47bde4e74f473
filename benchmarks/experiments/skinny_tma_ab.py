"""A/B: the skinny linears' weights read through TMA (Triton tensor descriptors) against the kept
pointer-load kernels (``regionc/ops/skinny_linear.py``), at a decode step's row counts.

At 8 rows a decoder layer's linears are reads of their weights, and the kept kernels reach 70-80%
of copy bandwidth on the large ones (gate/up 19.3 µs, down 10.9 on an H200 against 15.6 and 7.8 at
copy bandwidth: ``benchmarks/results/skinny_linear/``). A TMA copy moves a whole tile per
instruction, so a program keeps more bytes in flight with fewer instructions; this measures whether
that closes the gap. Both sides run without PDL, each in a CUDA graph of one call per weight copy
over enough copies to pass 256 MiB (every call reads its weights from HBM), on the HF Llama 32 × 2048
projections (o, down, and gate/up with the SwiGLU product). The TMA kernels take one weight per launch
(enough for o, down and gate/up) and sweep tile width, K step, pipeline depth and split count.

    python benchmarks/experiments/skinny_tma_ab.py --out DIR [--rows 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import _common as C  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

#: group -> (K, [N per weight]); HF Llama 32 × 2048, 32 / 8 heads, FFN 8192
GROUPS = {"o": (2048, [2048]), "down": (8192, [2048]), "gate_up": (2048, [8192, 8192])}
TILES = {"block_n": (32, 64, 128), "block_k": (64, 128), "stages": (3, 4, 6)}
SPLITS = (1, 2, 4, 8, 16)


@triton.jit
def _skinny_tma_kernel(x_desc, w_desc, Y, M, N, K_SPLIT, STEPS,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    k_lo = split * K_SPLIT
    off_n = pid * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, STEPS):
        xt = x_desc.load([0, k_lo + k * BLOCK_K])
        wt = w_desc.load([off_n, k_lo + k * BLOCK_K])
        acc += tl.dot(xt, tl.trans(wt))
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    rows = split * M + offs_m
    tl.store(Y + rows[:, None] * N + offs_n[None, :], acc, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _swiglu_tma_kernel(x_desc, g_desc, u_desc, Y, M, N, STEPS,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    off_n = pid * BLOCK_N
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, STEPS):
        xt = x_desc.load([0, k * BLOCK_K])
        acc_g += tl.dot(xt, tl.trans(g_desc.load([off_n, k * BLOCK_K])))
        acc_u += tl.dot(xt, tl.trans(u_desc.load([off_n, k * BLOCK_K])))
    dt = Y.dtype.element_ty
    g = acc_g.to(dt).to(tl.float32)
    u = acc_u.to(dt).to(tl.float32)
    act = (g * tl.sigmoid(g)).to(dt).to(tl.float32)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    tl.store(Y + offs_m[:, None] * N + offs_n[None, :], (act * u).to(dt),
             mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def skinny_tma(x, w, splits, bn, bk, stages, warps=4):
    m, k = x.shape
    n = w.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    k_split = k // splits
    out = torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    _skinny_tma_kernel[(triton.cdiv(n, bn), splits)](
        TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]), out, m, n,
        k_split, k_split // bk, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


def swiglu_tma(x, wg, wu, bn, bk, stages, warps=4):
    m, k = x.shape
    n = wg.shape[0]
    bm = max(16, triton.next_power_of_2(m))
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _swiglu_tma_kernel[(triton.cdiv(n, bn),)](
        TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(wg, [bn, bk]),
        TensorDescriptor.from_tensor(wu, [bn, bk]), out, m, n, k // bk,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[8])
    args = parser.parse_args()
    C.require_cuda("skinny_tma_ab")
    from regionc.ops import pdl
    from regionc.ops.skinny_linear import skinny_linear_triton, skinny_swiglu_triton, splits_for

    copy_bw = C.copy_bandwidth_gbps()
    result = {"environment": C.env_info(), "copy_GBps": copy_bw, "rows": []}
    print(f"copy bandwidth {copy_bw:.0f} GB/s")
    dt = torch.bfloat16
    for name, (k, ns) in GROUPS.items():
        wbytes = sum(ns) * k * 2
        torch.manual_seed(0)
        sets = [[torch.randn(n, k, device="cuda", dtype=dt) * 0.02 for n in ns]
                for _ in range(max(2, C.copies_for(wbytes)))]
        for m in args.rows:
            x = torch.randn(m, k, device="cuda", dtype=dt)
            ref = [F.linear(x.float(), w.float()) for w in sets[0]]
            want = F.silu(ref[0].to(dt)).float() * ref[1].to(dt).float() if name == "gate_up" else ref[0]

            def record(variant, call, result_of, **extra):
                it = itertools.cycle(sets)
                try:
                    with pdl.turned_off():
                        ms = C.bench_graph(lambda: call(next(it)), calls=len(sets), replays=10)
                        got = result_of(call(sets[0]))
                except Exception as exc:  # noqa: BLE001 - a tile that does not fit: recorded, the sweep goes on
                    result["rows"].append({"group": name, "rows": m, "variant": variant, **extra,
                                           "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
                    return
                err = ((got.float() - want).norm() / want.norm()).item()
                row = {"group": name, "rows": m, "variant": variant, **extra, "us": ms * 1e3,
                       "GBps": wbytes / (ms * 1e-3) / 1e9, "rel_err": err}
                row["pct_copy"] = 100 * row["GBps"] / copy_bw
                result["rows"].append(row)
                print(f"{name:8s} M{m:<3d} {variant:8s} {json.dumps(extra):60s} {row['us']:7.2f} us "
                      f"{row['pct_copy']:5.1f}% copy err {err:.1e}", flush=True)

            if name == "gate_up":
                record("kept", lambda ws: skinny_swiglu_triton(x, *ws), lambda out: out)
                for bn, bk, stages in itertools.product(*TILES.values()):
                    record("tma", lambda ws: swiglu_tma(x, *ws, bn, bk, stages), lambda out: out,
                           block_n=bn, block_k=bk, stages=stages)
                continue
            splits = splits_for(m, ns, k, most=8)
            record("kept", lambda ws: skinny_linear_triton(x, ws, splits)[0], lambda out: out.sum(0), splits=splits)
            for bn, bk, stages in itertools.product(*TILES.values()):
                for s in SPLITS:
                    if k // s < bk or (ns[0] // bn) * s > 2048:
                        continue
                    record("tma", lambda ws: skinny_tma(x, ws[0], s, bn, bk, stages), lambda out: out.sum(0),
                           block_n=bn, block_k=bk, stages=stages, splits=s)
    best = {}
    for row in result["rows"]:
        if "us" in row and row["rel_err"] < 1e-2:
            key = f"{row['group']} M{row['rows']} {row['variant']}"
            if key not in best or row["us"] < best[key]["us"]:
                best[key] = row
    result["best"] = best
    for key, row in sorted(best.items()):
        print(f"best {key:24s} {row['us']:7.2f} us {row['pct_copy']:5.1f}% copy", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "skinny_tma_ab.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
