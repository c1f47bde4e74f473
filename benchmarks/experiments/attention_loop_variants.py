"""Experiment: do Triton's loop options speed up regionc's attention kernel on this GPU?

The key-block loop of ``regionc/ops/attention.py`` is rewritten three ways (a plain ``range``,
``tl.range(warp_specialize=True)``, ``tl.range(flatten=True)``) into copies of the module under
/tmp, and each copy's pointer and TMA kernels are timed with fixed configs against cuDNN SDPA on
the TARGETS shapes (``triton.testing.do_bench``). H100 result (triton 3.6.0, torch 2.11):
warp specialisation does not compile for the TMA kernel (NVGPUWarpSpecialization pass failure)
and changes nothing measurable for the pointer kernel; flattening is slower.

    RES=DIR ATTN_BUDGET=130 python benchmarks/experiments/attention_loop_variants.py
"""
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
src = (Path(__file__).resolve().parents[2] / "regionc/ops/attention.py").read_text()
src = src[: src.index("# op registration")]
variants = {}
for name, loop in (("base", "range(lo, hi, BLOCK_N)"),
                   ("ws", "tl.range(lo, hi, BLOCK_N, warp_specialize=True)"),
                   ("flat", "tl.range(lo, hi, BLOCK_N, flatten=True)")):
    text = src.replace("for start_n in range(lo, hi, BLOCK_N):", f"for start_n in {loop}:")
    path = Path(f"/tmp/attn_{name}.py"); path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"attn_{name}", path)
    mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
    variants[name] = mod
from torch.nn.attention import SDPBackend, sdpa_kernel

out = {"env": {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}, "rows": []}
shapes = [(4, 32, 4096, 128, True), (4, 32, 4096, 128, False), (16, 32, 1024, 64, True), (1, 24, 4680, 128, False)]
configs = {128: [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 4, 2)],
           64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 4)]}
deadline = time.time() + float(os.environ.get("ATTN_BUDGET", 150))
for B, H, S, D, causal in shapes:
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * B * H * S * S * D / (2 if causal else 1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        cudnn = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), warmup=25, rep=100)
    row = {"shape": [B, H, S, D, causal], "cudnn_tflops": flops / cudnn / 1e9, "results": []}
    print(row["shape"], "cudnn", round(row["cudnn_tflops"]), flush=True)
    for name, mod in variants.items():
        for use in ("ptr", "tma"):
            for bm, bn, w, s in configs[D]:
                if time.time() > deadline:
                    break
                cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}
                try:
                    o = mod.attention_triton(q, k, v, causal, None, config=cfg, variant=use)
                    err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = do_bench(lambda: mod.attention_triton(q, k, v, causal, None, config=cfg, variant=use), warmup=25, rep=100)
                    r = {"variant": name, "use": use, "cfg": [bm, bn, w, s], "tflops": flops / ms / 1e9,
                         "vs_cudnn": cudnn / ms, "err": err}
                except Exception as exc:
                    r = {"variant": name, "use": use, "cfg": [bm, bn, w, s], "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                row["results"].append(r)
                print("  ", r, flush=True)
    best = {}
    for r in row["results"]:
        if "tflops" in r and r["err"] < 2e-2:
            key = r["variant"]
            if r["tflops"] > best.get(key, {}).get("tflops", 0):
                best[key] = r
    row["best"] = best
    print("  BEST", {k: (round(v["vs_cudnn"], 3), v["use"], v["cfg"]) for k, v in best.items()}, flush=True)
    out["rows"].append(row)
    Path(os.environ.get("RES", "."), "attn_ws.json").write_text(json.dumps(out, indent=1))
