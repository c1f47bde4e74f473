"""Decode latency A/B: where regionc's CUDA-graph replay differs from full-graph ``reduce-overhead``.

One process, one demo decoder, one token per sequence. Each variant is timed the same way:

- ``ms``: latency (CUDA events around a call, then a sync; median of 3 x 100 calls);
- ``replay_gpu_us``: CUDA events right around ``CUDAGraph.replay`` (the graph's time on the GPU,
  launch included);
- ``before_replay_us`` / ``after_replay_us``: host time split at the replay.

Variants (``--variants``):

- ``reduce_overhead``: full-graph ``torch.compile(mode="reduce-overhead")`` (cudagraph trees);
- ``regionc``: ``backend="regionc"`` with its graph runner (``cudagraph_mode="full"``);
- ``regionc_clear_cublas``: the same, with cuBLAS workspaces cleared around warm-up and capture,
  as cudagraph trees do;
- ``regionc_manual``: regionc without graphs, captured by hand with ``torch.cuda.graph``;
- ``inductor_manual``: full-graph Inductor without graphs, captured by hand.

A name may repeat (``regionc regionc``): measurements drift within a process, so repeats show the
noise. Results in benchmarks/results/decode_capture_ab/.

    python benchmarks/experiments/decode_capture_ab.py --out DIR --layers 32 --batch 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = ("reduce_overhead", "regionc", "regionc_clear_cublas", "regionc_manual", "inductor_manual")


def replay_gpu_us(run, calls: int = 50) -> float | None:
    import torch

    events = []
    replay = torch.cuda.CUDAGraph.replay

    def timed(graph):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay(graph)
        end.record()
        events.append((start, end))

    torch.cuda.CUDAGraph.replay = timed
    try:
        for _ in range(calls):
            run()
            torch.cuda.synchronize()
    finally:
        torch.cuda.CUDAGraph.replay = replay
    return statistics.median(s.elapsed_time(e) * 1000 for s, e in events) if events else None


@contextlib.contextmanager
def cublas_cleared_captures():
    """Clear cuBLAS workspaces around regionc's warm-ups and captures (what cudagraph trees do)."""
    from torch._inductor.cudagraph_trees import clear_cublas_manager

    from regionc.cudagraph.runner import CudaGraphBackend

    capture, warmup = CudaGraphBackend.capture, CudaGraphBackend.warmup

    def cleared_capture(self, fn, args, pool):
        with clear_cublas_manager():
            return capture(self, fn, args, pool)

    def cleared_warmup(self):
        with clear_cublas_manager(), warmup(self):
            yield

    CudaGraphBackend.capture, CudaGraphBackend.warmup = cleared_capture, contextlib.contextmanager(cleared_warmup)
    try:
        yield
    finally:
        CudaGraphBackend.capture, CudaGraphBackend.warmup = capture, warmup


def captured_by_hand(compiled, tokens):
    import torch

    for _ in range(3):
        compiled(tokens)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compiled(tokens)
    return graph.replay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("decode_capture_ab: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import cuda_median_ms, write_results
    from benchmarks.e2e.profile_decode import host_split_us
    from regionc.models.llama import LlamaConfig, build_demo_model

    model = build_demo_model(LlamaConfig(n_layers=args.layers), dtype=torch.bfloat16, device="cuda")
    tokens = torch.randint(0, 32000, (args.batch, 1), device="cuda")
    rows = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as cache:
        for variant in args.variants:
            torch._dynamo.reset()
            options = {"cache_dir": cache, "cudagraphs": not variant.endswith("manual")}
            scope = cublas_cleared_captures() if variant == "regionc_clear_cublas" else contextlib.nullcontext()
            with scope:
                if variant == "reduce_overhead":
                    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
                elif variant == "inductor_manual":
                    compiled = torch.compile(model, dynamic=False)
                else:
                    compiled = torch.compile(model, backend="regionc", dynamic=False, options=options)
                run = captured_by_hand(compiled, tokens) if variant.endswith("manual") else lambda: compiled(tokens)
                for _ in range(5):
                    run()
                torch.cuda.synchronize()
                ms = [cuda_median_ms(run, warmup=5, iters=100) for _ in range(3)]
                before, after = host_split_us(lambda _: run(), tokens)
                row = {"variant": variant, "ms": statistics.median(ms), "ms_all": ms,
                       "replay_gpu_us": replay_gpu_us(run), "before_replay_us": before, "after_replay_us": after}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(args.out, f"decode_capture_ab_{args.layers}L_b{args.batch}",
                          {"layers": args.layers, "batch": args.batch, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
