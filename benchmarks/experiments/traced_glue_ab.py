"""Cold first call of Chroma's transformer with its data-only glue run as traced, against compiled.

Chroma hands each block its own slices of one modulation tensor: between double blocks the glue is
two slices and a ``cat``, between single blocks slices alone, with per-layer bounds, so every glue
piece has a fingerprint of its own. ``regionc/compiler/moves.py`` runs such pieces as traced; the
``compiled`` variant puts back a compile per piece (``moves_data_only`` answering no). Each variant
runs in a new process with empty regionc, Inductor and Triton caches (the first process would
otherwise leave the second its Triton kernels), compiled variant first.

The model is ChromaTransformer2DModel at its real depth (19 double, 38 single blocks) and a narrow
width (4 heads of 64), bf16, 1024 image and 128 text tokens, through ``backend="regionc"`` (torch
2.11's ``regionc.compile`` takes per-block frames, whose glue runs eagerly anyway).

    python benchmarks/experiments/traced_glue_ab.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("compiled", "traced")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_first_call(args.child)))
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
    with open(os.path.join(args.out, "traced_glue_ab.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


def _first_call(variant: str) -> dict:
    import diffusers
    import torch

    import regionc
    import regionc.compiler.graph as graph

    if variant == "compiled":
        graph.moves_data_only = lambda _: False
    torch.manual_seed(0)
    model = diffusers.ChromaTransformer2DModel(
        num_layers=19, num_single_layers=38, attention_head_dim=64, num_attention_heads=4, joint_attention_dim=256,
        in_channels=64, approximator_num_channels=64, approximator_hidden_dim=256, axes_dims_rope=(16, 24, 24),
    ).to("cuda", torch.bfloat16).eval()
    inputs = {"hidden_states": torch.randn(1, 1024, 64, device="cuda", dtype=torch.bfloat16),
              "encoder_hidden_states": torch.randn(1, 128, 256, device="cuda", dtype=torch.bfloat16),
              "img_ids": torch.randn(1024, 3, device="cuda"), "txt_ids": torch.randn(128, 3, device="cuda"),
              "timestep": torch.tensor([1.0], device="cuda"), "return_dict": False}
    with torch.no_grad():
        expected = model(**inputs)[0]
        compiled = torch.compile(model, backend="regionc")
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = compiled(**inputs)[0]
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - start
    report = regionc.last_report()
    return {"variant": variant, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "first_call_s": round(first_call_s, 2), "phases_s": {k: round(v, 2) for k, v in report.phases.items()},
            "glue_compiled": report.count("compiled", "glue"), "glue_traced": report.count("traced", "glue"),
            "blocks_compiled": report.count("compiled", "block"),
            "rel_error": ((out.float() - expected.float()).norm() / expected.float().norm()).item()}


if __name__ == "__main__":
    sys.exit(main())
