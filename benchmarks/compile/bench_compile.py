"""Cold and warm time to first output: regionc against per-block compile and full graph, on real models.

Variants: ``torch.compile(backend="regionc")``, ``regionc.compile`` (each block traced once; a
warm start loads the saved Dynamo trace instead of tracing), both with ``background_compile``
(``*_bg``: the first output comes from the eager graph while the pieces compile; ``compiled_s``
says when the compiled code was ready, from the same start), full-graph ``torch.compile``,
per-block ``.compile()`` and ``nested_compile_region`` on the block class under full-graph
Inductor. Every measurement is a new process (a server restart); ``--repeats N`` measures each
variant N times, interleaved, and reports the median run (first calls vary by a second or more
between runs); one untimed process first caches Python's bytecode of torch, as a server's install
has it. Cold: empty cache dirs; warm: a second process on the same dirs. Time runs from
the ``torch.compile`` call (or the per-block ``.compile()`` calls) to the first output,
synchronized. The warm process then times the steady-state forward (CUDA events, median), so
runtime sits next to compile time. Models (``--models``; see ``models.py``): the demo decoder,
HF Llama, FLUX.1-dev's and Wan2.2-TI2V-5B's transformers, real configs and input sizes, bf16.

``--eager-first`` runs the model eagerly once before the timer starts, as a harness that checks
the compiled output against eager does: the process's first cuBLAS/cuDNN/kernel-loading set-up
(the same for every variant, and paid by a server when it loads weights or warms up) then falls
outside the timed first call, and each result records ``eager_first_s`` and the compiled output's
``max_abs_diff_vs_eager``. Without it that set-up is timed too.

    python benchmarks/compile/bench_compile.py --out DIR [--models wan flux hf_llama] [--layers 0 8]
        [--variants ...] [--eager-first]

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

VARIANTS = ("regionc", "regionc_compile", "regionc_bg", "regionc_compile_bg", "full_graph", "per_block", "nested_region")


def child(variant: str, model_name: str, layers: int | None, cache_dir: str, time_runtime: bool,
          eager_first: bool = False, profile: str | None = None, regionc_options: dict | None = None) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    import torch

    import regionc
    from benchmarks.common import cuda_median_ms
    from benchmarks.compile.models import build

    work = build(model_name, layers)
    model, inputs = work.model, work.inputs
    reference = None
    if eager_first:  # CUDA/cuBLAS/cuDNN set-up is paid here, outside the timed compile
        eager_start = time.perf_counter()
        with torch.no_grad():
            reference = work.output(model(**inputs))
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
    if variant.endswith("_bg"):
        options["background_compile"] = True
    if variant in ("regionc", "regionc_bg"):
        run = torch.compile(model, backend="regionc", options=options)
    elif variant in ("regionc_compile", "regionc_compile_bg"):
        run = regionc.compile(model, options=options)
    elif variant == "full_graph":
        run = torch.compile(model)
    elif variant == "per_block":  # diffusers' compile_repeated_blocks / accelerate's compile_regions
        for block in work.blocks():
            block.compile()
        run = model
    elif variant == "nested_region":
        for block_class in {type(block) for block in work.blocks()}:  # on the class, as documented
            block_class.forward = torch.compiler.nested_compile_region(block_class.forward)
        run = torch.compile(model)
    with torch.no_grad():
        out = work.output(run(**inputs))
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        result = {"first_call_s": first}
        if reference is not None:
            result["eager_first_s"] = eager_first_s
            result["max_abs_diff_vs_eager"] = (out.float() - reference.float()).abs().max().item()
        if variant.endswith("_bg"):  # the first output ran eagerly: when did the compiled code take over?
            regionc.wait_compiled()
            result["compiled_s"] = time.perf_counter() - start
            out = work.output(run(**inputs))  # the switch
            if reference is not None:
                result["max_abs_diff_compiled_vs_eager"] = (out.float() - reference.float()).abs().max().item()
        if time_runtime:
            result["step_ms"] = cuda_median_ms(lambda: run(**inputs), warmup=3, iters=20)
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
            result["reports"] = [r.summary() for r in reports[:12]]
        result["dynamo_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        result["torch_compile_metrics_s"] = _torch_compile_metrics()
    return result


def _torch_compile_metrics(top: int = 25) -> dict[str, float]:
    """torch's own timers of the first call (``dynamo_timed`` sections, nested, so they overlap):
    the largest ``top`` totals, to split regionc's "compile" phase into Inductor's stages."""
    from torch._dynamo.utils import compilation_time_metrics

    totals = {name: sum(times) for name, times in compilation_time_metrics.items()}
    return {name: round(totals[name], 4) for name in sorted(totals, key=totals.get, reverse=True)[:top]}


def measure(variant: str, model: str, layers: int | None, cache_dir: str, time_runtime: bool,
            eager_first: bool = False, regionc_options: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--models", model, "--cache-dir", cache_dir]
    cmd += (["--layers", str(layers)] if layers else []) + (["--time-runtime"] if time_runtime else [])
    cmd += ["--eager-first"] if eager_first else []
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


def _prime_bytecode(variant: str, model: str) -> None:
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
        primed = measure(variant, model, 2, cache_dir, time_runtime=False)
    print(f"primed Python bytecode ({variant} {model} L=2, {primed.get('process_s', 0):.1f}s; "
          f"PYTHONPYCACHEPREFIX={os.environ.get('PYTHONPYCACHEPREFIX', 'unset')})", flush=True)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median first-call time (the upper median for an even count); errors sort last."""
    ranked = sorted(runs, key=lambda r: r.get("first_call_s", float("inf")))
    return ranked[len(ranked) // 2]


def plot(results: dict, path: Path) -> None:
    """One panel per model and depth: cold and warm time to first output of each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, depth, by_variant) for model, depths in results.items()
              for depth, by_variant in depths.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (model, depth, by_variant) in zip(axes[0], panels):
        variants = list(by_variant)
        for offset, phase in ((-0.2, "cold"), (0.2, "warm")):
            values = [by_variant[v][phase].get("first_call_s", 0.0) for v in variants]
            ax.bar([i + offset for i in range(len(variants))], values, width=0.4, label=phase)
            ready = [(i + offset, by_variant[v][phase]["compiled_s"]) for i, v in enumerate(variants)
                     if "compiled_s" in by_variant[v][phase]]
            if ready:  # background compile: when the compiled code took over from the eager forward
                ax.scatter(*zip(*ready), marker="_", s=300, color="black", label=f"{phase}: compiled code ready")
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        ax.set_title(f"{model} ({depth})")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("seconds to first output")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    from benchmarks.compile.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", nargs="+", default=["demo"], choices=MODELS)
    parser.add_argument("--layers", type=int, nargs="+", default=[0],
                        help="depths to measure (each repeated stack's length); 0: the model's own")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
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
        print(json.dumps(child(args.child, args.models[0], args.layers[0] or None, args.cache_dir,
                               args.time_runtime, args.eager_first, args.profile, args.regionc_options)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_compile: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import write_results

    _prime_bytecode(args.variants[0], args.models[0])
    path = Path(args.out) / "compile_time.json"
    results: dict = json.loads(path.read_text())["results"] if path.exists() else {}
    for model in args.models:
        for layers in args.layers:
            depth = f"L={layers}" if layers else "real depth"
            samples: dict[str, dict[str, list[dict]]] = {v: {"cold": [], "warm": []} for v in args.variants}
            for _ in range(args.repeats):  # variants interleaved, so a slow stretch of the machine hits all
                for variant in args.variants:
                    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as cache_dir:
                        for phase in ("cold", "warm"):
                            samples[variant][phase].append(measure(
                                variant, model, layers, cache_dir, time_runtime=phase == "warm",
                                eager_first=args.eager_first,
                                regionc_options=args.regionc_options if variant.startswith("regionc") else None))
            for variant in args.variants:
                cold, warm = (_median_run(samples[variant][phase]) for phase in ("cold", "warm"))
                label = f"{variant}[{args.tag}]" if args.tag else variant
                results.setdefault(model, {}).setdefault(depth, {})[label] = {
                    "cold": cold, "warm": warm, "repeats": args.repeats, "eager_first": args.eager_first,
                    "regionc_options": args.regionc_options if variant.startswith("regionc") else None,
                    "cold_samples_s": [r.get("first_call_s") for r in samples[variant]["cold"]],
                    "warm_samples_s": [r.get("first_call_s") for r in samples[variant]["warm"]],
                    "step_ms_samples": [r.get("step_ms") for r in samples[variant]["warm"]]}
                write_results(args.out, "compile_time", {"results": results})
                ready = (f"compiled at {cold.get('compiled_s', float('nan')):.2f}s / "
                         f"{warm.get('compiled_s', float('nan')):.2f}s  " if variant.endswith("_bg") else "")
                print(f"{model:>9} {depth:<10} {label:>16} cold {cold.get('first_call_s', float('nan')):7.2f}s  "
                      f"warm {warm.get('first_call_s', float('nan')):7.2f}s  "
                      f"step {warm.get('step_ms', float('nan')):7.2f} ms  {ready}"
                      f"{cold.get('error', '')[-300:]}{warm.get('error', '')[-300:]}", flush=True)
    plot(results, Path(args.out) / "compile_time.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
