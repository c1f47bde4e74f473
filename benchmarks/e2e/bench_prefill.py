"""Prefill latency (1×2048 tokens, bf16) of a 32-layer Llama-style decoder, regionc vs the references.

Models: regionc's demo decoder (``LlamaConfig()`` defaults: d=2048, 32 heads / 8 KV heads, FFN 8192)
and Hugging Face ``LlamaModel`` of the same size (random weights, SDPA attention, no cache).
Variants, measured in the same run: eager, full-graph ``torch.compile``, per-block
``layer.compile()``, regionc with every pass off, regionc with passes (``kernel_choice`` auto
and always), regionc with only the attention swap (``regionc_attention``). Runtime: CUDA events, median of ``--iters`` after warm-up; the first call's time
(compile) is recorded too. Writes ``prefill.json`` and ``prefill.png`` under ``--out``, with the
device name and versions. About 4 minutes on one H100; exits cleanly without CUDA.

    python benchmarks/e2e/bench_prefill.py --out benchmarks/results/prefill [--layers 32] [--models demo,hf]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

SEQ = 2048
VARIANTS = ("eager", "full_graph", "regionc_no_passes", "regionc_auto", "regionc_attention", "regionc_always",
            "per_block")
PASSES = ("rms_norm", "fused_add_rms_norm", "rope", "attention")


def build(kind: str, layers: int):
    if kind == "demo":
        from regionc.models.llama import LlamaConfig, build_demo_model

        return build_demo_model(LlamaConfig(n_layers=layers), dtype=torch.bfloat16, device="cuda")
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                   max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.to(torch.bfloat16).eval()


def call(kind: str, fn, tokens):
    return fn(tokens) if kind == "demo" else fn(input_ids=tokens, use_cache=False)


def timed(kind, fn, tokens, iters: int, warmup: int):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    call(kind, fn, tokens)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        call(kind, fn, tokens)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(kind, fn, tokens)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), first_s


def run_model(kind: str, layers: int, iters: int, warmup: int, variants, cache_root: str) -> dict:
    import regionc

    model = build(kind, layers)
    tokens = torch.randint(0, 32000, (1, SEQ), device="cuda")
    out: dict = {}
    with torch.no_grad():
        for variant in variants:
            torch._dynamo.reset()
            extra = {}
            if variant == "eager":
                fn = model
            elif variant == "full_graph":
                fn = torch.compile(model)
            elif variant == "per_block":  # last: it changes the layers in place
                for layer in model.layers:
                    layer.compile()
                fn = model
            else:
                options = {"cache_dir": os.path.join(cache_root, variant), "cudagraphs": False}
                if variant == "regionc_no_passes":
                    options["passes"] = {n: False for n in PASSES}
                elif variant == "regionc_attention":  # the attention swap alone, table ignored
                    options["passes"] = {n: n == "attention" for n in PASSES}
                    options["kernel_choice"] = "always"
                else:
                    options["kernel_choice"] = variant.split("_")[1]
                fn = torch.compile(model, backend="regionc", options=options)
            try:
                ms, first_s = timed(kind, fn, tokens, iters, warmup)
            except Exception as exc:  # one variant failing must not lose the others
                out[variant] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                print(f"{kind:5s} {variant:18s} FAILED {out[variant]['error']}", flush=True)
                continue
            if variant.startswith("regionc"):
                report = regionc.last_report()
                if report is not None:
                    extra = {"pass_matches": dict(report.pass_matches), "pass_skips": list(report.pass_skips)[:20]}
            out[variant] = {"ms": round(ms, 3), "first_call_s": round(first_s, 2), **extra}
            print(f"{kind:5s} {variant:18s} {ms:8.2f} ms   first call {first_s:6.1f} s   {extra.get('pass_matches', '')}",
                  flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def plot(results: dict, meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(VARIANTS))
    for i, variant in enumerate(VARIANTS):
        xs, ys = [], []
        for j, model in enumerate(models):
            ms = results[model].get(variant, {}).get("ms")
            if ms is not None:
                xs.append(j + i * width)
                ys.append(ms)
        bars = ax.bar(xs, ys, width, label=variant)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(VARIANTS) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("ms per forward (median)")
    ax.set_title(f"prefill 1x{SEQ} bf16, {meta['layers']} layers — {meta['device']}\n"
                 f"torch {meta['torch']}, triton {meta['triton']}", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", default="demo,hf")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_prefill: no CUDA device; nothing to measure")
        return 0
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    meta = {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "transformers": transformers_version, "layers": args.layers, "seq": SEQ, "dtype": "bfloat16",
            "iters": args.iters, "date": time.strftime("%Y-%m-%d %H:%M")}
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    variants = [v for v in VARIANTS if v in variants]  # per_block last
    os.makedirs(args.out, exist_ok=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="regionc-bench-") as cache_root:
        # every compiler cache of this run lives in the temp dir: all compiles are cold
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_root, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_root, "triton")
        for kind in [m for m in args.models.split(",") if m]:
            if kind not in ("demo", "hf"):
                ap.error(f"unknown model {kind!r} (demo, hf)")
            results[kind] = run_model(kind, args.layers, args.iters, args.warmup, variants, cache_root)
    for kind, res in results.items():
        full = res.get("full_graph", {}).get("ms")
        if full:
            for variant, entry in res.items():
                if "ms" in entry:
                    entry["vs_full_graph"] = round(entry["ms"] / full, 3)
    with open(os.path.join(args.out, "prefill.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    try:
        plot(results, meta, os.path.join(args.out, "prefill.png"))
    except ImportError:
        print("bench_prefill: matplotlib missing; no PNG")
    print("wrote", os.path.join(args.out, "prefill.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
