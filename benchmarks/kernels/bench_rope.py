"""RoPE microbenchmark (rotate-half, q and k, bhsd, bf16 tables like HF): regionc (Triton) vs eager
HF apply_rotary_pos_emb vs torch.compile of it vs Liger. GB/s counts q, k, cos, sin read + q_out,
k_out written once. Inputs rotate through >= 256 MiB.

    python benchmarks/kernels/bench_rope.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from regionc.models.llama import apply_rope as eager_rope  # noqa: E402  (HF apply_rotary_pos_emb)

# (batch, seq, q heads, kv heads, head_dim)
SHAPES = [(1, 4096, 32, 8, 128), (16, 1024, 32, 8, 128)]


def liger_rope():
    from liger_kernel.ops.rope import LigerRopeFunction

    return lambda q, k, c, s: LigerRopeFunction.apply(q, k, c, s)


def providers():
    return C.eager_providers(lambda q, k, c, s: torch.ops.regionc.rope(q, k, c, s, "rotate_half", "bhsd"),
                             eager_rope, liger_rope)


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
            rows += C.bandwidth_rows(f"{B}x{S} tok, {Hq}/{Hk}h d{D}", ps, nxt, nbytes, bw)
    return C.report(out_dir, "rope", rows, "GBps", "GB/s", dtype=str(dtype), copy_bandwidth_GBps=bw,
                    bytes="q, k, cos, sin read + q_out, k_out written, once")


def main():
    C.bench_main("bench_rope", run, __doc__)


if __name__ == "__main__":
    main()
