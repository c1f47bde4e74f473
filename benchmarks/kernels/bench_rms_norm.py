"""RMSNorm microbenchmark: regionc (Triton) vs eager torch vs torch.compile(eager) vs Liger, and
every launch variant of the regionc op side by side. Shapes from TARGETS.md; bf16, hidden-size
weight in bf16. GB/s counts x read + weight read + y written once; % of the measured device copy
bandwidth. Inputs rotate through >= 256 MiB.

Rows per shape (``provider``, ``variant``):

* ``regionc`` once per entry of ``regionc.ops.rms_norm.VARIANTS`` (``variant`` column; ``current``
  marks the op's ``VARIANT``), called through ``torch.ops.regionc.rms_norm`` (do_bench: includes each
  call's host cost, which is what bounds the latency shape);
* ``eager``, ``inductor`` (torch.compile of the eager form), ``liger`` (when installed) and
  ``copy`` (``x.clone()``: the bandwidth a plain copy of the same tensor reaches under the same
  timing, i.e. this shape's practical ceiling; its GB/s counts its own bytes);
* latency shape 8x4096 only: ``<provider>+graph`` rows (device time per call inside a CUDA graph)
  and ``host_us`` (host microseconds per op call, no sync) for every variant.

Before timing, a child process checks every variant's results on every shape (``--check-variants``):
a variant that fails or crashes is recorded with its error and left out. The JSON's
``recommendation`` names the variant to set as ``VARIANT`` (rule in ``_common.recommend``);
``targets`` repeats TARGETS.md. Unless ``--no-sweep``: num_warps of the evict and persistent
variants on the two 4096-wide shapes.

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
SWEEP = [{"variant": v, "num_warps": w} for v in ("evict", "persistent+evict") for w in (4, 16)]


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


def check_variants(names: list[str], dtype=torch.bfloat16) -> None:
    """Preflight child: every variant on every shape through the op, twice (the second call takes
    the launch cache where the variant has one), against the torch reference; fused_add too."""
    from regionc.ops import rms_norm as R

    gen = torch.Generator(device="cuda").manual_seed(0)
    inputs = {(M, N): (torch.randn(M, N, device="cuda", dtype=dtype, generator=gen),
                       torch.randn(M, N, device="cuda", dtype=dtype, generator=gen),
                       torch.randn(N, device="cuda", dtype=dtype, generator=gen)) for M, N in SHAPES}
    with torch.inference_mode():
        refs = {s: (R.rms_norm_reference(x, w, EPS), R.fused_add_rms_norm_reference(x, r, w, EPS))
                for s, (x, r, w) in inputs.items()}

        def check_one(name):
            with C.use_variant(R, name):
                for s, (x, r, w) in inputs.items():
                    ref, (ref_f, ref_r) = refs[s]
                    for call in (1, 2):
                        errs = (C.rel_err(torch.ops.regionc.rms_norm(x, w, EPS), ref),
                                *(C.rel_err(o, e) for o, e in zip(torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS),
                                                                   (ref_f, ref_r))))
                        if max(errs) > 1e-2:
                            raise AssertionError(f"wrong result on {label(*s)} (call {call}): rel err {max(errs):.3g}")

        C.check_child(names, check_one)


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    from regionc.ops import rms_norm as R
    from regionc.ops._utils import sm_count

    bw = C.copy_bandwidth_gbps()
    variants = list(R.VARIANTS)
    current = R.VARIANT  # the op's setting (use_variant changes it while a variant is timed)
    status = C.preflight(os.path.abspath(__file__), variants)
    rows, params, sweeps = [], {}, []
    ps = C.eager_providers(regionc_rms_norm, eager_rms_norm, liger_rms_norm)
    del ps["regionc"]  # timed per variant below
    with torch.inference_mode():
        for M, N in SHAPES:
            lab = label(M, N)
            nbytes = (2 * M * N + N) * torch.finfo(dtype).bits // 8
            nxt = C.rotating(lambda: (torch.randn(M, N, device="cuda", dtype=dtype),
                                      torch.randn(N, device="cuda", dtype=dtype)), nbytes)
            for v in variants:
                if status.get(v) is not None:
                    rows.append({"shape": lab, "provider": "regionc", "variant": v, "current": v == current,
                                 "ms": None, "GBps": None, "pct_copy_bw": None, "error": status[v]})
                    continue
                with C.use_variant(R, v):
                    row = C.timed_row(lab, "regionc", lambda: regionc_rms_norm(*nxt()), nbytes, bw, nxt.copies,
                                      variant=v, current=v == current)
                    if (M, N) in LATENCY_SHAPES and row.get("error") is None:
                        x0, w0 = nxt()
                        row["host_us"] = C.host_us_per_call(lambda: regionc_rms_norm(x0, w0))
                rows.append(row)
            rows += C.bandwidth_rows(lab, ps, nxt, nbytes, bw)
            copy_bytes = 2 * M * N * torch.finfo(dtype).bits // 8
            rows.append(C.timed_row(lab, "copy", lambda: nxt()[0].clone(), copy_bytes, bw, nxt.copies))
            x0, w0 = nxt()
            params[lab] = dict(zip(("BLOCK_N", "ROWS", "num_warps", "LOOP"), R._launch_params(M, N, sm_count(x0))))
            if (M, N) in LATENCY_SHAPES:
                for v in variants:
                    if status.get(v) is None:
                        with C.use_variant(R, v):
                            for r in C.graph_rows(lab, {"regionc": regionc_rms_norm}, (x0, w0), nbytes, bw):
                                rows.append({**r, "variant": v, "current": v == current})
                rows += C.graph_rows(lab, ps, (x0, w0), nbytes, bw)
            elif sweep and (M, N) in SWEEP_SHAPES:
                cfgs = [c for c in SWEEP if status.get(c["variant"]) is None]
                sweeps += C.sweep(lab, cfgs, lambda cfg: (lambda: R.rms_norm_triton(*nxt(), EPS, **cfg)), nbytes)
    rec = C.recommend(rows, [v for v in variants if status.get(v) is None], "s2",
                      [label(*s) for s in SHAPES if s not in LATENCY_SHAPES], [label(*s) for s in LATENCY_SHAPES],
                      current)
    return C.report(out_dir, "rms_norm", rows, "GBps", "GB/s", dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="x read + weight read + y written, once (copy rows: x read + written)",
                    variant_setting="regionc.ops.rms_norm.VARIANT", current_variant=current,
                    variants={v: vars(R.VARIANTS[v]) for v in variants}, preflight=status, recommendation=rec,
                    targets=TARGETS, regionc_params=params, sweep=sweeps)


def cpu_host_overhead() -> None:
    """CPU only (no GPU, TRITON_INTERPRET unset): the Python microseconds per op-kernel call
    (``_rms_norm_cuda``: checks, launcher, Triton's JIT launch path) for every variant, with Triton's
    compiler and C launcher stubbed (``_common.stub_triton_launches``). What is left out costs the
    same for every variant: the dispatcher, the C launcher (argument parsing, cuLaunchKernel) and
    the CUDA allocator (here the CPU one)."""
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
            for v in R.VARIANTS:
                with C.use_variant(R, v):
                    res.setdefault(f"rms_norm {v}", []).append(
                        C.time_calls_us(lambda: R._rms_norm_cuda(x, w, EPS), 5000, 5))
                    res.setdefault(f"fused_add_rms_norm {v}", []).append(
                        C.time_calls_us(lambda: R._fused_add_rms_norm_cuda(x, r, w, EPS), 5000, 5))
    print(f"triton {triton.__version__}, torch {torch.__version__}: Python us per call, 8x4096 bf16 (min of 3)")
    for k, v in res.items():
        print(f"  {k:<40} {min(v):7.2f} us")


def main():
    C.bench_main("bench_rms_norm", run, __doc__, check=check_variants, cpu_host_overhead=cpu_host_overhead)


if __name__ == "__main__":
    main()
