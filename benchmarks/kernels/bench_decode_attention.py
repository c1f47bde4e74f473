"""Decode attention over a KV cache (bf16, one query token per sequence, 32 query / 8 KV heads):
``torch.ops.regionc.decode_attention`` against SDPA as models call it, in useful bytes per second
against the device copy bandwidth.

A step's useful bytes are the valid part of the cache (``B * Hkv * pos * D`` elements of K and of V)
plus q and the output: what any decode kernel must move. Every provider is timed on the same
cache of ``capacity = max(--capacity, pos)`` slots, as an HF ``StaticCache`` is allocated once:

* ``regionc[mask]``: the op with the boolean ``[B, 1, 1, capacity]`` mask (what the pass emits);
* ``regionc[kv_len]``: the op with per-sequence valid lengths instead of a mask;
* ``sdpa_gqa``: SDPA with ``enable_gqa=True`` and the mask over the whole cache (no copies);
* ``sdpa_repeat_kv``: HF's ``repeat_kv`` copies of K and V (timed) + masked SDPA (what
  transformers runs under torch.compile);
* ``sdpa_valid_slice``: SDPA with ``enable_gqa`` on ``cache[:, :, :pos]`` without a mask, a
  reference for "SDPA if it knew the length" (its shape changes every step: not CUDA-graph usable
  in a model).

Times are device times inside a CUDA graph (``calls`` calls captured, replayed; the host is out of
the picture, as in regionc's decode graphs); inputs stay fixed, so caches smaller than L2 (batch 1
at short positions) read warm. Each regionc row has ``rel_err_vs_sdpa``. Writes
``decode_attention.json`` (rows, copy bandwidth, speedups vs ``sdpa_repeat_kv`` and ``sdpa_gqa``)
and ``decode_attention.png`` (GB/s against position, a panel per batch size and head dim).

    python benchmarks/kernels/bench_decode_attention.py --out benchmarks/results/kernels

About 2 minutes on an H200 with the defaults; past ``--budget-s`` the remaining shapes are
skipped (recorded under ``skipped``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

HQ, HKV = 32, 8
POSITIONS = (128, 512, 1024, 4096, 16384)
BATCHES = (1, 8, 32, 64)
HEAD_DIMS = (64, 128)


def time_in_graph(fn, target_ms: float = 5.0) -> float:
    """Median device ms per call, captured in a CUDA graph with as many calls as fill ~target_ms."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3
    calls = int(max(2, min(50, target_ms / max(est_ms, 1e-3))))
    return C.bench_graph(fn, calls=calls, replays=10 if est_ms > 1 else 20)


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def providers(q, kc, vc, mask, kv_len, pos):
    op = torch.ops.regionc.decode_attention
    g = q.shape[1] // kc.shape[1]
    return {
        "regionc[mask]": lambda: op(q, kc, vc, mask, None, None),
        "regionc[kv_len]": lambda: op(q, kc, vc, None, kv_len, None),
        "sdpa_gqa": lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True),
        "sdpa_repeat_kv": lambda: F.scaled_dot_product_attention(q, repeat_kv(kc, g), repeat_kv(vc, g), attn_mask=mask),
        "sdpa_valid_slice": lambda: F.scaled_dot_product_attention(q, kc[:, :, :pos], vc[:, :, :pos], enable_gqa=True),
    }


def run(out_dir: str, positions, batches, head_dims, capacity: int, budget_s: float) -> dict:
    C.require_cuda("bench_decode_attention")
    import regionc.ops  # noqa: F401  (registers torch.ops.regionc.*)

    copy_bw = C.copy_bandwidth_gbps()
    print(f"device copy bandwidth: {copy_bw:.0f} GB/s")
    rows, skipped, errors = [], [], {}
    start = time.perf_counter()
    for d in head_dims:
        for b in batches:
            cap = max(capacity, max(positions))
            torch.manual_seed(0)
            kc = torch.randn(b, HKV, cap, d, device="cuda", dtype=torch.bfloat16)
            vc = torch.randn_like(kc)
            q = torch.randn(b, HQ, 1, d, device="cuda", dtype=torch.bfloat16)
            for pos in positions:
                shape = f"B{b} D{d} pos{pos}"
                if time.perf_counter() - start > budget_s:
                    skipped.append(shape)
                    continue
                slots = max(capacity, pos)
                k, v = kc[:, :, :slots], vc[:, :, :slots]
                kv_len = torch.full((b,), pos, device="cuda", dtype=torch.int32)
                mask = (torch.arange(slots, device="cuda") < pos).view(1, 1, 1, slots).expand(b, 1, 1, slots).contiguous()
                useful = 2 * b * HKV * pos * d * 2 + 2 * q.numel() * 2
                ref = F.scaled_dot_product_attention(q.float(), k[:, :, :pos].float(), v[:, :, :pos].float(),
                                                     enable_gqa=True)
                for name, fn in providers(q, k, v, mask, kv_len, pos).items():
                    row = {"shape": shape, "provider": name, "batch": b, "head_dim": d, "pos": pos,
                           "capacity": slots, "useful_bytes": useful}
                    try:
                        ms = time_in_graph(fn)
                        row.update(ms=ms, GBps=useful / (ms * 1e-3) / 1e9)
                        row["pct_copy_bw"] = 100 * row["GBps"] / copy_bw
                        if name.startswith("regionc"):
                            out = fn().float()
                            row["rel_err_vs_sdpa"] = ((out - ref).norm() / ref.norm()).item()
                    except Exception as exc:  # a provider that cannot run here (OOM, no backend) is recorded
                        errors[f"{shape} {name}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                        row["error"] = errors[f"{shape} {name}"]
                        torch.cuda.empty_cache()
                    rows.append(row)
                    if "ms" in row:
                        print(f"{shape:22s} {name:18s} {row['ms'] * 1e3:9.1f} us {row['GBps']:7.0f} GB/s "
                              f"({row['pct_copy_bw']:5.1f}% copy)")
            del kc, vc, q
            torch.cuda.empty_cache()
    payload = {"op": "decode_attention", "env": C.env_info(), "copy_bandwidth_GBps": copy_bw,
               "heads": [HQ, HKV], "capacity": capacity, "timing": "CUDA graph replay, device ms per call",
               "summary": summarize(rows), "skipped": skipped, "errors": errors, "results": rows,
               "seconds": round(time.perf_counter() - start, 1)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "decode_attention.json"), "w") as f:
        json.dump(payload, f, indent=2)
    plot(out_dir, payload)
    print(f"wrote {out_dir}/decode_attention.json ({payload['seconds']} s)")
    return payload


def summarize(rows: list[dict]) -> dict:
    """Per shape: regionc[mask]'s speedup over sdpa_repeat_kv and sdpa_gqa (>1: regionc faster)."""
    by = {(r["shape"], r["provider"]): r.get("ms") for r in rows}
    out = {}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        mine = by.get((shape, "regionc[mask]"))
        if mine:
            out[shape] = {f"vs_{p}": round(by[shape, p] / mine, 2) for p in ("sdpa_repeat_kv", "sdpa_gqa", "sdpa_valid_slice")
                          if by.get((shape, p))}
    return out


def plot(out_dir: str, payload: dict) -> None:
    env = payload["env"]
    C.plot_lines(os.path.join(out_dir, "decode_attention.png"), payload["results"],
                 lambda r: f"batch {r['batch']}, head dim {r['head_dim']}", "pos", "cache position", "useful GB/s",
                 payload["copy_bandwidth_GBps"],
                 f"decode attention, {HQ}/{HKV} heads, bf16, cache {payload['capacity']} slots, on {env['device']} "
                 f"(torch {env['torch']}, triton {env['triton']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=C.DEFAULT_OUT)
    ap.add_argument("--positions", type=int, nargs="+", default=list(POSITIONS))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    ap.add_argument("--capacity", type=int, default=4096, help="cache slots (raised to the position when smaller)")
    ap.add_argument("--budget-s", type=float, default=150.0, help="skip the remaining shapes after this long")
    args = ap.parse_args()
    run(args.out, args.positions, args.batches, args.head_dims, args.capacity, args.budget_s)


if __name__ == "__main__":
    main()
