"""RMSNorm microbenchmark: regionc (Triton) vs eager torch vs torch.compile(eager) vs Liger.
Shapes from TARGETS.md; bf16, hidden-size weight in bf16. GB/s counts x read + weight read + y
written once; % of the measured device copy bandwidth. Inputs rotate through >= 256 MiB.

Rows per shape: every provider called eagerly (``do_bench``: includes each call's host cost,
which is what bounds small shapes), and for the latency shape (8x4096) every provider again
inside a CUDA graph (``<provider>+graph``: the device time per call, what a decode step inside
regionc's piecewise graphs pays). The JSON also records the launch parameters regionc's
heuristic picked per shape and, unless ``--no-sweep``, a num_warps sweep of the regionc kernel.

    python benchmarks/kernels/bench_rms_norm.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SHAPES = [(4096, 4096), (16384, 4096), (32768, 8192), (8, 4096)]
LATENCY_SHAPES = {(8, 4096)}
EPS = 1e-6


def eager_rms_norm(x, w):
    # HF Llama form
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def liger_rms_norm():
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    return lambda x, w: LigerRMSNormFunction.apply(x, w, EPS)


def providers():
    return C.eager_providers(lambda x, w: torch.ops.regionc.rms_norm(x, w, EPS), eager_rms_norm, liger_rms_norm)


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    from regionc.ops import rms_norm as R
    from regionc.ops._utils import sm_count

    bw = C.copy_bandwidth_gbps()
    rows, params, sweeps = [], {}, []
    ps = providers()
    with torch.inference_mode():
        for M, N in SHAPES:
            label = f"{M}x{N}"
            nbytes = (2 * M * N + N) * torch.finfo(dtype).bits // 8
            nxt = C.rotating(lambda: (torch.randn(M, N, device="cuda", dtype=dtype),
                                      torch.randn(N, device="cuda", dtype=dtype)), nbytes)
            rows += C.bandwidth_rows(label, ps, nxt, nbytes, bw)
            x0, w0 = nxt()
            params[label] = dict(zip(("BLOCK_N", "ROWS", "num_warps", "LOOP"), R._launch_params(M, N, sm_count(x0))))
            if (M, N) in LATENCY_SHAPES:
                rows += C.graph_rows(label, ps, (x0, w0), nbytes, bw)
            elif sweep:
                cfgs = [{"num_warps": w} for w in (4, 8, 16, 32)]
                sweeps += C.sweep(label, cfgs, lambda cfg: (lambda: R.rms_norm_triton(*nxt(), EPS, **cfg)), nbytes)
    return C.report(out_dir, "rms_norm", rows, "GBps", "GB/s", dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="x read + weight read + y written, once", regionc_params=params, sweep=sweeps)


def main():
    C.bench_main("bench_rms_norm", run, __doc__)


if __name__ == "__main__":
    main()
