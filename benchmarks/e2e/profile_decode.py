"""Where a decode step's time goes: regionc against full-graph ``reduce-overhead``.

Both run the 32-layer demo decoder (``--model demo``, without a KV cache) or Hugging Face ``LlamaModel``
32 × 2048 decoding on a ``StaticCache`` (``--model hf_llama``, ``--cache-len``, ``--position``) under one
CUDA graph per shape. A step's latency (CUDA events
around one call, then a sync) is the host time before the graph is launched, while the GPU idles,
plus the graph's span on the GPU. Per variant and batch the result gives:

- kernels per forward, GPU µs per forward, and the first-to-last kernel span (``torch.profiler``);
- the idle time between kernels inside the span (no kernel running), summed by the kernel that waited,
  and one layer's kernels with their start, end and idle time (``layer_timeline``);
- host µs from the call to ``CUDAGraph.replay`` and from there to the return (the replay is
  what both variants call, so this splits host time at the same point), and of the first part the
  saved trace's guard check (``regionc.compile``);
- the host functions that take the most time per call (cProfile);
- what the decode-attention op is handed (``op_calls``: mask dtype, shape, strides, keys it lets through).

    python benchmarks/e2e/profile_decode.py --out DIR [--batches 1 8] [--layers 32]
    python benchmarks/e2e/profile_decode.py --out DIR --model hf_llama --batches 8 --cache-len 4096 --position 512
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = {"demo": ("reduce_overhead", "regionc_graphs"),  # names of bench_decode.make_runner
            "hf_llama": ("reduce_overhead", "regionc_backend_swap")}  # names of bench_hf_llama.compiled


def kernel_table(prof, steps: int) -> tuple[list[dict], float, float, float, list[dict]]:
    """(top kernels, kernels per step, GPU µs per step, µs per step from the first kernel's start
    to the last one's end, idle µs per step before each kernel name) from a profiler's device events.

    Idle time counts only gaps under 50 µs: longer ones lie between steps, not inside a graph."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    events = []
    for event in prof.events():
        if getattr(event, "device_type", None) is None or str(event.device_type) != "DeviceType.CUDA":
            continue
        entry = totals[event.name]
        entry[0] += 1
        entry[1] += event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        events.append((event.time_range.start, event.time_range.end, event.name))
    events.sort()
    idle: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    busy_until = events[0][1] if events else 0.0  # kernels overlap under PDL: idle = no kernel running
    for start, end, name in events[1:]:
        if 0 < start - busy_until < 50:
            idle[name][0] += 1
            idle[name][1] += start - busy_until
        busy_until = max(busy_until, end)
    rows = [{"kernel": name[:120], "per_step": count / steps, "us_per_step": us / steps}
            for name, (count, us) in totals.items()]
    rows.sort(key=lambda r: -r["us_per_step"])
    gaps = [{"before_kernel": name[:120], "per_step": count / steps, "idle_us_per_step": us / steps}
            for name, (count, us) in idle.items()]
    gaps.sort(key=lambda r: -r["idle_us_per_step"])
    span = (events[-1][1] - events[0][0]) / steps if events else 0.0
    return rows, sum(r["per_step"] for r in rows), sum(r["us_per_step"] for r in rows), span, gaps


def layer_timeline(prof, anchor: str = "_decode_split_kernel", before: int = 5, after: int = 8) -> list[dict]:
    """The kernels around the middle occurrence of ``anchor`` in the profile, in start order: name,
    start and end in µs from the first of them, and the idle time before each (no kernel running;
    under PDL a kernel starts while the one before it still runs, and its wait counts in its time)."""
    events = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                    if str(getattr(e, "device_type", None)) == "DeviceType.CUDA")
    hits = [i for i, (_, _, name) in enumerate(events) if name == anchor]
    if not hits:
        return []
    mid = hits[len(hits) // 2]
    window = events[max(0, mid - before):mid + after]
    t0, busy_until, rows = window[0][0], window[0][0], []
    for start, end, name in window:
        rows.append({"kernel": name[:60], "start_us": start - t0, "end_us": end - t0,
                     "idle_before_us": max(0.0, start - busy_until)})
        busy_until = max(busy_until, end)
    return rows


def host_split_us(run, tokens, calls: int = 50) -> tuple[float, float, float, float]:
    """Median host µs (call -> ``CUDAGraph.replay``, ``replay`` -> return, and of the first part the
    saved trace's guard check, ``regionc.compile`` only: NaN otherwise), synchronized per call as the
    latency measurement is: the GPU idles for the first part. Last, the same check repeated back to
    back on the last call's arguments: on a 2-core CPU machine an HF Llama trace's check takes 42 µs
    back to back and 150-200 µs after the host touched 32 MB, so the two tell a check slowed by what the host
    did since the last step from a slow host."""
    import time

    import torch

    from regionc.tracing.saved import _Entry

    marks: list[float] = []
    guard_marks: list[float] = []
    replay, check = torch.cuda.CUDAGraph.replay, _Entry.check

    def timed_replay(graph):
        marks.append(time.perf_counter())
        replay(graph)
        marks.append(time.perf_counter())

    last: list[tuple] = []

    def timed_check(entry, *args):
        start = time.perf_counter()
        try:
            return check(entry, *args)
        finally:
            guard_marks.append(time.perf_counter() - start)
            last[:] = [(entry, *args)]

    before, after, guards = [], [], []
    torch.cuda.CUDAGraph.replay, _Entry.check = timed_replay, timed_check
    try:
        for _ in range(calls):
            torch.cuda.synchronize()
            marks.clear()
            guard_marks.clear()
            start = time.perf_counter()
            run(tokens)
            done = time.perf_counter()
            if len(marks) == 2:
                before.append(marks[0] - start)
                after.append(done - marks[0])
                guards.append(sum(guard_marks) if guard_marks else float("nan"))
    finally:
        torch.cuda.CUDAGraph.replay, _Entry.check = replay, check
    torch.cuda.synchronize()
    warm = []
    for _ in range(calls if last else 0):
        start = time.perf_counter()
        check(*last[0])
        warm.append(time.perf_counter() - start)
    median = statistics.median
    nan = float("nan")
    if not before:
        return nan, nan, nan, nan
    return median(before) * 1e6, median(after) * 1e6, median(guards) * 1e6, median(warm) * 1e6 if warm else nan


def host_hotspots(run, tokens, calls: int = 100, top: int = 20) -> str:
    """cProfile's top functions by own time over ``calls`` forwards (per-call µs in the text)."""
    import cProfile
    import io
    import pstats

    import torch

    profiler = cProfile.Profile()
    for _ in range(calls):
        torch.cuda.synchronize()
        profiler.enable()
        run(tokens)
        profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return f"({calls} calls)\n" + text.getvalue()


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


@contextlib.contextmanager
def op_arguments(seen: list[dict]):
    """Record what the decode-attention op's launcher is handed (once per distinct signature): the mask's
    dtype, shape and strides, and, outside a CUDA-graph capture, how many keys it lets through for
    batch row 0 and what the kernel then treats as excluded. A step that costs the cache's capacity
    rather than its valid part shows here as a mask that excludes nothing."""
    import torch

    import regionc.ops.decode_attention as op

    launch = op.decode_attention_triton

    def recording(q, k_cache, v_cache, mask=None, kv_len=None, scale=None, **kw):
        entry = {"q": list(q.shape), "k_cache": list(k_cache.shape), "kv_len": kv_len is not None,
                 "mask": None if mask is None else {"dtype": str(mask.dtype), "shape": list(mask.shape),
                                                    "stride": list(mask.stride())}}
        if all(any(e[name] != entry[name] for name in entry) for e in seen):
            if mask is not None and not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                row = mask.expand(q.shape[0], 1, q.shape[2], k_cache.shape[2])[0, 0, -1]
                seen_keys = row if row.dtype == torch.bool else row > op._mask_floor(row)
                entry["keys_seen"] = int(seen_keys.sum())
                entry["min_value"] = None if row.dtype == torch.bool else float(row.float().min())
            seen.append(entry)
        return launch(q, k_cache, v_cache, mask, kv_len, scale, **kw)

    op.decode_attention_triton = recording
    try:
        yield
    finally:
        op.decode_attention_triton = launch


#: most forwards one measurement of ``main`` runs between two rewinds (``host_hotspots``' calls)
CALLS_PER_PHASE = 100


def decode_runners(args, variant: str, cache_dir: str):
    """batch -> (run(tokens), rewind()) for one variant of ``args.model``. HF's ``StaticCache`` layers
    count the tokens they hold, one more each step: ``rewind`` (called between measurements, never
    inside one) puts every counter back at ``args.position``, so a step always decodes there and never
    writes past the cache."""
    import torch

    if args.model == "hf_llama":
        from benchmarks.e2e.bench_hf_llama import build, decode_step, rewind

        model = build(args.layers)

        def runner(batch):
            prompt = torch.randint(0, 32000, (batch, args.position), device="cuda")
            step, cache, position = decode_step(variant, model, cache_dir, prompt, args.cache_len)
            return step, lambda: rewind(cache, position, args.position)

        return runner
    from benchmarks.e2e.bench_decode import make_runner
    from regionc.models.llama import LlamaConfig, build_demo_model

    model = build_demo_model(LlamaConfig(n_layers=args.layers), dtype=torch.bfloat16, device="cuda")
    run = make_runner(variant, model, cache_dir)
    return lambda batch: (run, lambda: None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace per variant and batch")
    parser.add_argument("--model", choices=sorted(VARIANTS), default="demo")
    parser.add_argument("--cache-len", type=int, default=4096, help="hf_llama: the StaticCache's max_cache_len")
    parser.add_argument("--position", type=int, default=512, help="hf_llama: the position every step decodes at")
    parser.add_argument("--variants", nargs="+",
                        help="in this order; a name may repeat (latency drifts with the order in a process)")
    parser.add_argument("--options", type=json.loads, default={},
                        help="hf_llama: extra regionc options (JSON) for the regionc variants, as bench_hf_llama.py's")
    args = parser.parse_args()
    if args.model == "hf_llama" and args.position + max(CALLS_PER_PHASE, args.steps) + 5 > args.cache_len:
        parser.error(f"--position {args.position} leaves the {args.cache_len}-slot cache too few slots: one "
                     f"measurement decodes up to {max(CALLS_PER_PHASE, args.steps) + 5} steps from it")
    if args.options:
        from benchmarks.e2e.bench_hf_llama import EXTRA_OPTIONS

        EXTRA_OPTIONS.update(args.options)

    import torch
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        print("profile_decode: no CUDA device; nothing measured")
        return 0
    from benchmarks.common import cuda_median_ms, write_results

    results = {"model": args.model, "layers": args.layers, "options": args.options, "rows": []}
    if args.model == "hf_llama":
        results.update(cache_len=args.cache_len, position=args.position)
    with tempfile.TemporaryDirectory(prefix="profile-decode-") as cache_dir, torch.no_grad():
        for variant in args.variants or VARIANTS[args.model]:
            torch._dynamo.reset()
            runners = decode_runners(args, variant, cache_dir)
            for batch in args.batches:
                tokens = torch.randint(0, 32000, (batch, 1), device="cuda")
                run, rewind = runners(batch)
                op_calls: list[dict] = []
                rewind()
                with op_arguments(op_calls):  # the first calls run the launcher (later ones replay graphs)
                    ms = cuda_median_ms(lambda: run(tokens), warmup=5, iters=50)
                torch.cuda.synchronize()
                rewind()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.steps):
                        run(tokens)
                    torch.cuda.synchronize()
                if args.trace:
                    Path(args.out).mkdir(parents=True, exist_ok=True)
                    prof.export_chrome_trace(str(Path(args.out) / f"trace_{variant}_b{batch}.json"))
                kernels, count, gpu_us, span_us, gaps = kernel_table(prof, args.steps)
                timeline = layer_timeline(prof)
                rewind()
                host_us = host_us_per_call(run, tokens)
                rewind()
                before_us, after_us, guards_us, warm_us = host_split_us(run, tokens)
                row = {"variant": variant, "batch": batch, "ms": ms, "kernels_per_step": count,
                       "gpu_us_per_step": gpu_us, "gpu_span_us_per_step": span_us, "host_us_per_call": host_us,
                       "host_us_before_replay": before_us, "host_us_after_replay": after_us,
                       "guard_check_us": guards_us, "guard_check_back_to_back_us": warm_us,
                       "top_kernels": kernels[:25], "idle_before": gaps[:15], "layer_timeline": timeline,
                       "op_calls": op_calls}
                results["rows"].append(row)
                print(f"{variant:>16} b={batch:<3} {ms:6.3f} ms  {count:6.1f} kernels  {gpu_us:8.1f} GPU us/step  "
                      f"span {span_us:8.1f} us/step  host {host_us:8.1f} us/call  "
                      f"before replay {before_us:6.1f} us (guards {guards_us:5.1f}, back to back {warm_us:5.1f})  "
                      f"after {after_us:6.1f} us",
                      flush=True)
                for call in op_calls:
                    print(f"    decode-attention op: {call}")
                for k in kernels[:16]:
                    print(f"      {k['us_per_step']:8.1f} us  x{k['per_step']:5.1f}  {k['kernel'][:100]}")
                print("    idle before:")
                for g in gaps[:8]:
                    print(f"      {g['idle_us_per_step']:8.1f} us  x{g['per_step']:5.1f}  {g['before_kernel'][:100]}")
                print("    one layer (µs: start, end, idle before):")
                for t in timeline:
                    print(f"      {t['start_us']:8.2f} {t['end_us']:8.2f} {t['idle_before_us']:6.2f}  {t['kernel']}")
                if batch == args.batches[0]:
                    rewind()
                    print(host_hotspots(run, tokens, calls=CALLS_PER_PHASE))
                write_results(args.out, "decode_profile", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
