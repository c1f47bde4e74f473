"""Is the decode-attention kernel faster than an earlier version of it? Both launchers run in one process,
interleaved, on the same inputs: the package's ``regionc/ops/decode_attention.py`` and a copy of the file
from another commit (``git show REV:regionc/ops/decode_attention.py > base.py``), loaded under a
private name without registering its op.

Inputs as ``bench_decode_attention``: bf16, 32 query / 8 KV heads, D 64, an HF-style boolean mask over a
4096-slot cache. Times are device µs per call inside a CUDA graph, the median of ``--rounds`` rounds.
``--constant NAME --values A B`` times the package's launcher once per value of one of its module
constants (``current[NAME=A]``, ...) instead of once as it is.

    python benchmarks/experiments/decode_attention_ab.py --baseline base.py --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HQ, HKV, CAPACITY, D = 32, 8, 4096, 64


def load_baseline(path: str):
    """The module at ``path``, imported as ``decode_attention_baseline`` with op registration switched off."""
    from regionc.ops import _utils

    spec = importlib.util.spec_from_file_location("decode_attention_baseline", path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.object(_utils, "define_op"), mock.patch.object(_utils, "register_cpu"):
        spec.loader.exec_module(module)
    return module


def with_constant(module, name: str, value: int):
    """The module's launcher with its constant ``name`` set to ``value`` for each call (and each capture)."""
    def launch(*args):
        before = getattr(module, name)
        setattr(module, name, value)
        try:
            return module.decode_attention_triton(*args)
        finally:
            setattr(module, name, before)
    return launch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--positions", type=int, nargs="+", default=[128, 512, 3900])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--constant", help="a module constant of regionc/ops/decode_attention.py to vary")
    ap.add_argument("--values", type=int, nargs="+", default=[])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 0
    from bench_decode_attention import time_in_graph

    from benchmarks.common import environment
    from regionc.ops import decode_attention

    kernels = {"baseline": load_baseline(args.baseline).decode_attention_triton}
    if args.constant:
        for value in args.values:
            kernels[f"current[{args.constant}={value}]"] = with_constant(decode_attention, args.constant, value)
    else:
        kernels["current"] = decode_attention.decode_attention_triton
    rows = []
    for b in args.batches:
        torch.manual_seed(0)
        kc = torch.randn(b, HKV, CAPACITY, D, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        q = torch.randn(b, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
        for pos in args.positions:
            # HF's decode mask: one row for every sequence (stride 0 over the batch)
            mask = (torch.arange(CAPACITY, device="cuda") <= pos).view(1, 1, 1, -1).expand(b, 1, 1, -1)
            outs = {name: fn(q, kc, vc, mask) for name, fn in kernels.items()}
            times = {name: [] for name in kernels}
            for r in range(args.rounds):
                for name in (list(kernels) if r % 2 == 0 else list(kernels)[::-1]):
                    times[name].append(1e3 * time_in_graph(lambda fn=kernels[name]: fn(q, kc, vc, mask)))
            row = {"batch": b, "pos": pos, **{f"{n}_us": statistics.median(t) for n, t in times.items()},
                   "max_abs_diff": max((o.float() - outs["baseline"].float()).abs().max().item()
                                       for o in outs.values())}
            rows.append(row)
            print(f"b{b:<3} pos{pos:<6}", "  ".join(f"{n} {row[n + '_us']:7.2f} us" for n in kernels),
                  f"diff {row['max_abs_diff']:.1e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), "capacity": CAPACITY, "heads": [HQ, HKV], "head_dim": D, "rows": rows}
    (out / "decode_attention_ab.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
