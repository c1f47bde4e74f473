"""CPU kernel choice for ``kernel_choice="auto"``: regionc's C++ kernels vs Inductor's C++.

For each op and shape class (small = 8 rows/tokens, large = 2048), times the regionc op
(``torch.ops.regionc.*``, the ``regionc._C`` kernel when built) against what Inductor
generates for the same math (the Llama/HF spelling), both called from a ``torch.compile``d
function so they pay the same guard/wrapper overhead; medians of repeated calls. Prints a table and writes JSON; ``regionc/passes/decisions.py`` encodes the
result (swap only where regionc wins). Quick: about a minute on 2 cores.

    python benchmarks/e2e/cpu_decisions.py [--out benchmarks/results/cpu_decisions.json] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import regionc.ops  # noqa: E402
from regionc.models.llama import apply_rope as rope_ref  # noqa: E402


def rms_ref(x, w, eps: float = 1e-5):
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dtype)


def add_rms_ref(x, r, w, eps: float = 1e-5):
    s = x + r
    return rms_ref(s, w, eps), s


def attn_ref(q, k, v):
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def bench(fn, args, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6  # µs


def cases(dtype):
    hidden, hq, hk, d = 2048, 32, 8, 128
    for cls, rows in (("small", 8), ("large", 2048)):
        x = torch.randn(1, rows, hidden, dtype=dtype)
        r = torch.randn_like(x)
        w = torch.rand(hidden, dtype=dtype) + 0.5
        yield ("rms_norm", cls, rows, rms_ref, lambda x, w: torch.ops.regionc.rms_norm(x, w, 1e-5), (x, w))
        yield ("fused_add_rms_norm", cls, rows, add_rms_ref,
               lambda x, r, w: torch.ops.regionc.fused_add_rms_norm(x, r, w, 1e-5), (x, r, w))
        q = torch.randn(1, hq, rows, d, dtype=dtype)
        k = torch.randn(1, hk, rows, d, dtype=dtype)
        cos = torch.randn(1, rows, d, dtype=dtype)
        sin = torch.randn(1, rows, d, dtype=dtype)
        yield ("rope", cls, rows, rope_ref,
               lambda q, k, c, s: torch.ops.regionc.rope(q, k, c, s, "rotate_half", "bhsd"), (q, k, cos, sin))
        if rows <= 256:  # the reference attention is fp32 SDPA: only the small case, to stay quick
            v = torch.randn_like(k)
            yield ("attention", cls, rows, attn_ref,
                   lambda q, k, v: torch.ops.regionc.attention(q, k, v, True, None), (q, k, v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    results = []
    with torch.no_grad():
        for op, cls, rows, ref, regionc_fn, inputs in cases(dtype):
            torch._dynamo.reset()
            compiled = torch.compile(ref, dynamic=False)
            t_inductor = bench(compiled, inputs, args.iters)
            # the op is called from a compiled graph too, so both sides pay the same guard/wrapper cost
            t_regionc = bench(torch.compile(regionc_fn, dynamic=False), inputs, args.iters)
            row = {"op": op, "shape_class": cls, "rows": rows, "inductor_us": round(t_inductor, 1),
                   "regionc_us": round(t_regionc, 1), "regionc_wins": t_regionc <= t_inductor}
            results.append(row)
            print(f"{op:20s} {cls:6s} rows={rows:5d}  inductor {t_inductor:9.1f} us  regionc {t_regionc:9.1f} us"
                  f"  -> {'regionc' if row['regionc_wins'] else 'inductor'}", flush=True)
    meta = {"torch": torch.__version__, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "extension": regionc.ops.extension_loaded(),
            "date": time.strftime("%Y-%m-%d")}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
