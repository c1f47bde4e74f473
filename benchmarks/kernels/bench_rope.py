"""RoPE microbenchmark (rotate-half, q and k, bhsd, bf16 tables like HF): regionc (Triton) vs eager
HF apply_rotary_pos_emb vs torch.compile of it vs Liger. GB/s counts q, k, cos, sin read + q_out,
k_out written once. Inputs rotate through >= 256 MiB.

    python benchmarks/kernels/bench_rope.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# (batch, seq, q heads, kv heads, head_dim)
SHAPES = [(1, 4096, 32, 8, 128), (16, 1024, 32, 8, 128)]


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def eager_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def providers():
    import regionc.ops  # noqa: F401

    ps = {
        "regionc": lambda q, k, c, s: torch.ops.regionc.rope(q, k, c, s, "rotate_half", "bhsd"),
        "eager": eager_rope,
        "inductor": torch.compile(eager_rope, dynamic=False),
    }
    try:
        from liger_kernel.ops.rope import LigerRopeFunction

        ps["liger"] = lambda q, k, c, s: LigerRopeFunction.apply(q, k, c, s)
    except Exception:
        print("  liger_kernel not importable: skipped")
    return ps


def run(out_dir: str, dtype=torch.bfloat16) -> dict:
    bw = C.copy_bandwidth_gbps()
    rows = []
    ps = providers()
    with torch.inference_mode():
        for B, S, Hq, Hk, D in SHAPES:
            esz = torch.finfo(dtype).bits // 8
            nbytes = (2 * B * S * (Hq + Hk) * D + 2 * B * S * D) * esz

            def make():
                ang = torch.rand(B, S, D, device="cuda") * 6.28
                return (torch.randn(B, Hq, S, D, device="cuda", dtype=dtype),
                        torch.randn(B, Hk, S, D, device="cuda", dtype=dtype),
                        ang.cos().to(dtype), ang.sin().to(dtype))

            nxt = C.rotating(make, nbytes)
            for name, fn in ps.items():
                ms = C.try_bench(name, lambda fn=fn: fn(*nxt()))
                gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
                rows.append({"shape": f"{B}x{S} tok, {Hq}/{Hk}h d{D}", "provider": name, "ms": ms, "GBps": gbps,
                             "pct_copy_bw": None if gbps is None else 100 * gbps / bw,
                             "input_copies": nxt.copies})
    payload = {"op": "rope", "env": C.env_info(), "dtype": str(dtype), "copy_bandwidth_GBps": bw,
               "bytes": "q, k, cos, sin read + q_out, k_out written, once", "results": rows}
    C.print_table(rows, "GBps")
    C.write_results(out_dir, "rope", payload, "GBps", "GB/s")
    return payload


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    args = ap.parse_args()
    C.require_cuda("bench_rope")
    run(args.out)


if __name__ == "__main__":
    main()
