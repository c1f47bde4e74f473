"""Hugging Face ``LlamaModel`` (32 × 2048, 32 / 8 heads, bf16) as its docs run it: StaticCache decode and prefill.

``--shape`` picks other widths (``SHAPES``): ``llama3_8b`` (4096 wide, 32 / 8 heads of 128, FFN 14336) and
``qwen25_7b`` (Qwen2 with q/k/v biases, 3584 wide, 28 / 4 heads of 128: seven query heads per cache head,
FFN 18944), as many layers as ``--layers`` says.

Decode: one token per step on a ``StaticCache``, at batch 1 (``max_cache_len`` 256, position 128) and batch 8
(``max_cache_len`` 4096, positions 512 and 3900) and batch 32 (4096, position 512). Variants in the same run,
each on its own cache prefilled eagerly: eager, ``torch.compile(model, mode="reduce-overhead",
fullgraph=True)`` (HF's recipe), ``torch.compile(model, backend="regionc", mode="reduce-overhead")`` and
``regionc.compile(model, mode="reduce-overhead")``, both regionc entries with the decode ops (decode
attention, skinny linears) swapped in whatever the decision table says (``*_swap``, its A/B), and
``regionc.compile`` with programmatic dependent launch off (``regionc_compile_nopdl``, its A/B:
``regionc/ops/pdl.py``), and ``*_skipguards``: the timed steps (after the first call and the warm-up steps at
each position, as torch asks) under ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``, torch's unsafe
switch that skips the guard check of a warmed-up compiled function, and ``*_max_autotune``: ``mode="max-autotune"``
(Inductor's autotuning of each kernel, CUDA graphs) for ``reduce-overhead`` and ``regionc.compile`` (neither in the
default list). Each row has ms per step (CUDA events, median of interleaved rounds), the relative error of the
first step against eager, and regionc's CUDA-graph stats. The cache's position counters are reset in place
between timing windows, so every window decodes at (about) the stated position.

Prefill: one 1×2048 forward without a cache (``use_cache=False``; with HF's ``DynamicCache`` each layer's
frame guards on its own cache layer, so per-block compiles recompile per layer): eager, per-block ``layer.compile()``, ``backend="regionc"``
and ``regionc.compile``.

    python benchmarks/e2e/bench_hf_llama.py --out DIR [--layers 32] [--shape llama3_8b]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DECODE_VARIANTS = ("eager", "reduce_overhead", "regionc_backend", "regionc_compile", "regionc_backend_swap",
                   "regionc_compile_swap", "regionc_compile_nopdl", "reduce_overhead_skipguards",
                   "regionc_backend_skipguards", "regionc_compile_skipguards", "reduce_overhead_max_autotune",
                   "regionc_compile_max_autotune")
PREFILL_VARIANTS = ("eager", "per_block", "regionc_backend", "regionc_compile")
DECODE_CASES = ((1, 256, (128,)), (8, 4096, (512, 3900)), (32, 4096, (512,)))  # batch, max_cache_len, positions


#: model widths: (config class, model class, config fields)
SHAPES = {
    "llama_2048": ("LlamaConfig", "LlamaModel", dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                                                     num_key_value_heads=8, vocab_size=32000)),
    "llama3_8b": ("LlamaConfig", "LlamaModel", dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                                    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)),
    "qwen25_7b": ("Qwen2Config", "Qwen2Model", dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                                                    num_key_value_heads=4, vocab_size=152064)),
}


def build(layers: int, shape: str = "llama_2048"):
    import torch
    import transformers

    config_class, model_class, fields = SHAPES[shape]
    cfg = getattr(transformers, config_class)(**fields, num_hidden_layers=layers, max_position_embeddings=8192)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        return getattr(transformers, model_class)(cfg).to(torch.bfloat16).eval()


#: a variant with this suffix times its steps under ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``,
#: torch's unsafe switch for a warmed-up server (Dynamo's frames and regionc.compile's saved traces alike)
SKIP_GUARDS = "_skipguards"

#: a variant with this suffix compiles with ``mode="max-autotune"`` (Inductor's autotuning, CUDA graphs) where the
#: others take ``reduce-overhead`` (not in the default list: its compile autotunes)
MAX_AUTOTUNE = "_max_autotune"

#: extra regionc options for every regionc variant (``--options``, an A/B such as Inductor's combo kernels)
EXTRA_OPTIONS: dict = {}


def compiled(variant: str, model, cache_dir: str, decode: bool):
    import torch

    import regionc
    from benchmarks.common import decode_ops_swapped
    from regionc.config import with_mode

    variant = variant.removesuffix(SKIP_GUARDS)  # a stance over the timed steps (decode_rows), not a compile option
    mode = ("max-autotune" if variant.endswith(MAX_AUTOTUNE) else "reduce-overhead") if decode else None
    variant = variant.removesuffix(MAX_AUTOTUNE)
    options = {"cache_dir": cache_dir, **(decode_ops_swapped() if variant.endswith("_swap") else {}), **EXTRA_OPTIONS}
    if variant.endswith("_nopdl"):  # Inductor's kernels here; regionc's at capture (decode_step)
        options["inductor_config"] = {**options.get("inductor_config", {}), "triton.enable_pdl": False}
    if variant == "eager":
        return model
    if variant == "reduce_overhead":
        return torch.compile(model, mode=mode, fullgraph=True)
    if variant == "per_block":
        for layer in model.layers:
            layer.compile()
        return model
    if variant.startswith("regionc_backend"):  # torch takes a mode or options, not both: the options say it
        return torch.compile(model, backend="regionc", options={**with_mode(options, mode), "cudagraphs": decode})
    return regionc.compile(model, mode=mode, options=options)


def relative_error(out, reference) -> float:
    out, reference = out.float(), reference.float()
    return ((out - reference).norm() / reference.norm()).item()


def decode_rows(model, layers: int, cache_dir: str, rounds: int, variants=DECODE_VARIANTS,
                batches=None) -> list[dict]:
    import torch

    import regionc
    from benchmarks.common import cuda_median_ms

    rows = []
    for batch, max_len, positions in DECODE_CASES:
        if batches and batch not in batches:
            continue
        torch._dynamo.reset()
        prompt = torch.randint(0, 32000, (batch, max(positions)), device="cuda")
        token = torch.ones(batch, 1, dtype=torch.long, device="cuda")
        runs, caches, first, positions_of = {}, {}, {}, {}
        for variant in dict.fromkeys(("eager", *variants)):  # eager: the reference of every error
            step, caches[variant], positions_of[variant] = decode_step(variant, model, cache_dir, prompt, max_len)
            runs[variant] = lambda step=step: step(token)
            before = len(regionc.reports())
            start = time.perf_counter()
            first[variant] = {"first_call_s": None, "reports": []}
            rewind(caches[variant], positions_of[variant], positions[0])
            runs[variant]()
            torch.cuda.synchronize()
            first[variant]["first_call_s"] = time.perf_counter() - start
            first[variant]["reports"] = [r.summary() for r in regionc.reports()[before:]]
            first[variant]["cudagraphs"] = [r.cudagraphs for r in regionc.reports()[before:] if r.cudagraphs]
        for position in positions:
            outputs = {}
            for variant, step in runs.items():
                for _ in range(3):  # warm-up and capture at this position
                    rewind(caches[variant], positions_of[variant], position)
                    out = step().last_hidden_state
                outputs[variant] = out.clone()
            times = {v: [] for v in runs}
            for r in range(rounds):
                order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
                for variant in order:
                    rewind(caches[variant], positions_of[variant], position)
                    with torch.compiler.set_stance(skip_guard_eval_unsafe=variant.endswith(SKIP_GUARDS)):
                        times[variant].append(cuda_median_ms(runs[variant], warmup=2, iters=20))
            for variant in runs:
                rows.append({"case": f"decode b{batch} cache{max_len} pos{position}", "variant": variant,
                             "ms": statistics.median(times[variant]), "round_ms": times[variant],
                             "rel_error": relative_error(outputs[variant], outputs["eager"]), **first[variant]})
                print(rows[-1]["case"], variant, f"{rows[-1]['ms']:.3f} ms", f"err {rows[-1]['rel_error']:.2e}",
                      flush=True)
    return rows


def decode_step(variant: str, model, cache_dir: str, prompt, max_len: int):
    """(step(tokens), cache, position tensor) for one variant: its own ``StaticCache`` prefilled eagerly
    with ``prompt``; a step decodes one token per row at the position tensor's value (set it in place)."""
    import torch
    from transformers import StaticCache

    from regionc.ops import pdl

    instance = copy.deepcopy(model) if variant.startswith("regionc_compile") else model
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)  # eager prefill, all variants alike
    fn = compiled(variant, instance, cache_dir, decode=True)
    position = torch.tensor([prompt.shape[1]], device=prompt.device)
    launch = pdl.turned_off if variant.endswith("_nopdl") else contextlib.nullcontext

    def step(tokens):
        with torch.no_grad(), launch():
            return fn(input_ids=tokens, past_key_values=cache, use_cache=True, cache_position=position)

    return step, cache, position


def rewind(cache, cache_position, position: int) -> None:
    """Put the step's position and every layer's position counter back (in place: CUDA graphs read them
    at their addresses)."""
    cache_position.fill_(position)
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length.fill_(position)


def prefill_rows(model, cache_dir: str, rounds: int) -> list[dict]:
    import torch

    from benchmarks.common import cuda_median_ms

    torch._dynamo.reset()
    tokens = torch.randint(0, 32000, (1, 2048), device="cuda")
    with torch.no_grad():
        reference = model(input_ids=tokens, use_cache=False).last_hidden_state
    runs, rows = {}, {}
    for variant in PREFILL_VARIANTS:
        fn = compiled(variant, copy.deepcopy(model) if variant != "eager" else model, cache_dir, decode=False)
        start = time.perf_counter()
        with torch.no_grad():
            out = fn(input_ids=tokens, use_cache=False).last_hidden_state
        torch.cuda.synchronize()
        runs[variant] = lambda fn=fn: fn(input_ids=tokens, use_cache=False)
        rows[variant] = {"case": "prefill 1x2048", "variant": variant, "first_call_s": time.perf_counter() - start,
                         "rel_error": relative_error(out, reference), "round_ms": []}
    with torch.no_grad():
        for r in range(rounds):
            for variant in list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]:
                rows[variant]["round_ms"].append(cuda_median_ms(runs[variant], warmup=3, iters=20))
    for row in rows.values():
        row["ms"] = statistics.median(row["round_ms"])
        print(row["case"], row["variant"], f"{row['ms']:.3f} ms", f"err {row['rel_error']:.2e}", flush=True)
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama_2048", help="model widths (SHAPES)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["decode", "prefill"])
    parser.add_argument("--variants", nargs="+", default=[v for v in DECODE_VARIANTS if not v.endswith(SKIP_GUARDS)],
                        choices=DECODE_VARIANTS,
                        help="decode variants (eager always runs: it is the reference)")
    parser.add_argument("--batches", type=int, nargs="+", help="decode cases of these batch sizes only")
    parser.add_argument("--options", type=json.loads, default={},
                        help='extra regionc options (JSON) for the regionc variants, e.g. \'{"inductor_config": '
                             '{"combo_kernels": true}}\'')
    args = parser.parse_args()
    EXTRA_OPTIONS.update(args.options)
    import torch

    from benchmarks.common import write_results

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    model = build(args.layers, args.shape)
    rows = []
    with tempfile.TemporaryDirectory(prefix="regionc-hf-") as cache_dir:
        if "prefill" not in args.skip:
            rows += prefill_rows(model, cache_dir, args.rounds)
        if "decode" not in args.skip:
            rows += decode_rows(model, args.layers, cache_dir, args.rounds, args.variants, args.batches)
    print(write_results(args.out, "hf_llama", {"shape": args.shape, "layers": args.layers, "options": args.options, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
