"""Decode-like latency of the 32-layer demo decoder: where CUDA graphs decide the result.

Batch 1, 8 and 32 with one token each, without a KV cache (the TARGETS.md "decode 8×1"
shape) and, at batch 8, one decode step on the static per-layer KV cache. Compared: eager,
full-graph ``torch.compile``, full graph ``mode="reduce-overhead"``, per-block ``.compile()``,
regionc without graphs, regionc with one graph over all pieces (``cudagraph_mode="full"``, the
default) and with a graph per piece, and ``regionc.compile`` with graphs; ``*_swap``: the same with the decode ops (decode attention, skinny linears) swapped in
whatever the decision table says (its A/B).

Latency drifts within a process by as much as the differences measured here (``reduce-overhead``
compiled first or second in one process: 2.82 vs 3.24 ms, ``benchmarks/results/decode_capture_ab/``). So every
variant of a case runs on the same weights (one model; the variants that change blocks in place
get a copy), all are compiled and warmed up first, and then they are timed in ``--rounds``
interleaved rounds, each round in a rotated order; a row reports the median of its rounds and
keeps every round's median. Regionc rows carry the graphs captured, capture seconds and pool bytes.

    python benchmarks/e2e/bench_decode.py --out DIR [--layers 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("eager", "full_graph", "reduce_overhead", "per_block", "regionc", "regionc_graphs",
            "regionc_piecewise_graphs", "regionc_compile_graphs", "regionc_graphs_swap", "regionc_compile_graphs_swap")

#: Variants that compile the model's blocks in place: they get their own copy of the model.
CHANGE_BLOCKS = ("per_block", "regionc_compile_graphs", "regionc_compile_graphs_swap")


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
    options = {"cache_dir": cache_dir, "cudagraphs": "_graphs" in variant,
               "cudagraph_mode": "piecewise" if "piecewise" in variant else "full"}
    if variant.endswith("_swap"):
        from benchmarks.common import decode_ops_swapped

        options.update(decode_ops_swapped())
    if variant.startswith("regionc_compile"):
        import regionc

        return regionc.compile(model, dynamic=False, options=options)
    return torch.compile(model, backend="regionc", dynamic=False, options=options)


def measure_case(case: str, batch: int, variants, cfg, cache_dir: str, rounds: int) -> list[dict]:
    """Rows for one (case, batch): every variant on the same weights, timed in interleaved rounds."""
    import torch

    import regionc
    from benchmarks.common import cuda_median_ms
    from regionc.models.llama import build_demo_model

    torch._dynamo.reset()  # one model per case: keep Dynamo's per-code cache entries under its limit
    model = build_demo_model(cfg, dtype=torch.bfloat16, device="cuda")
    if case == "kv_cache":
        model.setup_kv_cache(batch, torch.bfloat16)
    tokens = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
    pos = torch.tensor([17], device="cuda")
    args = (tokens, pos) if case == "kv_cache" else (tokens,)
    reference = model(*args).float()
    copies = {v: copy.deepcopy(model) for v in variants if v in CHANGE_BLOCKS}  # before anything compiles

    calls, rows = {}, {}
    for variant in variants:
        run = make_runner(variant, copies.get(variant, model), cache_dir)
        calls[variant] = lambda run=run: run(*args)
        out = calls[variant]().float()  # compiles (and, with graphs, warms up); the next calls capture
        calls[variant]()
        rows[variant] = {"variant": variant, "case": case, "batch": batch,
                         "rel_error": ((out - reference).norm() / reference.norm()).item(), "round_ms": []}
        if variant.startswith("regionc"):
            stats = next((r.cudagraphs for r in reversed(regionc.reports()) if r.cudagraphs), {})
            rows[variant]["cudagraphs"] = {k: v for k, v in stats.items()
                                           if k in ("mode", "graphs", "capture_s", "pool_bytes", "padding",
                                                    "fallbacks")}
    for r in range(rounds):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            rows[variant]["round_ms"].append(cuda_median_ms(calls[variant], warmup=3, iters=30))
    for row in rows.values():
        row["ms"] = statistics.median(row["round_ms"])
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--kv-batches", type=int, nargs="+", default=[8], help="batches of the KV-cache decode case")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per case")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_decode: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import write_results
    from regionc.models.llama import LlamaConfig

    cfg = LlamaConfig(n_layers=args.layers, max_seq=256)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as cache_dir, torch.no_grad():
        for case, batch in [("kv_cache", b) for b in args.kv_batches] + [("plain", b) for b in args.batches]:
            for row in measure_case(case, batch, args.variants, cfg, cache_dir, args.rounds):
                rows.append(row)
                spread = f"{min(row['round_ms']):.3f}-{max(row['round_ms']):.3f}"
                print(f"{row['variant']:>24} {case:>8} b={batch:<3} {row['ms']:8.3f} ms  (rounds {spread})"
                      f"  err {row['rel_error']:.1e}", flush=True)
            path = write_results(args.out, "decode_latency", {
                "model": f"demo decoder {args.layers} layers d=2048 heads 32/8 ffn 8192 bf16",
                "method": f"one model per case, variants interleaved over {args.rounds} rounds; ms = median round",
                "rows": rows})
            torch.cuda.empty_cache()
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
