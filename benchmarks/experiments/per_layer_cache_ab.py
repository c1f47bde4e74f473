"""First calls of ``regionc.compile`` on torch 2.11 (per-block frames) for an HF decoder handed a cache:
per-block frames given up at the first block (``CompiledForward.check_first_block``), against given up
after the first call showed more compiles than the three variants per block class.

HF layers pick their cache layer by ``layer_idx``, so per-block frames handed a ``DynamicCache``
specialize per layer. The ``count`` variant turns the first-block check off: the first call compiles
block frames until the count gives it away, runs the rest eagerly, and the second call takes the full
trace. Each variant runs in a new process on empty regionc, Inductor and Triton caches, ``count`` first.
HF ``LlamaModel``, 8 layers × 1024 (16 heads, 4 KV heads), bf16 on a GPU (fp32 on the CPU, where
Inductor's C++ builds make each compile dearer), one 1 × 128 prefill with ``use_cache=True``, called
twice.

    python benchmarks/experiments/per_layer_cache_ab.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("count", "cache")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_first_calls(args.child)))
        return 0
    rows = []
    for variant in VARIANTS:
        env = {**os.environ, "REGIONC_CACHE_DIR": tempfile.mkdtemp(), "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(),
               "TRITON_CACHE_DIR": tempfile.mkdtemp()}
        done = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                              env=env, timeout=300)
        rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        print(rows[-1] if rows and rows[-1]["variant"] == variant else done.stderr[-2000:])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "per_layer_cache_ab.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


def _first_calls(variant: str) -> dict:
    import torch
    import transformers

    import regionc
    from regionc.tracing.compile import CompiledForward

    if variant == "count":
        CompiledForward.check_first_block = lambda self, args, kwargs: None
    config = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                      num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 128), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    seconds = []
    with torch.no_grad():
        expected = model(input_ids=tokens, use_cache=True).last_hidden_state
        compiled = regionc.compile(model)
        for _ in range(2):
            sync()
            start = time.perf_counter()
            out = compiled(input_ids=tokens, use_cache=True).last_hidden_state
            sync()
            seconds.append(round(time.perf_counter() - start, 2))
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"variant": variant, "device": name, "torch": torch.__version__,
            "first_call_s": seconds[0], "second_call_s": seconds[1], "strategy": compiled.forward.strategy,
            "fallbacks": [f[:160] for f in compiled.forward.fallbacks], "graphs_compiled": len(regionc.reports()),
            "rel_error": ((out.float() - expected.float()).norm() / expected.float().norm()).item()}


if __name__ == "__main__":
    sys.exit(main())
