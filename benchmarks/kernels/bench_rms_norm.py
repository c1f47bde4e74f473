"""RMSNorm microbenchmark: regionc (Triton) vs eager torch vs torch.compile(eager) vs Liger.
Shapes from TARGETS.md; bf16, hidden-size weight in bf16. GB/s counts x read + weight read + y
written once; % of the measured device copy bandwidth. Inputs rotate through >= 256 MiB.

    python benchmarks/kernels/bench_rms_norm.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SHAPES = [(4096, 4096), (16384, 4096), (32768, 8192), (8, 4096)]
EPS = 1e-6


def eager_rms_norm(x, w):
    # HF Llama form
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def providers():
    import regionc.ops  # noqa: F401

    ps = {
        "regionc": lambda x, w: torch.ops.regionc.rms_norm(x, w, EPS),
        "eager": eager_rms_norm,
        "inductor": torch.compile(eager_rms_norm, dynamic=False),
    }
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        ps["liger"] = lambda x, w: LigerRMSNormFunction.apply(x, w, EPS)
    except Exception:
        print("  liger_kernel not importable: skipped")
    return ps


def run(out_dir: str, dtype=torch.bfloat16) -> dict:
    bw = C.copy_bandwidth_gbps()
    rows = []
    ps = providers()
    with torch.inference_mode():
        for M, N in SHAPES:
            nbytes = (2 * M * N + N) * torch.finfo(dtype).bits // 8
            nxt = C.rotating(lambda: (torch.randn(M, N, device="cuda", dtype=dtype),
                                      torch.randn(N, device="cuda", dtype=dtype)), nbytes)
            for name, fn in ps.items():
                ms = C.try_bench(name, lambda fn=fn: fn(*nxt()))
                gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
                rows.append({"shape": f"{M}x{N}", "provider": name, "ms": ms, "GBps": gbps,
                             "pct_copy_bw": None if gbps is None else 100 * gbps / bw,
                             "input_copies": nxt.copies})
    payload = {"op": "rms_norm", "env": C.env_info(), "dtype": str(dtype), "copy_bandwidth_GBps": bw,
               "bytes": "x read + weight read + y written, once", "results": rows}
    C.print_table(rows, "GBps")
    C.write_results(out_dir, "rms_norm", payload, "GBps", "GB/s")
    return payload


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    args = ap.parse_args()
    C.require_cuda("bench_rms_norm")
    run(args.out)


if __name__ == "__main__":
    main()
