"""Process start to first output, weights read from a safetensors file: per-block compile against
``regionc.compile``, with and without ``regionc.warmup`` overlapping the weight read.

A server restart runs: import, build the model without weights, read the checkpoint into it, compile,
answer. Each measurement here is that, in a new process, timed from the parent's spawn to the first
output (synchronized), on cold (empty) and warm (the same, second process) compile caches:

* ``per_block``: ``block.compile()`` on every repeated block (diffusers' ``compile_repeated_blocks``,
  accelerate's ``compile_regions``), weights read, then the first call compiles;
* ``regionc_compile``: ``regionc.compile(model)``, weights read, then the first call compiles;
* ``regionc_warmup``: ``regionc.compile(model)``, ``regionc.warmup(model, **example_inputs)``, weights
  read while the warm-up compiles (or loads from the cache), then the first call;
* ``regionc_bg``: ``regionc.compile(model)`` with ``background_compile``, weights read, then the first
  call, which traces and runs eagerly while the pieces compile (or load) in the background;
  ``compiled_s`` is when the compiled code was ready, from the same spawn.

The model is built on the meta device and given uninitialized CUDA memory (``models.skeleton``); the
checkpoint holds every parameter and buffer of a random-weight model of the real config, written once
by the parent (so it is in the page cache, as on a server restarted on the same host). The output is
checked against that model's eager output. Each row splits the time: imports, skeleton, weight read,
what remained of the compile after the read, and the first call.

    python benchmarks/compile/bench_first_output.py --out DIR [--models wan hf_llama] [--layers 0]
    python benchmarks/compile/bench_first_output.py --plot DIR/first_output.json   # redraw its PNG
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

VARIANTS = ("per_block", "regionc_compile", "regionc_warmup", "regionc_bg")


def write_checkpoint(model_name: str, layers: int | None, directory: Path) -> float:
    """weights.safetensors (every parameter and buffer), inputs.safetensors, reference.safetensors;
    returns the checkpoint's size in GB."""
    import torch
    from safetensors.torch import save_file

    from benchmarks.compile.models import build

    work = build(model_name, layers)
    state = {name: t.detach().contiguous() for name, t in [*work.model.named_parameters(),
                                                            *work.model.named_buffers()]}
    save_file(state, directory / "weights.safetensors")
    tensors = {k: v for k, v in work.inputs.items() if isinstance(v, torch.Tensor)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "inputs.safetensors")
    with torch.no_grad():
        reference = work.output(work.model(**work.inputs))
    save_file({"out": reference.contiguous()}, directory / "reference.safetensors")
    size = sum(t.numel() * t.element_size() for t in state.values()) / 1e9
    del work, state, reference
    torch.cuda.empty_cache()
    return size


def read_weights(model, path: Path) -> None:
    """Copy every tensor of the checkpoint into the model's parameter or buffer of that name, in place."""
    import torch
    from safetensors import safe_open

    targets = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with safe_open(str(path), framework="pt", device="cuda") as f, torch.no_grad():
        for name in f.keys():
            targets[name].copy_(f.get_tensor(name))


def child(variant: str, model_name: str, layers: int | None, directory: Path, cache_dir: str,
          spawned_at: float) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    import torch
    from safetensors.torch import load_file

    import regionc
    from benchmarks.compile.models import skeleton

    marks = {"imports": time.time()}
    work = skeleton(model_name, layers)
    model = work.model
    inputs = {**work.inputs, **load_file(str(directory / "inputs.safetensors"), device="cuda")}
    torch.cuda.synchronize()
    marks["skeleton"] = time.time()
    job = None
    if variant == "per_block":
        for block in work.blocks():
            block.compile()
    else:
        regionc.compile(model, options={"cache_dir": cache_dir, "cudagraphs": False,
                                        "background_compile": variant == "regionc_bg"})
        if variant == "regionc_warmup":
            with torch.no_grad():
                job = regionc.warmup(model, **inputs)
    read_weights(model, directory / "weights.safetensors")
    torch.cuda.synchronize()
    marks["weights"] = time.time()
    if job is not None:
        job.result()
    marks["warmup_wait"] = time.time()
    with torch.no_grad():
        out = work.output(model(**inputs))
    torch.cuda.synchronize()
    marks["first_output"] = time.time()
    reference = load_file(str(directory / "reference.safetensors"), device="cuda")["out"]
    phases, last = {}, spawned_at
    for name, at in marks.items():
        phases[name] = round(at - last, 3)
        last = at
    ready = {}
    if variant == "regionc_bg":
        regionc.wait_compiled()
        ready["compiled_s"] = time.time() - spawned_at
        with torch.no_grad():
            out = work.output(model(**inputs))  # the compiled code's output, checked below
    return {"first_output_s": marks["first_output"] - spawned_at, "phases_s": phases, **ready,
            "max_abs_diff_vs_eager": (out.float() - reference.float()).abs().max().item(),
            "reference_abs_max": reference.float().abs().max().item(),
            "reports": [r.summary() for r in regionc.reports()[:6]]}


def measure(variant: str, model: str, layers: int | None, directory: Path, cache_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--models", model, "--layers", str(layers or 0),
           "--checkpoint", str(directory), "--cache-dir", cache_dir]
    proc = subprocess.run([*cmd, "--spawned-at", repr(time.time())], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    """A panel per model: per variant, cold and warm bars stacked by phase after the skeleton (weight
    read, what remained of the warm-up, first call), the part that differs between variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    colors = {"weights": "tab:gray", "warmup_wait": "tab:orange", "first_output": "tab:blue"}
    for ax, model in zip(axes[0], models):
        labels = []
        for x, (variant, phase) in enumerate((v, p) for v in VARIANTS for p in ("cold", "warm")):
            phases = results[model].get(variant, {}).get(phase, {}).get("phases_s", {})
            bottom = 0.0
            for part, color in colors.items():
                ax.bar(x, phases.get(part, 0.0), bottom=bottom, color=color, label=part if x == 0 else None)
                bottom += phases.get(part, 0.0)
            labels.append(f"{variant}\n{phase}")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{model} (checkpoint {results[model].get('checkpoint_GB', '?')} GB)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("seconds after the skeleton is built")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    from benchmarks.compile.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", nargs="+", default=["wan", "hf_llama"], choices=MODELS)
    parser.add_argument("--layers", type=int, default=0, help="each repeated stack's length; 0: the model's own")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--cache-dir")
    parser.add_argument("--spawned-at", type=float)
    parser.add_argument("--plot", type=Path, help="only draw FILE.json's plot next to it (FILE.png)")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text())["results"], args.plot.with_suffix(".png"))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.models[0], args.layers or None, args.checkpoint, args.cache_dir,
                               args.spawned_at)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_first_output: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import write_results
    from benchmarks.compile.bench_compile import _prime_bytecode

    _prime_bytecode("regionc_compile", args.models[0])
    results: dict = {}
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as checkpoint:
            directory = Path(checkpoint)
            start = time.perf_counter()
            size = write_checkpoint(model, args.layers or None, directory)
            results[model] = {"checkpoint_GB": round(size, 2), "write_s": round(time.perf_counter() - start, 1)}
            for variant in args.variants:
                with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as cache_dir:
                    for phase in ("cold", "warm"):
                        row = measure(variant, model, args.layers, directory, cache_dir)
                        results[model].setdefault(variant, {})[phase] = row
                        write_results(args.out, "first_output", {"layers": args.layers, "results": results})
                        print(f"{model:>9} {variant:>16} {phase} {row.get('first_output_s', float('nan')):7.2f}s "
                              f"{row.get('phases_s', '')} diff {row.get('max_abs_diff_vs_eager', '')} "
                              f"{row.get('error', '')[-400:]}", flush=True)
    path = write_results(args.out, "first_output", {"layers": args.layers, "results": results})
    plot(results, path.with_suffix(".png"))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
