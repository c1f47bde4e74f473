"""RoPE microbenchmark (rotate-half, q and k, bf16 tables like HF) in both layouts: regionc
(Triton) vs eager HF apply_rotary_pos_emb vs torch.compile of it vs Liger (bhsd only). GB/s counts
q, k, cos, sin read + q_out, k_out written once. Inputs rotate through >= 256 MiB.

Rows per shape and layout (``provider``):

* ``regionc``: ``torch.ops.regionc.rope`` (do_bench, host cost included), with ``rel_err``: the
  larger relative error of q_out and k_out against the torch reference on one input;
* ``eager``, ``inductor``, ``liger`` (bhsd, when installed) and ``copy`` (``q.clone(), k.clone()``:
  the bandwidth plain copies of q and k reach under the same timing; GB/s of their own bytes);
* decode-like shape (8 tokens) only: ``<provider>+graph`` rows (device time per call inside a CUDA
  graph) and, on the ``regionc`` row, ``host_us`` (host microseconds per op call).

``regionc_params`` records the launch heuristic's tiling per shape; ``targets`` repeats TARGETS.md.
Unless ``--no-sweep``: a few tiles with more tokens per head on the bhsd shapes, to see whether bhsd
wants another tiling. The sweep of launch variants (persistent grid, eviction hints, cached launch)
is an experiment under benchmarks/experiments/.

    python benchmarks/kernels/bench_rope.py --out benchmarks/results/kernels
    python benchmarks/kernels/bench_rope.py --cpu-host-overhead   # no GPU: Python cost per call
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from regionc.models.llama import apply_rope as eager_rope_bhsd  # noqa: E402  (HF apply_rotary_pos_emb)
from regionc.models.llama import rotate_half  # noqa: E402

# (batch, seq, q heads, kv heads, head_dim)
SHAPES = [(1, 4096, 32, 8, 128), (16, 1024, 32, 8, 128)]
LATENCY_SHAPES = [(8, 1, 32, 8, 128)]
LAYOUTS = ("bhsd", "bshd")
TARGETS = {"1x4096 tok, 32/8h d128": ">= 2700 GB/s", "16x1024 tok, 32/8h d128": ">= 2850 GB/s"}
SWEEP = [{"block_s": bs, "heads_per_block": h, "num_warps": 4} for bs, h in ((4, 8), (16, 2), (32, 1))]


def eager_rope_bshd(q, k, cos, sin):
    """HF apply_rotary_pos_emb with unsqueeze_dim=2 (q, k: [B, S, H, D])."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def liger_rope():
    from liger_kernel.ops.rope import LigerRopeFunction

    return lambda q, k, c, s: LigerRopeFunction.apply(q, k, c, s)


def no_liger():
    raise ImportError("Liger's RoPE takes [B, H, S, D] only")


def regionc_rope(layout: str):
    return lambda q, k, c, s: torch.ops.regionc.rope(q, k, c, s, "rotate_half", layout)


def label(B, S, Hq, Hk, D, layout):
    return f"{B}x{S} tok, {Hq}/{Hk}h d{D} {layout}"


def make_inputs(B, S, Hq, Hk, D, layout, dtype, gen=None):
    ang = torch.rand(B, S, D, device="cuda", generator=gen) * 6.28
    shp = (lambda h: (B, h, S, D)) if layout == "bhsd" else (lambda h: (B, S, h, D))
    return (torch.randn(shp(Hq), device="cuda", dtype=dtype, generator=gen),
            torch.randn(shp(Hk), device="cuda", dtype=dtype, generator=gen),
            ang.cos().to(dtype), ang.sin().to(dtype))


def op_rel_err(args: tuple, layout: str) -> float | str:
    """The larger relative error of q_out and k_out against the torch reference, or the error the
    op raised."""
    from regionc.ops import rope as P

    try:
        out = torch.ops.regionc.rope(*args, "rotate_half", layout)
        return max(C.rel_err(o, e) for o, e in zip(out, P.rope_reference(*args, "rotate_half", layout)))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    from regionc.ops import rope as P
    from regionc.ops._utils import sm_count

    bw = C.copy_bandwidth_gbps()
    rows, params, sweeps = [], {}, []
    esz = torch.finfo(dtype).bits // 8
    with torch.inference_mode():
        for layout in LAYOUTS:
            ps = C.eager_providers(regionc_rope(layout), eager_rope_bhsd if layout == "bhsd" else eager_rope_bshd,
                                   liger_rope if layout == "bhsd" else no_liger)
            op = ps["regionc"]
            for shape in SHAPES + LATENCY_SHAPES:
                B, S, Hq, Hk, D = shape
                nbytes = (2 * B * S * (Hq + Hk) * D + 2 * B * S * D) * esz
                lab = label(*shape, layout)
                nxt = C.rotating(lambda: make_inputs(*shape, layout, dtype), nbytes)
                shape_rows = C.bandwidth_rows(lab, ps, nxt, nbytes, bw)
                op_row = next(r for r in shape_rows if r["provider"] == "regionc")
                a0 = nxt()
                op_row["rel_err"] = op_rel_err(a0, layout)
                if shape in LATENCY_SHAPES and op_row["ms"] is not None:
                    op_row["host_us"] = C.host_us_per_call(lambda: op(*a0))
                rows += shape_rows
                rows.append(C.timed_row(lab, "copy", lambda: [t.clone() for t in nxt()[:2]],
                                        2 * B * S * (Hq + Hk) * D * esz, bw, nxt.copies))
                params[lab] = dict(zip(("BLOCK_S", "BLOCK_HQ", "BLOCK_HK", "n_groups", "num_warps"),
                                       P._launch_params(B, S, Hq, Hk, D, False, sm_count(a0[0]))))
                if shape in LATENCY_SHAPES:
                    rows += C.graph_rows(lab, ps, a0, nbytes, bw)
                elif sweep and layout == "bhsd":
                    sweeps += C.sweep(lab, SWEEP, lambda cfg: (
                        lambda: P.rope_triton(*nxt(), "rotate_half", layout, **cfg)), nbytes)
    return C.report(out_dir, "rope", rows, "GBps", "GB/s", panels=True, dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="q, k, cos, sin read + q_out, k_out written, once (copy rows: q, k read + written)",
                    targets=TARGETS, regionc_params=params, sweep=sweeps)


def cpu_host_overhead() -> None:
    """CPU only (no GPU, TRITON_INTERPRET unset): Python microseconds per op-kernel call
    (``_rope_cuda``) on the decode shape, Triton's compiler and C launcher stubbed (see
    bench_rms_norm.cpu_host_overhead for what is left out)."""
    import triton

    from regionc.ops import rope as P

    C.stub_triton_launches(P._rope_fwd_kernel)
    B, S, Hq, Hk, D = LATENCY_SHAPES[0]
    q, k = torch.randn(B, Hq, S, D).bfloat16(), torch.randn(B, Hk, S, D).bfloat16()
    cos, sin = torch.randn(B, S, D).bfloat16(), torch.randn(B, S, D).bfloat16()
    res: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(3):
            res.setdefault("2x torch.empty_like alone", []).append(
                C.time_calls_us(lambda: (torch.empty_like(q), torch.empty_like(k)), 5000, 5))
            res.setdefault("rope", []).append(
                C.time_calls_us(lambda: P._rope_cuda(q, k, cos, sin, "rotate_half", "bhsd"), 5000, 5))
    print(f"triton {triton.__version__}, torch {torch.__version__}: Python us per call, {B}x{S} tok bhsd (min of 3)")
    for k_, v in res.items():
        print(f"  {k_:<40} {min(v):7.2f} us")


def main():
    C.bench_main("bench_rope", run, __doc__, cpu_host_overhead=cpu_host_overhead)


if __name__ == "__main__":
    main()
