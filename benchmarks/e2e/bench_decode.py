"""Decode-like latency of the 32-layer demo decoder: where CUDA graphs decide the result.

Batch 1, 8 and 32 with one token each, without a KV cache (the TARGETS.md "decode 8×1"
shape) and, at batch 8, one decode step on the static per-layer KV cache. Compared in one
process: eager, full-graph ``torch.compile``, full graph ``mode="reduce-overhead"``,
per-block ``.compile()``, regionc without graphs, regionc with one graph over all pieces
(``cudagraph_mode="full"``, the default) and with a graph per piece, and ``regionc.compile``
with graphs. Regionc rows carry the graphs captured, capture seconds and
pool bytes. The result file is rewritten after every row, so a run cut short keeps its rows.

    python benchmarks/e2e/bench_decode.py --out DIR [--layers 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("eager", "full_graph", "reduce_overhead", "per_block", "regionc", "regionc_graphs",
            "regionc_piecewise_graphs", "regionc_compile_graphs")


def make_runner(variant: str, model, cache_dir: str):
    import torch

    if variant == "eager":
        return model
    if variant == "full_graph":
        return torch.compile(model, dynamic=False)
    if variant == "reduce_overhead":
        return torch.compile(model, mode="reduce-overhead", dynamic=False)
    if variant == "per_block":
        for layer in model.layers:
            layer.compile(dynamic=False)
        return model
    options = {"cache_dir": cache_dir, "cudagraphs": variant.endswith("_graphs"),
               "cudagraph_mode": "piecewise" if "piecewise" in variant else "full"}
    if variant == "regionc_compile_graphs":
        import regionc

        return regionc.compile(model, dynamic=False, options=options)
    return torch.compile(model, backend="regionc", dynamic=False, options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_decode: no CUDA device; nothing measured")
        return 0
    import regionc
    from benchmarks.common import cuda_median_ms, write_results
    from regionc.models.llama import LlamaConfig, build_demo_model

    cfg = LlamaConfig(n_layers=args.layers, max_seq=256)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as cache_dir, torch.no_grad():
        for variant in args.variants:
            cases = [("plain", b) for b in args.batches] + [("kv_cache", 8)]
            for case, batch in cases:
                torch._dynamo.reset()
                model = build_demo_model(cfg, dtype=torch.bfloat16, device="cuda")
                if case == "kv_cache":
                    model.setup_kv_cache(batch, torch.bfloat16)
                tokens = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
                pos = torch.tensor([17], device="cuda")
                # eager reference first: per-block variants compile the model's blocks in place
                reference = (model(tokens, pos) if case == "kv_cache" else model(tokens)).float()
                run = make_runner(variant, model, cache_dir)
                call = (lambda: run(tokens, pos)) if case == "kv_cache" else (lambda: run(tokens))
                ms = cuda_median_ms(call, warmup=5, iters=50)
                out = call().float()
                error = ((out - reference).norm() / reference.norm()).item()
                row = {"variant": variant, "case": case, "batch": batch, "ms": ms, "rel_error": error}
                if variant.startswith("regionc"):
                    row["cudagraphs"] = {k: v for k, v in regionc.last_report().cudagraphs.items()
                                         if k in ("mode", "graphs", "capture_s", "pool_bytes", "padding",
                                                  "fallbacks")}
                rows.append(row)
                print(f"{variant:>16} {case:>8} b={batch:<3} {ms:8.3f} ms  err {error:.1e}", flush=True)
                del run, model
                path = write_results(args.out, "decode_latency", {
                    "model": f"demo decoder {args.layers} layers d=2048 heads 32/8 ffn 8192 bf16", "rows": rows})
    _plot(rows, Path(args.out) / "decode_latency.png")
    print(f"wrote {path}")
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["case"], r["batch"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [next((r["ms"] for r in rows if r["variant"] == variant and (r["case"], r["batch"]) == c), 0)
                  for c in cases]
        ax.bar([j + i * width for j in range(len(cases))], values, width, label=variant)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], [f"{c} b={b}" for c, b in cases])
    ax.set_ylabel("ms per forward (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
