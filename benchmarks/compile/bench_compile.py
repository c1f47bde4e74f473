"""Cold and warm time to first output vs depth: regionc against full graph and per-block compile.

Variants: ``torch.compile(backend="regionc")``, ``regionc.compile`` (each block traced once; a
warm start loads the saved Dynamo trace instead of tracing), full-graph ``torch.compile``,
per-block ``.compile()`` and ``nested_compile_region`` on the block class under full-graph
Inductor. Every measurement is a new process (a server restart); ``--repeats N`` measures each
variant N times, interleaved, and reports the median run (first calls vary by a second or more
between runs); one untimed process first caches Python's bytecode of torch, as a server's install
has it. Cold: empty cache dirs; warm: a second process on the same dirs. Time runs from
the ``torch.compile`` call (or the per-block ``.compile()`` calls) to the first output,
synchronized. The warm process then times the steady-state forward (CUDA events, median), so
runtime sits next to compile time. Model: the demo decoder (d=2048, 32/8 heads, FFN 8192),
bf16, prefill 1×2048.

``--eager-first`` runs the model eagerly once before the timer starts, as a harness that checks
the compiled output against eager does: the process's first cuBLAS/cuDNN/kernel-loading set-up
(the same for every variant, and paid by a server when it loads weights or warms up) then falls
outside the timed first call, and each result records ``eager_first_s`` and the compiled output's
``max_abs_diff_vs_eager``. Without it (the default, as in earlier runs) that set-up is timed too.

    python benchmarks/compile/bench_compile.py --out DIR [--layers 2 8 32] [--variants ...] [--eager-first]

Results are merged into DIR/compile_time.json (rewritten after every measurement), so runs
split over several invocations, or cut short, add up to one file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("regionc", "regionc_compile", "full_graph", "per_block", "nested_region")


def child(variant: str, layers: int, cache_dir: str, seq: int, time_runtime: bool, eager_first: bool = False,
          profile: str | None = None, regionc_options: dict | None = None) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    import torch

    import regionc
    from benchmarks.common import cuda_median_ms
    from regionc.models.llama import LlamaConfig, build_demo_model

    model = build_demo_model(LlamaConfig(n_layers=layers), dtype=torch.bfloat16, device="cuda")
    tokens = torch.randint(0, 32000, (1, seq), device="cuda")
    reference = None
    if eager_first:  # CUDA/cuBLAS/cuDNN set-up is paid here, outside the timed compile
        eager_start = time.perf_counter()
        with torch.no_grad():
            reference = model(tokens)
        torch.cuda.synchronize()
        eager_first_s = time.perf_counter() - eager_start
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    torch.cuda.synchronize()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    options = {"cache_dir": cache_dir, "cudagraphs": False, **(regionc_options or {})}
    if variant == "regionc":
        run = torch.compile(model, backend="regionc", options=options)
    elif variant == "regionc_compile":
        run = regionc.compile(model, options=options)
    elif variant == "full_graph":
        run = torch.compile(model)
    elif variant == "per_block":
        for layer in model.layers:
            layer.compile()
        run = model
    elif variant == "nested_region":
        block = type(model.layers[0])  # on the class, as documented (a per-instance mark is not reused)
        block.forward = torch.compiler.nested_compile_region(block.forward)
        run = torch.compile(model)
    with torch.no_grad():
        out = run(tokens)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        result = {"first_call_s": first}
        if reference is not None:
            result["eager_first_s"] = eager_first_s
            result["max_abs_diff_vs_eager"] = (out.float() - reference.float()).abs().max().item()
        if time_runtime:
            result["prefill_ms"] = cuda_median_ms(lambda: run(tokens), warmup=3, iters=20)
        if variant.startswith("regionc"):
            reports = regionc.reports()
            result["phases_s"] = {}
            for report in reports:
                for phase, seconds in report.phases.items():
                    result["phases_s"][phase] = result["phases_s"].get(phase, 0.0) + seconds
            result["cache_hits"] = sum(r.cache["hits"] for r in reports)
            result["compiled_pieces"] = sum(len(r.compiled) for r in reports)
            result["inlined_regions"] = sum(r.inlined_regions for r in reports)
            result["graphs"] = len(reports)
            result["trace_sources"] = sorted({r.trace_source for r in reports if r.trace_source})
        result["dynamo_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        result["torch_compile_metrics_s"] = _torch_compile_metrics()
    return result


def _torch_compile_metrics(top: int = 25) -> dict[str, float]:
    """torch's own timers of the first call (``dynamo_timed`` sections, nested, so they overlap):
    the largest ``top`` totals, to split regionc's "compile" phase into Inductor's stages."""
    from torch._dynamo.utils import compilation_time_metrics

    totals = {name: sum(times) for name, times in compilation_time_metrics.items()}
    return {name: round(totals[name], 4) for name in sorted(totals, key=totals.get, reverse=True)[:top]}


def measure(variant: str, layers: int, cache_dir: str, seq: int, time_runtime: bool, eager_first: bool = False,
            regionc_options: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--layers", str(layers), "--cache-dir", cache_dir,
           "--seq", str(seq)] + (["--time-runtime"] if time_runtime else []) + (["--eager-first"] if eager_first else [])
    if regionc_options:
        cmd += ["--regionc-options", json.dumps(regionc_options)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-1500:], "process_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def _prime_bytecode(variant: str, layers: int, seq: int) -> None:
    """Run one untimed child first, so every timed one finds Python's bytecode of torch cached.

    A server has its packages' ``.pyc`` files; a fresh machine compiles torch's sources on first
    import (~9 s on the H100 host), which would swamp the differences measured here. Where the
    package directory cannot hold ``__pycache__`` (read-only, or bytecode writing off), the
    bytecode goes under a private ``PYTHONPYCACHEPREFIX`` that the timed children share.
    """
    import importlib.util

    torch_dir = Path(importlib.util.find_spec("torch").origin).parent
    if sys.flags.dont_write_bytecode or not os.access(torch_dir / "__pycache__", os.W_OK):
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ.setdefault("PYTHONPYCACHEPREFIX", tempfile.mkdtemp(prefix="bench-pycache-"))
    with tempfile.TemporaryDirectory(prefix="bench-prime-") as cache_dir:
        primed = measure(variant, layers, cache_dir, seq, time_runtime=False)
    print(f"primed Python bytecode ({variant} L={layers}, {primed.get('process_s', 0):.1f}s; "
          f"PYTHONPYCACHEPREFIX={os.environ.get('PYTHONPYCACHEPREFIX', 'unset')})", flush=True)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median first-call time (the upper median for an even count); errors sort last."""
    ranked = sorted(runs, key=lambda r: r.get("first_call_s", float("inf")))
    return ranked[len(ranked) // 2]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, phase in zip(axes, ("cold", "warm")):
        for variant, by_depth in results.items():
            depths = sorted(int(d) for d, r in by_depth.items() if "first_call_s" in r.get(phase, {}))
            if depths:
                ax.plot(depths, [by_depth[str(d)][phase]["first_call_s"] for d in depths], marker="o", label=variant)
        ax.set_title(f"{phase} start: time to first output")
        ax.set_xlabel("layers")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--cache-dir")
    parser.add_argument("--time-runtime", action="store_true")
    parser.add_argument("--eager-first", action="store_true",
                        help="run the model eagerly once before the timed call (CUDA library set-up outside the "
                             "timing) and check the compiled output against it")
    parser.add_argument("--profile", help="child only: cProfile the timed first call into this file")
    parser.add_argument("--regionc-options", type=json.loads, default=None,
                        help="JSON merged into the regionc variants' options, e.g. "
                             "'{\"inductor_config\": {\"triton.autotune_pointwise\": true}}'")
    parser.add_argument("--tag", default="", help="results are stored under 'VARIANT[TAG]' (A/B runs of one variant)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="cold+warm pairs per variant and depth; the median run is reported, all samples kept")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers[0], args.cache_dir, args.seq, args.time_runtime,
                               args.eager_first, args.profile, args.regionc_options)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_compile: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import write_results

    _prime_bytecode(args.variants[0], min(args.layers), args.seq)
    path = Path(args.out) / "compile_time.json"
    results: dict = json.loads(path.read_text())["results"] if path.exists() else {}
    for layers in args.layers:
        samples: dict[str, dict[str, list[dict]]] = {v: {"cold": [], "warm": []} for v in args.variants}
        for _ in range(args.repeats):  # variants interleaved, so a slow stretch of the machine hits all
            for variant in args.variants:
                with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as cache_dir:
                    for phase in ("cold", "warm"):
                        samples[variant][phase].append(measure(
                            variant, layers, cache_dir, args.seq, time_runtime=phase == "warm",
                            eager_first=args.eager_first,
                            regionc_options=args.regionc_options if variant.startswith("regionc") else None))
        for variant in args.variants:
            cold, warm = (_median_run(samples[variant][phase]) for phase in ("cold", "warm"))
            label = f"{variant}[{args.tag}]" if args.tag else variant
            results.setdefault(label, {})[str(layers)] = {
                "cold": cold, "warm": warm, "repeats": args.repeats, "eager_first": args.eager_first,
                "regionc_options": args.regionc_options if variant.startswith("regionc") else None,
                "cold_samples_s": [r.get("first_call_s") for r in samples[variant]["cold"]],
                "warm_samples_s": [r.get("first_call_s") for r in samples[variant]["warm"]],
                "prefill_ms_samples": [r.get("prefill_ms") for r in samples[variant]["warm"]]}
            write_results(args.out, "compile_time", {
                "model": "demo decoder d=2048 heads 32/8 ffn 8192 bf16", "prefill_tokens": args.seq,
                "results": results})
            print(f"{label:>14} L={layers:<3} cold {cold.get('first_call_s', float('nan')):7.2f}s  "
                  f"warm {warm.get('first_call_s', float('nan')):7.2f}s  "
                  f"prefill {warm.get('prefill_ms', float('nan')):7.2f} ms  "
                  f"{cold.get('error', '')[-200:]}{cold.get('skipped', '')}", flush=True)
    plot(results, Path(args.out) / "compile_time.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
