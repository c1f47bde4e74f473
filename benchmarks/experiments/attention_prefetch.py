"""Does the decode attention pay for prefetching the output projection's weight into L2?

At a short position the decode attention is latency bound and HBM sits mostly idle while it runs;
the projection that reads its output next is a 2048 × 2048 weight read (8 MiB) that costs several µs
over its bandwidth floor. This chains, per layer of a 32-layer stack with its own cache and weight
(more than L2 holds, as in a model), ``decode_attention`` and the ``skinny_linear`` projection of its
output in one CUDA graph, with the weight handed to the attention as ``prefetch`` and without, and
reports device µs per layer (bf16, 32 query / 8 KV heads, head dim 64, a 4096-slot cache, HF's
boolean mask).

    python benchmarks/experiments/attention_prefetch.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HQ, HKV, D, CAPACITY, LAYERS, WIDTH = 32, 8, 64, 4096, 32, 2048


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--positions", type=int, nargs="+", default=[128, 512, 3900])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 0
    import _common as C

    from benchmarks.common import environment
    from regionc.ops.decode_attention import decode_attention_triton
    from regionc.ops.skinny_linear import skinny_linear_triton, splits_for

    rows = []
    for b in args.batches:
        torch.manual_seed(0)
        caches = [(torch.randn(b, HKV, CAPACITY, D, device="cuda", dtype=torch.bfloat16),
                   torch.randn(b, HKV, CAPACITY, D, device="cuda", dtype=torch.bfloat16)) for _ in range(LAYERS)]
        weights = [torch.randn(WIDTH, HQ * D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(LAYERS)]
        q = torch.randn(b, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
        splits = splits_for(b, [WIDTH], HQ * D, 8)
        for pos in args.positions:
            mask = (torch.arange(CAPACITY, device="cuda") < pos + 1).view(1, 1, 1, -1).expand(b, 1, 1, -1).contiguous()

            def chain(prefetch: bool, project: bool = True, attend: bool = True):
                def run():
                    out = q
                    for (kc, vc), w in zip(caches, weights):
                        if attend:
                            out = decode_attention_triton(q, kc, vc, mask, None, None, w if prefetch else None)
                        if project:
                            x = out.transpose(1, 2).reshape(b, HQ * D)
                            skinny_linear_triton(x, [w], splits)
                return run

            outs = {}
            for prefetch in (False, True):
                outs[prefetch] = decode_attention_triton(q, *caches[0], mask, None, None,
                                                         weights[0] if prefetch else None)
            err = (outs[True].float() - outs[False].float()).abs().max().item()
            variants = {"attention+projection": chain(False), "attention(prefetch)+projection": chain(True),
                        "attention": chain(False, project=False), "attention(prefetch)": chain(True, project=False),
                        "projection": chain(False, attend=False)}
            times = {name: 1e3 * C.bench_graph(fn, calls=1, replays=20) / LAYERS for name, fn in variants.items()}
            rows.append({"batch": b, "pos": pos, "o_splits": splits, "us_per_layer": times,
                         "max_abs_diff_prefetch": err})
            print(json.dumps(rows[-1]), flush=True)
    path = Path(args.out) / "attention_prefetch.json"
    os.makedirs(args.out, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
