"""Shared helpers for the kernel microbenchmarks: CUDA check, copy bandwidth, do_bench with
rotated inputs (so small shapes are not measured out of L2), result JSON and bar plots."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for the tests' fake driver
from tests.ops.sm90_target import FakeSm90Driver  # noqa: E402

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


def copies_for(bytes_per_set: int) -> int:
    """Input copies that together pass ``L2_FLUSH_BYTES`` (at most ``MAX_COPIES``)."""
    return max(1, min(MAX_COPIES, math.ceil(L2_FLUSH_BYTES / max(bytes_per_set, 1))))


def rotating(make: Callable[[], tuple], bytes_per_set: int) -> Callable[[], tuple]:
    """Returns ``next_args()`` cycling through enough input copies to exceed L2."""
    copies = copies_for(bytes_per_set)
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


def report(out_dir: str, op: str, rows: list[dict], metric: str, unit: str, *, panels: bool = False,
           **fields) -> dict:
    """Builds the payload ``{op, env, **fields, results}``, prints the table, writes JSON + plot
    (``panels``: one panel per shape, each on its own scale)."""
    payload = {"op": op, "env": env_info(), **fields, "results": rows}
    print_table(rows, metric)
    write_results(out_dir, op, payload, metric, unit, panels=panels)
    return payload


def bench_main(script: str, run: Callable[..., object], doc: str | None, *,
               cpu_host_overhead: Callable[[], object] | None = None) -> None:
    """Command line of one bench script: ``--out DIR [--no-sweep]``, then ``run(DIR, sweep=...)``;
    exits 0 without CUDA. Scripts given ``cpu_host_overhead`` also take ``--cpu-host-overhead``
    (no GPU needed)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--no-sweep", action="store_true", help="skip the launch-parameter sweeps")
    if cpu_host_overhead is not None:
        ap.add_argument("--cpu-host-overhead", action="store_true",
                        help="CPU only: Python cost per op call, Triton's compiler and C launcher stubbed")
    args = ap.parse_args()
    if cpu_host_overhead is not None and args.cpu_host_overhead:
        cpu_host_overhead()
        return
    require_cuda(script)
    run(args.out, sweep=not args.no_sweep)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def timed_row(shape: str, provider: str, fn: Callable[[], object], nbytes: int, copy_bw: float, copies: int,
              **extra) -> dict:
    """One bandwidth row; a failure is recorded in ``error`` (and printed), never raised."""
    row = {"shape": shape, "provider": provider, **extra, "ms": None, "GBps": None, "pct_copy_bw": None,
           "input_copies": copies}
    try:
        fn()
        torch.cuda.synchronize()
        row["ms"] = ms = bench(fn)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"  {shape} {provider} {extra}: failed ({row['error']})")
        return row
    row["GBps"] = nbytes / (ms * 1e-3) / 1e9
    row["pct_copy_bw"] = 100 * row["GBps"] / copy_bw
    return row


def write_results(out_dir: str, op: str, payload: dict, metric: str, unit: str, *, panels: bool = False) -> str:
    """Writes ``<out_dir>/<op>.json`` and ``<op>.png``: grouped bars of ``metric`` per shape, or with
    ``panels`` one horizontal-bar panel per shape."""
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
    if panels:
        _plot_panels(out_dir, op, payload, metric, unit, plt)
        return path
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(len(providers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(providers) * len(shapes) + 2), 4.5))
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


def _plot_panels(out_dir: str, op: str, payload: dict, metric: str, unit: str, plt) -> None:
    """One horizontal-bar panel per shape (its own scale), a bar per provider with its value; rows
    with an error say so."""
    rows = payload["results"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    ncol = min(3, len(shapes))
    nrow = -(-len(shapes) // ncol)
    per = max(sum(1 for r in rows if r["shape"] == s) for s in shapes)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 0.28 * per * nrow + 1.2 * nrow), squeeze=False)
    for ax, shape in zip(axes.flat, shapes):
        rs = [r for r in rows if r["shape"] == shape]
        names = [r["provider"] for r in rs]
        vals = [r.get(metric) or 0.0 for r in rs]
        colors = ["tab:blue" if r["provider"].startswith("regionc") else "tab:gray" for r in rs]
        ax.barh(range(len(rs)), vals, color=colors)
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        top = max(vals) if any(vals) else 1.0
        for i, (r, v) in enumerate(zip(rs, vals)):
            txt = "error" if r.get("error") else ("n/a" if r.get(metric) is None else f"{v:.0f}")
            if r.get("ms") is not None:
                txt += f"  {r['ms'] * 1e3:.1f} us"
            ax.text(v + 0.01 * top, i, txt, va="center", fontsize=6)
        if metric == "GBps" and payload.get("copy_bandwidth_GBps") and top > 0.3 * payload["copy_bandwidth_GBps"]:
            ax.axvline(payload["copy_bandwidth_GBps"], color="k", ls="--", lw=0.8)
        ax.set_xlim(0, top * 1.25)
        ax.set_title(shape, fontsize=8)
        ax.set_xlabel(unit, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    env = payload["env"]
    fig.suptitle(f"{op} on {env['device']} (torch {env['torch']}, triton {env['triton']}); dashed = device copy",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{op}.png"), dpi=110)
    plt.close(fig)


def plot_lines(path: str, rows: list[dict], panel: Callable[[dict], str], x: str, xlabel: str, ylabel: str,
               copy_bw: float, title: str) -> None:
    """GB/s against ``x`` (log 2), one line per provider, one panel per ``panel(row)``, the device copy
    bandwidth dashed; nothing (a line printed) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    rows = [r for r in rows if "GBps" in r]
    panels = list(dict.fromkeys(panel(r) for r in rows))
    if not panels:
        return
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        for provider in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted((r[x], r["GBps"]) for r in rows if r["provider"] == provider and panel(r) == name)
            if pts:
                ax.plot([p for p, _ in pts], [g for _, g in pts], marker="o", ms=3, label=provider)
        ax.axhline(copy_bw, color="k", ls="--", lw=0.8, label="device copy")
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: list[dict], metric: str) -> None:
    for r in rows:
        extra = f" {r['pct_copy_bw']:5.1f}% copy" if r.get("pct_copy_bw") is not None else ""
        val = r.get(metric)
        vs = "   n/a" if val is None else f"{val:8.1f}"
        ms = "n/a" if r.get("ms") is None else f"{r['ms'] * 1e3:9.1f} us"
        err = f"  ERROR {r['error']}" if r.get("error") else ""
        host = f"  host {r['host_us']:.2f} us/call" if r.get("host_us") is not None else ""
        print(f"  {r['shape']:<34} {r['provider']:<30} {ms} {vs} {metric}{extra}{host}{err}")


# --------------------------------------------------------------------------------------
# host cost of a launch, measured on a CPU machine (no GPU): Triton's real JIT launch path with
# the compiler and the C launcher replaced by stubs
# --------------------------------------------------------------------------------------


def _stub_compiled(num_warps: int):
    """A ``CompiledKernel`` (real class, so the JIT's ``launch_metadata`` runs its real code) whose
    launcher is a Python no-op: what a launch costs beyond it (the C launcher) is left out."""
    from collections import namedtuple

    from triton.compiler.compiler import CompiledKernel

    ck = object.__new__(CompiledKernel)
    meta = namedtuple("KernelMetadata", ["num_warps", "num_ctas", "shared", "name"])(num_warps, 1, 0, "stub")
    ck.metadata = meta
    ck.packed_metadata = (num_warps, 1, 0)
    ck.src = None
    ck.hash = "stub"
    ck.name = "stub"
    ck.module = "stub"  # loaded: _init_handles returns at once
    ck.function = 1
    ck.n_regs, ck.n_spills, ck.n_max_threads = 32, 0, 1024
    ck._run = lambda *args: None
    return ck


def stub_triton_launches(*kernels) -> None:
    """Installs the fake driver and makes every compile of ``kernels`` return a stub (see
    ``_stub_compiled``). For this process only; never with TRITON_INTERPRET=1."""
    from triton.runtime import driver

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("stub_triton_launches: unset TRITON_INTERPRET (it measures the compiled-kernel path)")
    driver.set_active(FakeSm90Driver())
    for k in kernels:
        def fake_compile(key, signature, device, constexprs, options, *rest, k=k):
            ck = _stub_compiled(options.num_warps)
            k.device_caches[device][0][key] = ck
            return ck

        k._do_compile = fake_compile


def time_calls_us(fn: Callable[[], object], n: int = 20000, repeats: int = 7) -> float:
    """Median over ``repeats`` of the mean wall-clock microseconds per ``fn()`` over ``n`` calls."""
    import time

    for _ in range(min(n, 2000)):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    out.sort()
    return out[len(out) // 2]


def host_us_per_call(fn: Callable[[], object], n: int = 2000, repeats: int = 5) -> float:
    """On the GPU: host microseconds per ``fn()`` call (median of ``repeats`` loops of ``n``
    calls, no synchronisation inside a loop; for kernels shorter than their launch the device
    keeps up, so this is the host's enqueue cost)."""
    torch.cuda.synchronize()
    us = time_calls_us(fn, n=n, repeats=repeats)
    torch.cuda.synchronize()
    return us
