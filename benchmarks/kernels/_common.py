"""Shared helpers for the kernel microbenchmarks: CUDA check, copy bandwidth, do_bench with
rotated inputs (so small shapes are not measured out of L2), result JSON and bar plots."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from typing import Callable

import torch

L2_FLUSH_BYTES = 256 << 20  # rotate through >= 256 MiB of inputs (H100 L2 is 50 MB)
MAX_COPIES = 64
DEFAULT_OUT = "benchmarks/results/kernels"


def require_cuda(script: str) -> None:
    if not torch.cuda.is_available():
        print(f"{script}: no CUDA device available; kernel benchmarks need a GPU. Nothing to do.")
        sys.exit(0)
    try:
        import triton  # noqa: F401
    except ImportError:
        print(f"{script}: triton is not installed; nothing to do.")
        sys.exit(0)


def env_info() -> dict:
    import triton

    return {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def bench_graph(fn: Callable[[], object], calls: int = 50, replays: int = 20) -> float:
    """Median device milliseconds per ``fn()`` with the host out of the picture: ``calls`` calls
    captured in one CUDA graph, replayed ``replays`` times (inputs fixed, so L2-warm). This is
    what a call costs inside regionc's piecewise CUDA graphs (decode)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / calls)
    del g
    times.sort()
    return times[len(times) // 2]


def graph_rows(shape: str, providers: dict[str, Callable], args: tuple, nbytes: int, copy_bw: float) -> list[dict]:
    """One row per provider, named ``<provider>+graph``: device time per call from ``bench_graph``
    (latency shapes: the eager rows there measure host overhead, these measure the kernels)."""
    rows = []
    for name, fn in providers.items():
        try:
            ms = bench_graph(lambda fn=fn: fn(*args))
        except Exception as exc:  # not capturable (or unavailable): say so, keep going
            print(f"  {name}+graph: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            ms = None
        gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
        rows.append({"shape": shape, "provider": f"{name}+graph", "ms": ms, "GBps": gbps,
                     "pct_copy_bw": None if gbps is None else 100 * gbps / copy_bw, "input_copies": 1})
    return rows


def sweep(label: str, configs: list[dict], make_fn: Callable[[dict], Callable[[], object]], nbytes: int = 0,
          flops: float = 0.0) -> list[dict]:
    """Times ``make_fn(cfg)()`` for every cfg (do_bench median); returns rows (GB/s from
    ``nbytes`` or TFLOP/s from ``flops``) sorted fastest first and prints the best three. Used to
    record what the launch heuristics should pick."""
    out = []
    for cfg in configs:
        ms = try_bench(f"{label} {cfg}", make_fn(cfg))
        if ms is None:
            continue
        row = {"shape": label, "config": cfg, "ms": ms}
        if nbytes:
            row["GBps"] = nbytes / (ms * 1e-3) / 1e9
        if flops:
            row["TFLOPs"] = flops / (ms * 1e-3) / 1e12
        out.append(row)
    out.sort(key=lambda r: r["ms"])
    for r in out[:3]:
        rate = f"{r['GBps']:.0f} GB/s" if "GBps" in r else f"{r.get('TFLOPs', 0):.0f} TFLOP/s"
        print(f"  sweep {label}: {r['config']} {r['ms'] * 1e3:.1f} us {rate}")
    return out


def bench(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn()`` (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


_copy_bw: dict[str, float] = {}


def copy_bandwidth_gbps() -> float:
    """Device-to-device copy bandwidth (bytes read + written) / s, measured once per process."""
    if "v" not in _copy_bw:
        n = 1 << 29  # 1 GiB of bf16... 512 Mi elements * 2 B
        x = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        y = torch.empty_like(x)
        ms = bench(lambda: y.copy_(x), warmup=10, rep=50)
        _copy_bw["v"] = 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9
        del x, y
        torch.cuda.empty_cache()
    return _copy_bw["v"]


def rotating(make: Callable[[], tuple], bytes_per_set: int) -> Callable[[], tuple]:
    """Returns ``next_args()`` cycling through enough input copies to exceed L2."""
    copies = max(1, min(MAX_COPIES, math.ceil(L2_FLUSH_BYTES / max(bytes_per_set, 1))))
    sets = [make() for _ in range(copies)]
    state = {"i": 0}

    def next_args():
        state["i"] = (state["i"] + 1) % copies
        return sets[state["i"]]

    next_args.copies = copies  # type: ignore[attr-defined]
    return next_args


def try_bench(name: str, fn: Callable[[], object]) -> float | None:
    """Runs fn once (to surface errors / compile), then benchmarks; None when it errors."""
    try:
        fn()
        torch.cuda.synchronize()
        return bench(fn)
    except Exception as exc:  # a backend unavailable on this GPU/shape: skip it, say so
        print(f"  {name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
        return None


def eager_providers(regionc_fn: Callable, eager_fn: Callable, liger: Callable[[], Callable]) -> dict[str, Callable]:
    """Providers regionc, eager, inductor (``torch.compile(eager_fn)``) and liger (``liger()``, skipped if it raises)."""
    import regionc.ops  # noqa: F401

    ps = {
        "regionc": regionc_fn,
        "eager": eager_fn,
        "inductor": torch.compile(eager_fn, dynamic=False),
    }
    try:
        ps["liger"] = liger()
    except Exception:
        print("  liger_kernel not importable: skipped")
    return ps


def bandwidth_rows(shape: str, providers: dict[str, Callable], next_args, nbytes: int, copy_bw: float) -> list[dict]:
    """Times each provider on ``next_args()`` (see ``rotating``): one row each with ms, GB/s, % of copy bandwidth."""
    rows = []
    for name, fn in providers.items():
        ms = try_bench(name, lambda fn=fn: fn(*next_args()))
        gbps = None if ms is None else nbytes / (ms * 1e-3) / 1e9
        rows.append({"shape": shape, "provider": name, "ms": ms, "GBps": gbps,
                     "pct_copy_bw": None if gbps is None else 100 * gbps / copy_bw,
                     "input_copies": next_args.copies})
    return rows


def report(out_dir: str, op: str, rows: list[dict], metric: str, unit: str, **fields) -> dict:
    """Builds the payload ``{op, env, **fields, results}``, prints the table, writes JSON + plot."""
    payload = {"op": op, "env": env_info(), **fields, "results": rows}
    print_table(rows, metric)
    write_results(out_dir, op, payload, metric, unit)
    return payload


def bench_main(script: str, run: Callable[..., object], doc: str | None) -> None:
    """Command line of one bench script: ``--out DIR [--no-sweep]``, then ``run(DIR, sweep=...)``;
    exits 0 without CUDA."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--no-sweep", action="store_true", help="skip the launch-parameter sweeps")
    args = ap.parse_args()
    require_cuda(script)
    run(args.out, sweep=not args.no_sweep)


def write_results(out_dir: str, op: str, payload: dict, metric: str, unit: str) -> str:
    """Writes ``<out_dir>/<op>.json`` and ``<op>.png`` (grouped bars of ``metric`` per shape)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{op}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return path
    rows = payload["results"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(len(providers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(shapes)), 4.5))
    for i, p in enumerate(providers):
        vals = []
        for s in shapes:
            v = [r.get(metric) for r in rows if r["shape"] == s and r["provider"] == p]
            vals.append(v[0] if v and v[0] is not None else 0.0)
        ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=p)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels(shapes, fontsize=8)
    ax.set_ylabel(unit)
    if metric == "GBps" and payload.get("copy_bandwidth_GBps"):
        ax.axhline(payload["copy_bandwidth_GBps"], color="k", ls="--", lw=1, label="device copy")
    ax.set_title(f"{op} on {payload['env']['device']} (torch {payload['env']['torch']}, triton {payload['env']['triton']})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{op}.png"), dpi=120)
    plt.close(fig)
    return path


def print_table(rows: list[dict], metric: str) -> None:
    for r in rows:
        extra = f" {r['pct_copy_bw']:5.1f}% copy" if r.get("pct_copy_bw") is not None else ""
        val = r.get(metric)
        vs = "   n/a" if val is None else f"{val:8.1f}"
        ms = "n/a" if r.get("ms") is None else f"{r['ms'] * 1e3:9.1f} us"
        print(f"  {r['shape']:<34} {r['provider']:<16} {ms} {vs} {metric}{extra}")
