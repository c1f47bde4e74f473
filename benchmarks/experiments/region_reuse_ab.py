"""First calls of ``regionc.compile`` on torch >= 2.12 for an HF decoder whose nested regions Dynamo cannot
reuse: nested regions kept (``block_tracing="nested_region"``: Dynamo traces the region once per layer),
against ``auto`` (``CompiledForward.check_region_reuse`` gives them up before the call: per-block frames, or
the full trace where the blocks are handed a cache), against the full trace.

Transformers' Llama attention routes hub kernels through ``kernels`` (a side effect on every compiled call),
and a call with ``use_cache`` on updates the cache the model makes (another): either makes Dynamo trace every
region anew. Each variant runs in a new process on empty regionc, Inductor and Triton caches. HF ``LlamaModel``,
32 layers × 64 (4 heads, 2 KV heads, fp32: the trace, not the compile, is what differs), one 1 × 7 call with
``use_cache`` off and on. ``trace_s`` is the report's Dynamo phase, summed over the graphs compiled.

    python benchmarks/experiments/region_reuse_ab.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("nested_region", "auto", "full")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--use-cache", type=int, choices=(0, 1))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_first_call(args.child, bool(args.use_cache))))
        return 0
    rows = []
    for use_cache in (0, 1):
        for variant in VARIANTS:
            env = {**os.environ, "REGIONC_CACHE_DIR": tempfile.mkdtemp(),
                   "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(), "TRITON_CACHE_DIR": tempfile.mkdtemp()}
            done = subprocess.run([sys.executable, __file__, "--child", variant, "--use-cache", str(use_cache)],
                                  capture_output=True, text=True, env=env, timeout=600)
            found = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            rows += found
            print(found[-1] if found else done.stderr[-2000:], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "region_reuse_ab.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


def _first_call(variant: str, use_cache: bool) -> dict:
    import torch
    import transformers

    import regionc

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=32,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 7))
    with torch.no_grad():
        expected = model(input_ids=tokens, use_cache=use_cache).last_hidden_state
        compiled = regionc.compile(model, options={"block_tracing": variant})
        start = time.perf_counter()
        out = compiled(input_ids=tokens, use_cache=use_cache).last_hidden_state
        seconds = time.perf_counter() - start
    reports = compiled.forward.reports
    return {"variant": variant, "use_cache": use_cache, "device": f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "first_call_s": round(seconds, 2), "trace_s": round(sum(r.phases.get("trace", 0.0) for r in reports), 2),
            "strategy": compiled.forward.strategy, "fallbacks": [f[:160] for f in compiled.forward.fallbacks],
            "relative_error": ((out - expected).norm() / expected.norm()).item()}


if __name__ == "__main__":
    raise SystemExit(main())
