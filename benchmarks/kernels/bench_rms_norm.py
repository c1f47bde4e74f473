"""RMSNorm microbenchmark: regionc (Triton) vs eager torch vs torch.compile(eager) vs Liger. Shapes
from TARGETS.md; bf16, hidden-size weight in bf16. GB/s counts x read + weight read + y written
once; % of the measured device copy bandwidth. Inputs rotate through >= 256 MiB.

Rows per shape (``provider``):

* ``regionc``: ``torch.ops.regionc.rms_norm`` (do_bench: includes each call's host cost, which is
  what bounds the latency shape), with ``rel_err``: the largest relative error of ``rms_norm`` and
  ``fused_add_rms_norm`` against the torch references on one input;
* ``eager``, ``inductor`` (torch.compile of the eager form), ``liger`` (when installed) and
  ``copy`` (``x.clone()``: the bandwidth a plain copy of the same tensor reaches under the same
  timing, i.e. this shape's practical ceiling; its GB/s counts its own bytes);
* latency shape 8x4096 only: ``<provider>+graph`` rows (device time per call inside a CUDA graph)
  and, on the ``regionc`` row, ``host_us`` (host microseconds per op call, no sync).

``regionc_params`` records the launch heuristic's tiling per shape; ``targets`` repeats TARGETS.md.
Unless ``--no-sweep``: num_warps 4 / 8 / 16 on the two 4096-wide shapes. The sweep of launch
variants (persistent grid, eviction hints, cached launch) is an experiment under benchmarks/experiments/.

    python benchmarks/kernels/bench_rms_norm.py --out benchmarks/results/kernels
    python benchmarks/kernels/bench_rms_norm.py --cpu-host-overhead   # no GPU: Python cost per call
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
TARGETS = {"4096x4096": ">= 2700 GB/s", "16384x4096": ">= 2850 GB/s", "32768x8192": ">= 2850 GB/s",
           "8x4096": "<= 5 us per eager op call"}
SWEEP_SHAPES = {(4096, 4096), (16384, 4096)}
SWEEP = [{"num_warps": w} for w in (4, 8, 16)]


def eager_rms_norm(x, w):
    # HF Llama form
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def liger_rms_norm():
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    return lambda x, w: LigerRMSNormFunction.apply(x, w, EPS)


def regionc_rms_norm(x, w):
    return torch.ops.regionc.rms_norm(x, w, EPS)


def label(M, N):
    return f"{M}x{N}"


def op_rel_err(x, w, r) -> float | str:
    """The largest relative error of ``rms_norm`` and ``fused_add_rms_norm`` (both outputs) against
    the torch references, or the error the op raised."""
    from regionc.ops import rms_norm as R

    try:
        errs = [C.rel_err(regionc_rms_norm(x, w), R.rms_norm_reference(x, w, EPS))]
        outs = torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
        errs += [C.rel_err(o, e) for o, e in zip(outs, R.fused_add_rms_norm_reference(x, r, w, EPS))]
        return max(errs)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    from regionc.ops import rms_norm as R
    from regionc.ops._utils import sm_count

    bw = C.copy_bandwidth_gbps()
    rows, params, sweeps = [], {}, []
    ps = C.eager_providers(regionc_rms_norm, eager_rms_norm, liger_rms_norm)
    with torch.inference_mode():
        for M, N in SHAPES:
            lab = label(M, N)
            nbytes = (2 * M * N + N) * torch.finfo(dtype).bits // 8
            nxt = C.rotating(lambda: (torch.randn(M, N, device="cuda", dtype=dtype),
                                      torch.randn(N, device="cuda", dtype=dtype)), nbytes)
            shape_rows = C.bandwidth_rows(lab, ps, nxt, nbytes, bw)
            op_row = next(r for r in shape_rows if r["provider"] == "regionc")
            x0, w0 = nxt()
            op_row["rel_err"] = op_rel_err(x0, w0, torch.randn_like(x0))
            if (M, N) in LATENCY_SHAPES and op_row["ms"] is not None:
                op_row["host_us"] = C.host_us_per_call(lambda: regionc_rms_norm(x0, w0))
            rows += shape_rows
            copy_bytes = 2 * M * N * torch.finfo(dtype).bits // 8
            rows.append(C.timed_row(lab, "copy", lambda: nxt()[0].clone(), copy_bytes, bw, nxt.copies))
            params[lab] = dict(zip(("BLOCK_N", "ROWS", "num_warps", "LOOP"), R._launch_params(M, N, sm_count(x0))))
            if (M, N) in LATENCY_SHAPES:
                rows += C.graph_rows(lab, ps, (x0, w0), nbytes, bw)
            elif sweep and (M, N) in SWEEP_SHAPES:
                sweeps += C.sweep(lab, SWEEP, lambda cfg: (lambda: R.rms_norm_triton(*nxt(), EPS, **cfg)), nbytes)
    return C.report(out_dir, "rms_norm", rows, "GBps", "GB/s", panels=True, dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="x read + weight read + y written, once (copy rows: x read + written)",
                    targets=TARGETS, regionc_params=params, sweep=sweeps)


def cpu_host_overhead() -> None:
    """CPU only (no GPU, TRITON_INTERPRET unset): the Python microseconds per op-kernel call
    (``_rms_norm_cuda``: checks, launcher, Triton's JIT launch path), with Triton's compiler and C
    launcher stubbed (``_common.stub_triton_launches``). Left out: the dispatcher, the C launcher
    (argument parsing, cuLaunchKernel) and the CUDA allocator (here the CPU one)."""
    import triton

    from regionc.ops import rms_norm as R

    C.stub_triton_launches(R._rms_norm_fwd_kernel)
    x = torch.randn(8, 4096).bfloat16()
    r = torch.randn(8, 4096).bfloat16()
    w = torch.randn(4096).bfloat16()
    res: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(3):  # interleaved, best of 3 (a shared CPU is noisy)
            res.setdefault("torch.empty_like alone", []).append(C.time_calls_us(lambda: torch.empty_like(x), 5000, 5))
            res.setdefault("rms_norm", []).append(C.time_calls_us(lambda: R._rms_norm_cuda(x, w, EPS), 5000, 5))
            res.setdefault("fused_add_rms_norm", []).append(
                C.time_calls_us(lambda: R._fused_add_rms_norm_cuda(x, r, w, EPS), 5000, 5))
    print(f"triton {triton.__version__}, torch {torch.__version__}: Python us per call, 8x4096 bf16 (min of 3)")
    for k, v in res.items():
        print(f"  {k:<40} {min(v):7.2f} us")


def main():
    C.bench_main("bench_rms_norm", run, __doc__, cpu_host_overhead=cpu_host_overhead)


if __name__ == "__main__":
    main()
