"""Runs every kernel microbenchmark (rms_norm, rope, attention) and writes one JSON + one PNG per
op to --out, plus summary.json. Needs a CUDA GPU; exits 0 with a message without one.

    python benchmarks/kernels/run_all.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results/kernels")
    ap.add_argument("--only", nargs="*", choices=["rms_norm", "rope", "attention"], default=None)
    ap.add_argument("--no-sweep", action="store_true", help="skip the launch-parameter sweeps")
    args = ap.parse_args()
    C.require_cuda("run_all")
    import bench_attention
    import bench_rms_norm
    import bench_rope

    todo = {"rms_norm": bench_rms_norm.run, "rope": bench_rope.run, "attention": bench_attention.run}
    summary = {"env": C.env_info(), "copy_bandwidth_GBps": C.copy_bandwidth_gbps(), "seconds": {}}
    print(f"device copy bandwidth: {summary['copy_bandwidth_GBps']:.0f} GB/s")
    for name, fn in todo.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"== {name}")
        fn(args.out, sweep=not args.no_sweep)
        summary["seconds"][name] = round(time.perf_counter() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"results in {args.out}: {summary['seconds']}")


if __name__ == "__main__":
    main()
