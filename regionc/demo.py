"""``python -m regionc.demo``: compile the built-in Llama-style decoder with regionc, cold then warm.

Each run is a fresh Python process (the way a server restarts): the first on an empty
cache directory (cold), the second on the same directory (warm), the third warm again
through ``regionc.compile`` (each repeated block traced once; it saves Dynamo's trace), the
fourth through ``regionc.compile`` once more (it loads that trace: no Dynamo at all). Each
prints the report, checks the output against eager and times the first call; the parent then
measures full-graph ``torch.compile(model)`` in a process of its own for comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time


def _build(args):
    import torch

    from regionc.models.llama import LlamaConfig, build_demo_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if device == "cpu" and args.dim is None:
        cfg = LlamaConfig.tiny(args.layers)
    else:
        cfg = LlamaConfig(n_layers=args.layers, dim=args.dim or 2048)
    model = build_demo_model(cfg, dtype=dtype, device=device)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    return model, tokens


def run_child(args) -> dict:
    """One process: compile, run once, compare with eager. Prints and returns a JSON result."""
    import torch

    import regionc

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, tokens = _build(args)
    with torch.no_grad():
        expected = model(tokens)  # before compiling: regionc.compile may compile the blocks in place
    if args.backend == "regionc":
        compiled = torch.compile(model, backend="regionc", options={"cache_dir": args.cache_dir})
    elif args.backend == "regionc.compile":
        compiled = regionc.compile(model, options={"cache_dir": args.cache_dir})
    else:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(args.cache_dir, "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(args.cache_dir, "triton"))
        compiled = torch.compile(model)
    with torch.no_grad():
        start = time.perf_counter()
        out = compiled(tokens)
        if tokens.is_cuda:
            torch.cuda.synchronize()
        first_call_s = time.perf_counter() - start
    error = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
    result = {"backend": args.backend, "first_call_s": round(first_call_s, 3), "rel_error": error}
    report = regionc.last_report() if args.backend.startswith("regionc") else None
    if report is not None:
        result["report"] = report.to_dict()
        print(report.summary())
    print("RESULT " + json.dumps(result))
    return result


def run_tp(args) -> int:
    """One rank of ``torchrun --nproc-per-node N -m regionc.demo --tp``: shard, compile, compare.

    All ranks share one cache dir (``--cache-dir``, else regionc's default root), so each piece
    is compiled by one rank and loaded by the others; run the command again for a warm start.
    """
    import torch
    import torch.distributed as dist

    import regionc
    from regionc.models.llama_tp import shard_llama

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        args.device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group("nccl" if use_cuda else "gloo")  # env:// from torchrun
    try:
        rank = dist.get_rank()
        model, tokens = _build(args)
        options = {"cache_dir": args.cache_dir} if args.cache_dir else {}
        compiled = torch.compile(shard_llama(model), backend="regionc", options=options)
        with torch.no_grad():
            start = time.perf_counter()
            out = compiled(tokens)
            first_call_s = time.perf_counter() - start
            expected = model(tokens)
        error = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
        pieces = regionc.last_report().pieces
        counts = {s: sum(1 for p in pieces if p.source == s) for s in ("compiled", "cache", "remote", "reused", "eager")}
        print(f"[rank {rank}/{dist.get_world_size()}] first call {first_call_s:.2f}s, rel. error vs unsharded "
              f"eager {error:.2e}, pieces {counts}")
        tolerance = 1e-4 if args.dtype == "float32" else 1e-1
        return 0 if error < tolerance else 1
    finally:
        dist.destroy_process_group()


def _spawn(args, backend: str, cache_dir: str) -> dict:
    cmd = [sys.executable, "-m", "regionc.demo", "--child", "--backend", backend, "--cache-dir", cache_dir,
           "--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq), "--dtype", args.dtype]
    if args.device:
        cmd += ["--device", args.device]
    if args.dim:
        cmd += ["--dim", str(args.dim)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo child ({backend}) failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("regionc: ")]
    for line in lines:
        print("   ", line)
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regionc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=None, help="hidden size (default: 64 on CPU, 2048 on CUDA)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a new temporary directory)")
    parser.add_argument("--skip-full-graph", action="store_true", help="do not time torch.compile(model)")
    parser.add_argument("--tp", action="store_true",
                        help="tensor parallel over torchrun's ranks: torchrun --nproc-per-node 2 -m regionc.demo --tp")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="regionc", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tp:
        return run_tp(args)
    if args.child:
        run_child(args)
        return 0

    # bf16 through 32 random layers drifts ~5e-2 from bf16 eager for any compiler (full-graph
    # Inductor measured 5.1e-2 on an H100): the check is against that scale, not fp32's.
    tolerance = 1e-4 if args.dtype == "float32" else 1e-1
    with tempfile.TemporaryDirectory(prefix="regionc-demo-") as tmp:
        cache_dir = args.cache_dir or os.path.join(tmp, "regionc")
        print(f"regionc demo: {args.layers}-layer Llama-style decoder, batch {args.batch} × {args.seq} tokens, "
              f"{args.dtype}, cache {cache_dir}")
        results = {}
        for phase, backend in (("cold", "regionc"), ("warm", "regionc"), ("warm, traced once", "regionc.compile"),
                               ("warm, saved trace", "regionc.compile")):
            how = "regionc.compile(model)" if backend == "regionc.compile" else "backend='regionc'"
            print(f"[{phase}] new process, {how}")
            results[phase] = _spawn(args, backend, cache_dir)
        if not args.skip_full_graph:
            print("[full graph] new process, torch.compile(model), empty caches")
            results["full_graph"] = _spawn(args, "inductor", os.path.join(tmp, "full-graph"))
    print()
    print(f"{'run':<18} {'first call (s)':>15} {'Dynamo trace (s)':>17} {'rel. error vs eager':>20}")
    # a run that loaded a saved trace ran no Dynamo: its trace time is 0
    ok = True
    for name, result in results.items():
        ok &= result["rel_error"] < tolerance
        report = result.get("report", {})
        trace = report.get("phases_s", {}).get("trace")
        if report.get("trace_source", "").startswith("saved trace"):
            trace = 0.0
        trace_text = f"{trace:.2f}" if trace is not None else "-"
        print(f"{name:<18} {result['first_call_s']:>15.2f} {trace_text:>17} {result['rel_error']:>20.2e}")
    compiled_warm = 0
    for name in ("warm", "warm, traced once", "warm, saved trace"):
        warm = results[name]["report"]
        compiled = sum(1 for p in warm["pieces"] if p["source"] == "compiled")
        compiled_warm += compiled
        how = f" ({warm['trace_source']})" if warm.get("trace_source") else ""
        print(f"{name}: compiled {compiled} piece(s), loaded {warm['cache']['hits']} from the cache{how}")
    print("output matches eager" if ok else f"MISMATCH: relative error above {tolerance}")
    return 0 if ok and compiled_warm == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
