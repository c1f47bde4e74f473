"""Where a decode step's GPU time goes: kernels per forward, regionc against full-graph ``reduce-overhead``.

Both run the 32-layer demo decoder under one CUDA graph per shape, so host overhead is out of the
picture and a latency gap is GPU work: more kernels (no fusion across block boundaries), or
slower ones. ``torch.profiler`` records N replays; the result lists, per variant and batch, the
kernels per forward, GPU µs per forward, and the kernels that take the most time.

    python benchmarks/e2e/profile_decode.py --out DIR [--batches 1 8] [--layers 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("reduce_overhead", "regionc_graphs")


def kernel_table(prof, steps: int) -> tuple[list[dict], float, float, float]:
    """(top kernels, kernels per step, GPU µs per step, µs per step from the first kernel's start
    to the last one's end) from a profiler's device events."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    first, last = float("inf"), 0.0
    for event in prof.events():
        if getattr(event, "device_type", None) is None or str(event.device_type) != "DeviceType.CUDA":
            continue
        entry = totals[event.name]
        entry[0] += 1
        entry[1] += event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        first, last = min(first, event.time_range.start), max(last, event.time_range.end)
    rows = [{"kernel": name[:120], "per_step": count / steps, "us_per_step": us / steps}
            for name, (count, us) in totals.items()]
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows, sum(r["per_step"] for r in rows), sum(r["us_per_step"] for r in rows), (last - first) / steps


def host_us_per_call(run, tokens, calls: int = 50) -> float:
    """Host time to enqueue one forward (no sync inside: the GPU queue is far from full after 50)."""
    import time

    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run(tokens)
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        print("profile_decode: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import cuda_median_ms, write_results
    from benchmarks.e2e.bench_decode import make_runner
    from regionc.models.llama import LlamaConfig, build_demo_model

    model = build_demo_model(LlamaConfig(n_layers=args.layers), dtype=torch.bfloat16, device="cuda")
    results = {"layers": args.layers, "rows": []}
    with tempfile.TemporaryDirectory(prefix="profile-decode-") as cache_dir, torch.no_grad():
        for variant in VARIANTS:
            torch._dynamo.reset()
            run = make_runner(variant, model, cache_dir)
            for batch in args.batches:
                tokens = torch.randint(0, 32000, (batch, 1), device="cuda")
                ms = cuda_median_ms(lambda: run(tokens), warmup=5, iters=50)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.steps):
                        run(tokens)
                    torch.cuda.synchronize()
                kernels, count, gpu_us, span_us = kernel_table(prof, args.steps)
                host_us = host_us_per_call(run, tokens)
                row = {"variant": variant, "batch": batch, "ms": ms, "kernels_per_step": count,
                       "gpu_us_per_step": gpu_us, "gpu_span_us_per_step": span_us, "host_us_per_call": host_us,
                       "top_kernels": kernels[:25]}
                results["rows"].append(row)
                print(f"{variant:>16} b={batch:<3} {ms:6.3f} ms  {count:6.1f} kernels  {gpu_us:8.1f} GPU us/step  "
                      f"span {span_us:8.1f} us/step  host {host_us:8.1f} us/call", flush=True)
                for k in kernels[:12]:
                    print(f"      {k['us_per_step']:8.1f} us  x{k['per_step']:5.1f}  {k['kernel'][:100]}")
                write_results(args.out, "decode_profile", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
