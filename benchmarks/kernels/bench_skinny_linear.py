"""Linears over few rows (a decode step's tokens): ``torch.ops.regionc.skinny_linear`` against
cuBLAS as models call it, in weight bytes per second against the device copy bandwidth.

At a handful of rows a linear is a read of its weight; the time any kernel needs is the weight
bytes over the memory bandwidth. Groups are a decoder layer's projections (HF Llama 32 × 2048 with
8 KV heads, and Llama-3-8B's 4096 / 14336 / 8 KV heads): q/k/v and gate/up read one input, o and
down alone. Providers:

* ``regionc``: the op, one call per group at the split count the pass picks (``splits_for``). It
  writes fp32 partials; in a model their sum and the cast are loads in the consumer's kernel, so
  this is the op's share of a step;
* ``cublas``: ``F.linear`` per weight (what Inductor emits);
* ``regionc_swiglu`` (gate/up groups): ``torch.ops.regionc.skinny_swiglu``, both projections and
  the SwiGLU product in one launch, where ``regionc`` leaves the product to a pointwise kernel of
  its own (about 1.3 µs a layer inside a decode step's CUDA graph), not counted here;
* ``cublas_packed``: one ``F.linear`` over the group's weights concatenated once (vLLM's
  ``QKVParallelLinear`` / ``MergedColumnParallelLinear``: a packed copy of the weights, stale after
  an in-place update of the originals), a reference for what packing buys.

Each timing is device time in a CUDA graph of one call per weight copy, over enough copies to
pass 256 MiB, so every call reads its weights from HBM as in a model (a layer's weights are
far larger than L2). ``--sweep`` also times, at 8 and 32 rows, the kernel's launch configurations
(``config_sweep``: what ``ops.skinny_linear._config`` is chosen from) and split counts 1-8
(``split_sweep``: what ``TARGET_PROGRAMS`` is chosen from). Writes
``skinny_linear.json`` and ``skinny_linear.png`` (GB/s against rows, a panel per group).

    python benchmarks/kernels/bench_skinny_linear.py --out benchmarks/results/skinny_linear --sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

#: group name -> (K, [N per weight])
GROUPS = {
    "2048 qkv": (2048, [2048, 512, 512]),
    "2048 o": (2048, [2048]),
    "2048 gate_up": (2048, [8192, 8192]),
    "2048 down": (8192, [2048]),
    "4096 qkv": (4096, [4096, 1024, 1024]),
    "4096 o": (4096, [4096]),
    "4096 gate_up": (4096, [14336, 14336]),
    "4096 down": (14336, [4096]),
}
ROWS = (1, 8, 16, 32, 64)
SWEEP = {"block_n": (16, 32, 64), "block_k": (128, 256, 512), "stages": (3, 4), "warps": (4,)}
SPLITS = (1, 2, 4, 8)
SWEEP_ROWS = (8, 32)


def time_rotating(call, sets) -> float:
    """Device ms per call: one call per weight set captured in a CUDA graph, replayed."""
    it = itertools.cycle(sets)
    return C.bench_graph(lambda: call(*next(it)), calls=len(sets), replays=10)


def run(out_dir: str, groups: list[str], rows_list, sweep: bool, budget_s: float) -> dict:
    C.require_cuda("bench_skinny_linear")
    import regionc.ops  # noqa: F401  (registers torch.ops.regionc.*)
    from regionc.ops.skinny_linear import _config, skinny_linear_triton, splits_for

    op = torch.ops.regionc.skinny_linear
    copy_bw = C.copy_bandwidth_gbps()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device copy bandwidth: {copy_bw:.0f} GB/s, {sms} SMs")
    rows, sweeps, split_sweeps, skipped, errors = [], [], [], [], {}
    start = time.perf_counter()
    dt = torch.bfloat16
    for name in groups:
        k, ns = GROUPS[name]
        wbytes = sum(ns) * k * 2
        n_sets = max(2, C.copies_for(wbytes))
        torch.manual_seed(0)
        sets = [[torch.randn(n, k, device="cuda", dtype=dt) * 0.02 for n in ns] for _ in range(n_sets)]
        packed = [torch.cat(ws) for ws in sets]
        for m in rows_list:
            shape = f"{name} M{m}"
            if time.perf_counter() - start > budget_s:
                skipped.append(shape)
                continue
            x = torch.randn(m, k, device="cuda", dtype=dt)
            splits = splits_for(m, ns, k, most=8)
            providers = {
                "regionc": (lambda ws: op(x, ws, splits), [(ws,) for ws in sets]),
                "cublas": (lambda ws: [F.linear(x, w) for w in ws], [(ws,) for ws in sets]),
            }
            if len(ns) > 1:
                providers["cublas_packed"] = (lambda w: F.linear(x, w), [(w,) for w in packed])
            if name.endswith("gate_up"):
                providers["regionc_swiglu"] = (lambda ws: [torch.ops.regionc.skinny_swiglu(x, *ws)],
                                               [(ws,) for ws in sets])
            ref = [F.linear(x.float(), w.float()) for w in sets[0]]
            for provider, (call, args) in providers.items():
                row = {"shape": shape, "group": name, "provider": provider, "rows": m, "weight_bytes": wbytes,
                       "columns": sum(ns), "k": k}
                try:
                    ms = time_rotating(call, args)
                    row.update(ms=ms, GBps=wbytes / (ms * 1e-3) / 1e9)
                    row["pct_copy_bw"] = 100 * row["GBps"] / copy_bw
                    out = call(*args[0])
                    if provider == "regionc":
                        row.update(config=list(_config(m, k)), splits=splits)
                        out = [p.sum(0) for p in out]
                    refs = [F.silu(ref[0]) * ref[1]] if provider == "regionc_swiglu" else ref
                    row["rel_err"] = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(out, refs))
                except Exception as exc:  # recorded, the run goes on
                    errors[f"{shape} {provider}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    row["error"] = errors[f"{shape} {provider}"]
                rows.append(row)
                if "ms" in row:
                    print(f"{shape:20s} {provider:14s} {row['ms'] * 1e3:8.1f} us {row['GBps']:7.0f} GB/s "
                          f"({row['pct_copy_bw']:5.1f}% copy)")
            if sweep and m in SWEEP_ROWS:
                cases = [("config_sweep", (max(16, 1 << (m - 1).bit_length()), bn, bk, warps, stages), splits)
                         for bn, bk, stages, warps in itertools.product(*SWEEP.values())]
                cases += [("split_sweep", _config(m, k), s) for s in SPLITS]
                best = {}
                for table, cfg, s in cases:
                    entry = {"shape": shape, "config": list(cfg), "splits": s}
                    try:
                        ms = time_rotating(lambda ws: skinny_linear_triton(x, ws, s, config=cfg),
                                           [(ws,) for ws in sets])
                    except Exception as exc:  # e.g. out of shared memory for this tile
                        (sweeps if table == "config_sweep" else split_sweeps).append({**entry, "error": str(exc)[:120]})
                        continue
                    entry.update(ms=ms, GBps=wbytes / (ms * 1e-3) / 1e9)
                    (sweeps if table == "config_sweep" else split_sweeps).append(entry)
                    if table not in best or ms < best[table][0]:
                        best[table] = (ms, cfg, s)
                for table, (ms, cfg, s) in best.items():
                    print(f"{shape:20s} {table}: best {cfg} splits {s}: {ms * 1e3:.1f} us "
                          f"{wbytes / (ms * 1e-3) / 1e9:.0f} GB/s")
        del sets, packed
        torch.cuda.empty_cache()
    payload = {"op": "skinny_linear", "env": C.env_info(), "copy_bandwidth_GBps": copy_bw, "sms": sms,
               "timing": "CUDA graph replay over rotated weight copies (HBM reads), device ms per call",
               "summary": summarize(rows), "skipped": skipped, "errors": errors, "results": rows,
               "config_sweep": sweeps, "split_sweep": split_sweeps, "seconds": round(time.perf_counter() - start, 1)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "skinny_linear.json"), "w") as f:
        json.dump(payload, f, indent=2)
    plot(out_dir, payload)
    print(f"wrote {out_dir}/skinny_linear.json ({payload['seconds']} s)")
    return payload


def summarize(rows: list[dict]) -> dict:
    """Per shape: cuBLAS time over regionc's (>1: regionc faster)."""
    by = {(r["shape"], r["provider"]): r.get("ms") for r in rows}
    out = {}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        mine = by.get((shape, "regionc"))
        if mine:
            out[shape] = {f"vs_{p}": round(by[shape, p] / mine, 2) for p in ("cublas", "cublas_packed", "regionc_swiglu")
                          if by.get((shape, p))}
    return out


def plot(out_dir: str, payload: dict) -> None:
    env = payload["env"]
    C.plot_lines(os.path.join(out_dir, "skinny_linear.png"), payload["results"], lambda r: r["group"], "rows",
                 "rows (tokens)", "weight GB/s", payload["copy_bandwidth_GBps"],
                 f"linears over few rows, bf16, on {env['device']} (torch {env['torch']}, triton {env['triton']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/skinny_linear")
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS), metavar="GROUP",
                    type=lambda name: name.replace("_", " ", 1), help="e.g. 2048_gate_up (a shell word) for '2048 gate_up'")
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    ap.add_argument("--sweep", action="store_true", help="also time launch configurations and split counts at 8 and 32 rows")
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the remaining shapes after this long")
    args = ap.parse_args()
    run(args.out, args.groups, args.rows, args.sweep, args.budget_s)


if __name__ == "__main__":
    main()
