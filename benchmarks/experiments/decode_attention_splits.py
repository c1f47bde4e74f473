"""Which split shape should ``regionc.decode_attention`` launch? A sweep of keys per program
(``block_n`` × blocks per split, via ``num_splits``), warps and pipeline stages, on the HF-style boolean mask over a
4096-slot cache (bf16, 32 query / 8 KV heads), against the launcher's default choice.

Times are device µs per call inside a CUDA graph (``bench_decode_attention.time_in_graph``); the
cache is larger than L2 at batch ≥ 8, as in a model where every layer has its own.

    python benchmarks/experiments/decode_attention_splits.py --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HQ, HKV, CAPACITY = 32, 8, 4096


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--positions", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64])
    ap.add_argument("--stages", type=int, nargs="+", default=[2])
    ap.add_argument("--splits", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--block-ns", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 0
    from bench_decode_attention import time_in_graph

    from regionc.ops.decode_attention import decode_attention_triton

    rows = []
    for d, b in itertools.product(args.head_dims, args.batches):
        torch.manual_seed(0)
        kc = torch.randn(b, HKV, CAPACITY, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(b, HQ, 1, d, device="cuda", dtype=torch.bfloat16)
        for pos in args.positions:
            mask = (torch.arange(CAPACITY, device="cuda") < pos).view(1, 1, 1, -1).expand(b, 1, 1, -1).contiguous()
            best = None
            configs = [None] + [dict(block_n=n, num_splits=s, num_warps=w, num_stages=st) for n, s, w, st in
                                itertools.product(args.block_ns, args.splits, args.warps, args.stages)
                                if CAPACITY // n >= s]
            for kw in configs:
                try:
                    us = 1e3 * time_in_graph(lambda kw=kw: decode_attention_triton(q, kc, vc, mask, None, None,
                                                                                   **(kw or {})))
                except Exception as exc:  # a config Triton cannot build here is recorded, not fatal
                    rows.append({"batch": b, "head_dim": d, "pos": pos, "config": kw, "error": str(exc)[:200]})
                    continue
                rows.append({"batch": b, "head_dim": d, "pos": pos, "config": kw or "default", "us": us})
                if kw is not None and (best is None or us < best[0]):
                    best = (us, kw)
            default = next(r["us"] for r in rows if r["config"] == "default" and r["batch"] == b
                           and r["head_dim"] == d and r["pos"] == pos)
            print(f"B{b} D{d} pos{pos}: default {default:7.1f} us, best {best[0]:7.1f} us {best[1]}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "decode_attention_splits.json")
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "capacity": CAPACITY,
                   "heads": [HQ, HKV], "rows": rows}, f, indent=1)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
