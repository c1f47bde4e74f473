"""RoPE microbenchmark (rotate-half, q and k, bf16 tables like HF) in both layouts: regionc
(Triton) vs eager HF apply_rotary_pos_emb vs torch.compile of it vs Liger (bhsd only). GB/s
counts q, k, cos, sin read + q_out, k_out written once. Inputs rotate through >= 256 MiB.

Rows: every provider called eagerly (``do_bench``, host cost included) per shape and layout,
plus a decode-like shape (8 tokens) inside a CUDA graph (``<provider>+graph``: device time per
call). The JSON records the launch parameters regionc's heuristic picked and, unless
``--no-sweep``, a sweep of tokens per program x q heads per program x num_warps on the
TARGETS shapes (to re-tune ``regionc.ops.rope._compute_params``).

    python benchmarks/kernels/bench_rope.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import itertools
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
SWEEP = [{"block_s": bs, "heads_per_block": h, "num_warps": w}
         for bs, h, w in itertools.product((1, 2, 4), (8, 16, 32), (4, 8))]


def eager_rope_bshd(q, k, cos, sin):
    """HF apply_rotary_pos_emb with unsqueeze_dim=2 (q, k: [B, S, H, D])."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def liger_rope():
    from liger_kernel.ops.rope import LigerRopeFunction

    return lambda q, k, c, s: LigerRopeFunction.apply(q, k, c, s)


def no_liger():
    raise ImportError("Liger's RoPE takes [B, H, S, D] only")


def providers(layout: str):
    eager = eager_rope_bhsd if layout == "bhsd" else eager_rope_bshd
    return C.eager_providers(lambda q, k, c, s: torch.ops.regionc.rope(q, k, c, s, "rotate_half", layout),
                             eager, liger_rope if layout == "bhsd" else no_liger)


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    from regionc.ops import rope as P
    from regionc.ops._utils import sm_count

    bw = C.copy_bandwidth_gbps()
    rows, params, sweeps = [], {}, []
    esz = torch.finfo(dtype).bits // 8
    with torch.inference_mode():
        for layout in LAYOUTS:
            ps = providers(layout)
            for B, S, Hq, Hk, D in SHAPES + LATENCY_SHAPES:
                nbytes = (2 * B * S * (Hq + Hk) * D + 2 * B * S * D) * esz
                label = f"{B}x{S} tok, {Hq}/{Hk}h d{D} {layout}"

                def make():
                    ang = torch.rand(B, S, D, device="cuda") * 6.28
                    shp = (lambda h: (B, h, S, D)) if layout == "bhsd" else (lambda h: (B, S, h, D))
                    return (torch.randn(shp(Hq), device="cuda", dtype=dtype),
                            torch.randn(shp(Hk), device="cuda", dtype=dtype),
                            ang.cos().to(dtype), ang.sin().to(dtype))

                nxt = C.rotating(make, nbytes)
                rows += C.bandwidth_rows(label, ps, nxt, nbytes, bw)
                q0 = nxt()[0]
                params[label] = dict(zip(("BLOCK_S", "BLOCK_HQ", "BLOCK_HK", "n_groups", "num_warps"),
                                         P._launch_params(B, S, Hq, Hk, D, False, sm_count(q0))))
                if (B, S, Hq, Hk, D) in LATENCY_SHAPES:
                    rows += C.graph_rows(label, ps, nxt(), nbytes, bw)
                elif sweep:
                    sweeps += C.sweep(label, SWEEP, lambda cfg: (
                        lambda: P.rope_triton(*nxt(), "rotate_half", layout, **cfg)), nbytes)
    return C.report(out_dir, "rope", rows, "GBps", "GB/s", dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="q, k, cos, sin read + q_out, k_out written, once", regionc_params=params, sweep=sweeps)


def main():
    C.bench_main("bench_rope", run, __doc__)


if __name__ == "__main__":
    main()
