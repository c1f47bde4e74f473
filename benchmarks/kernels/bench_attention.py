"""Attention forward microbenchmark (bf16): regionc (Triton, native GQA) vs SDPA with the flash,
cuDNN and efficient backends (a backend that errors on a shape is skipped) and, for GQA shapes, the
eager model path (repeat_interleave + SDPA default). TFLOP/s = 4*B*Hq*Sq*Skv*D / t, halved when
causal. The first regionc call per shape runs the autotuner (not timed). Unless ``--no-sweep``,
every fixed config in ``SWEEP`` is timed too (``attention_triton(config=...)``, no autotuner),
and the JSON records which one wins per shape.

    python benchmarks/kernels/bench_attention.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# (B, Hq, Hkv, S, D, causal, label) - TARGETS.md shapes, plus the Llama GQA block shape
SHAPES = [
    (4, 32, 32, 4096, 128, True, "B4 H32 S4096 D128 causal"),
    (4, 32, 32, 4096, 128, False, "B4 H32 S4096 D128 full"),
    (16, 32, 32, 1024, 64, True, "B16 H32 S1024 D64 causal"),
    (1, 24, 24, 4680, 128, False, "B1 H24 S4680 D128 full"),
    (1, 32, 8, 2048, 64, True, "B1 H32/8 S2048 D64 causal GQA"),
]


def sdpa_backends():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name, be in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION"),
                     ("sdpa_efficient", "EFFICIENT_ATTENTION")):
        if hasattr(SDPBackend, be):
            out[name] = getattr(SDPBackend, be)
    return out, sdpa_kernel


SWEEP = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": st}
    for bm, bn, w, st in (
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
        (64, 64, 4, 4), (128, 64, 4, 4), (64, 128, 4, 3), (128, 32, 4, 4),
    )
]


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    import regionc.ops  # noqa: F401
    from regionc.ops.attention import attention_triton

    backends, sdpa_kernel = sdpa_backends()
    rows, sweeps = [], []
    with torch.inference_mode():
        for B, Hq, Hkv, S, D, causal, label in SHAPES:
            q = torch.randn(B, Hq, S, D, device="cuda", dtype=dtype)
            k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype)
            v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype)
            # SDPA backends get k/v already repeated (not timed): the fairest SDPA figure
            kr = k.repeat_interleave(Hq // Hkv, 1)
            vr = v.repeat_interleave(Hq // Hkv, 1)
            flops = 4 * B * Hq * S * S * D * (0.5 if causal else 1.0)
            cases = {"regionc": lambda: torch.ops.regionc.attention(q, k, v, causal, None)}
            for name, be in backends.items():
                def f(be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
                cases[name] = f
            if Hq != Hkv:
                cases["eager_repeat+sdpa"] = lambda: F.scaled_dot_product_attention(
                    q, k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1), is_causal=causal)
            for name, fn in cases.items():
                ms = C.try_bench(name, fn)
                rows.append({"shape": label, "provider": name, "ms": ms,
                             "TFLOPs": None if ms is None else flops / (ms * 1e-3) / 1e12})
            if sweep:
                sweeps += C.sweep(label, SWEEP, lambda cfg: (
                    lambda: attention_triton(q, k, v, causal, None, config=cfg)), flops=flops)
            del q, k, v, kr, vr
            torch.cuda.empty_cache()
    return C.report(out_dir, "attention", rows, "TFLOPs", "TFLOP/s", dtype=str(dtype),
                    flops="4*B*Hq*Sq*Skv*D, halved for causal", sweep=sweeps)


def main():
    C.bench_main("bench_attention", run, __doc__)


if __name__ == "__main__":
    main()
