"""Experiment: do launch variants of the memory-bound RMSNorm and RoPE kernels beat regionc's plain
launch (one program per tile through the Triton JIT)?

``torch.ops.regionc.rms_norm`` and ``torch.ops.regionc.rope`` launch their kernels the plain way
(``regionc/ops/rms_norm.py``, ``rope.py``). This script carries its own experimental copy of the
RMSNorm kernel with the choices the package once offered as ``VARIANTS`` and dropped:

* ``persistent``: a grid of one wave (as many programs per SM as the compiled kernel's register and
  shared-memory use lets be resident, or ``programs_per_sm``), each program looping over row blocks
  with the weight loaded once and the next block's loads issued before the current block is reduced;
* ``evict``: L2 eviction hints, ``"loads"`` (x and residual ``evict_first``, the weight loaded first
  and ``evict_last``) or ``"all"`` (the stores ``evict_first`` too);
* ``cached`` (rows ``op+cached``, both ops): a repeat call launches the kernel the JIT compiled on the
  first call straight through its launcher (``regionc.ops._utils.CompiledLaunch``), skipping the
  JIT's per-call argument binding. Same kernel and grid as the op, so only host time can differ.

RMSNorm: every variant, the op and a plain copy of the same bytes on the ``bench_rms_norm.py`` shapes
(bf16; do_bench medians with inputs rotated through >= 256 MiB; GB/s of x read + weight read + y
written), plus, at the decode shape 8x4096, device time per call inside a CUDA graph and host
microseconds per call. RoPE: the op against its cached launch at the decode shape (8 tokens, 32/8
heads, D128, both layouts), the only case where a RoPE variant won. Each variant's output is checked
against the torch reference before it is timed. Needs a CUDA GPU (exits 0 without one).

The earlier measurement is the sweep ``bench_rms_norm.py`` / ``bench_rope.py`` ran while the variants
were in the package (H100, torch 2.11.0+cu130, triton 3.6.0, 2026-11-25):
``benchmarks/results/rms_norm/h100-2026-11-25.json`` (and ``.png``),
``benchmarks/results/rope/h100-2026-11-25.json`` (and ``.png``), console output in
``benchmarks/results/kernels/h100-2026-11-25-norm-rope.log``. There no RMSNorm variant was more than
0.8% faster than the plain launch in geomean GB/s over the three bandwidth shapes (the persistent ones
1.5-7% slower) or more than 0.11 us faster at 8x4096 (eviction hints inside a CUDA graph: 1.69 against
1.80 us; the cached launch cut a call's host time from 44 to 18 us but was 1.2 us slower eagerly). No
RoPE variant beat the plain launch's geomean GB/s; RoPE's cached launch cut an eager 8-token call from
38-48 us to about 5 us but not the time inside a CUDA graph (plain 1.5-1.6 us, the variants 1.6-1.7).
The RoPE persistent / eviction-hint kernel is in git history (``regionc/ops/rope.py`` before the
variants were dropped).

    python benchmarks/experiments/norm_rope_launch_variants.py --out DIR [--no-rope]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

EPS = 1e-6
RMS_SHAPES = [(4096, 4096), (16384, 4096), (32768, 8192)]  # bandwidth-bound
RMS_DECODE = (8, 4096)  # latency-bound
ROPE_DECODE = (8, 1, 32, 8, 128)  # (B, S, Hq, Hk, D)


@dataclass(frozen=True)
class Variant:
    """One launch choice of the experimental RMSNorm kernel (tiling from the op's heuristic)."""

    persistent: bool = False
    programs_per_sm: int = 0  # persistent grids: 0 = as many as are resident
    evict: str = ""  # "" | "loads" | "all"


#: Variant.evict -> eviction policies of (streamed loads, the re-read weight, stores)
HINTS = {"": ("", "", ""), "loads": ("evict_first", "evict_last", ""), "all": ("evict_first", "evict_last", "evict_first")}
#: persistent programs per SM when the compiled kernel's resources cannot be read
DEFAULT_PROGRAMS_PER_SM = 4

VARIANTS = {
    "plain": Variant(),  # this file's copy of the op's launch: must match the op
    "evict-loads": Variant(evict="loads"),
    "evict": Variant(evict="all"),
    "persistent": Variant(persistent=True),
    "persistent+evict": Variant(persistent=True, evict="all"),
    "persistent2+evict": Variant(persistent=True, programs_per_sm=2, evict="all"),
}


try:  # the kernel needs triton; the script exits before using it without a GPU
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES: tl.constexpr, LD_EV: tl.constexpr):
        rows64 = rows.to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=LD_EV)
        if HAS_RES:
            r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0, eviction_policy=LD_EV)
        else:
            r = x
        return x, r

    @triton.jit
    def _finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask,
                HAS_RES: tl.constexpr, W_LOADED: tl.constexpr, W_EV: tl.constexpr, ST_EV: tl.constexpr):
        rows64 = rows.to(tl.int64)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        if HAS_RES:
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(RES_OUT + rows64[:, None] * N + cols[None, :], x, mask=mask, eviction_policy=ST_EV)
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / N + eps)
        if not W_LOADED:
            w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
        y = xf * rstd[:, None] * w[None, :]
        tl.store(Y + rows64[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask, eviction_policy=ST_EV)

    @triton.jit
    def rms_norm_variant_kernel(X, R, W, Y, RES_OUT, stride_x, stride_r, n_rows, N, eps,
                                HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                                PERSISTENT: tl.constexpr, W_FIRST: tl.constexpr,
                                LD_EV: tl.constexpr, W_EV: tl.constexpr, ST_EV: tl.constexpr):
        """Rows held in registers (BLOCK_N >= N). PERSISTENT=False: program i owns row block i.
        PERSISTENT=True: program i owns row blocks i, i + grid, ...; the weight is loaded once and
        the next block's x (and residual) is loaded before the current block is reduced."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        col_mask = cols < N
        if PERSISTENT:
            nprog = tl.num_programs(0)
            w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
            n_blocks = tl.cdiv(n_rows, ROWS)
            rows = pid * ROWS + tl.arange(0, ROWS)
            x, r = _load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
            for _blk in range(pid, n_blocks, nprog):
                nrows = rows + nprog * ROWS
                xn, rn = _load(X, R, nrows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
                _finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask, HAS_RES, True, W_EV, ST_EV)
                x = xn
                r = rn
                rows = nrows
        else:
            if W_FIRST:
                w = tl.load(W + cols, mask=col_mask, other=0.0, eviction_policy=W_EV).to(tl.float32)
            else:
                w = 0.0  # loaded after the reduction by _finish
            rows = pid * ROWS + tl.arange(0, ROWS)
            x, r = _load(X, R, rows, stride_x, stride_r, n_rows, cols, col_mask, HAS_RES, LD_EV)
            _finish(x, r, w, W, Y, RES_OUT, rows, n_rows, N, eps, cols, col_mask, HAS_RES, W_FIRST, W_EV, ST_EV)


_RESIDENT: dict[tuple, int] = {}


def resident_programs(kernel, args: tuple, num_warps: int, device_index: int) -> int | None:
    """Programs of this kernel (compiled for ``args``) that fit on one SM at once, from its register
    and shared-memory use (as in Triton's fused-softmax tutorial); None where that cannot be read."""
    if device_index < 0:  # CPU tensors (interpreter)
        return None
    try:
        compiled = kernel.warmup(*args, grid=(1,), num_warps=num_warps)
        if hasattr(compiled, "result"):
            compiled = compiled.result()
        init = getattr(compiled, "_init_handles", None)
        if init is not None:
            init()
        n_regs = int(compiled.n_regs)
        shared = int(getattr(compiled.metadata, "shared", 0) or 0)
    except Exception as exc:
        print(f"  cannot read the kernel's register use ({exc}); {DEFAULT_PROGRAMS_PER_SM} programs per SM")
        return None
    props = torch.cuda.get_device_properties(device_index)
    regs_sm = getattr(props, "regs_per_multiprocessor", 65536)
    threads_sm = getattr(props, "max_threads_per_multi_processor", 2048)
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    regs_warp = -(-max(n_regs, 1) * 32 // 256) * 256  # registers are allocated per warp, 256 at a time
    by_regs = (regs_sm // regs_warp) // num_warps
    by_threads = threads_sm // (32 * num_warps)
    by_smem = smem_sm // shared if shared else 32
    return max(1, min(by_regs, by_threads, by_smem, 32))


def rms_norm_variant(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None, name: str,
                     programs: int | None = None):
    """The experimental kernel under variant ``name`` on contiguous inputs whose rows fit in registers
    (tiling and num_warps from the op's heuristic; ``programs`` sets a persistent grid's size).
    Returns ``y`` or ``(y, x + residual)``."""
    from regionc.ops import rms_norm as R
    from regionc.ops._utils import sm_count

    kernel = rms_norm_variant_kernel
    v = VARIANTS[name]
    n = x.shape[-1]
    m = x.numel() // n
    block, rows, warps, loop = R._launch_params(m, n, sm_count(x))
    if loop:
        raise ValueError(f"rows of {n} take the op's chunked path, which has no variants")
    y = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else y
    r = residual if residual is not None else x
    args = (x, r, w, y, res_out, n, n, m, n, float(eps), residual is not None, rows, block, v.persistent,
            bool(v.evict), *HINTS[v.evict])
    grid = -(-m // rows)
    if v.persistent and programs:
        grid = min(grid, programs)
    elif v.persistent:
        key = (name, x.dtype, w.dtype, residual is not None, rows, block, warps, x.get_device())
        per_sm = _RESIDENT.get(key)
        if per_sm is None:
            found = resident_programs(kernel, args, warps, x.get_device()) or v.programs_per_sm or DEFAULT_PROGRAMS_PER_SM
            per_sm = _RESIDENT[key] = min(found, v.programs_per_sm) if v.programs_per_sm else found
        grid = min(grid, per_sm * sm_count(x))
    kernel[(grid,)](*args, num_warps=warps)
    return y if residual is None else (y, res_out)


# --------------------------------------------------------------------------------------
# cached launch of the op's own kernel: record the JIT launch once, then call the compiled
# kernel's launcher with the same arguments (new inputs and fresh outputs in their slots)
# --------------------------------------------------------------------------------------


class _Recorder:
    """Stands in for a module's Triton kernel for one call: launches the real one, keeps what it got."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **options):
            compiled = self.kernel[grid](*args, **options)
            self.calls.append((grid, args, options, compiled))
            return compiled

        return launch


def cached_launch(module, kernel_name: str, op_call, inputs: tuple, outputs_of):
    """``fn(*new_inputs)`` that launches the kernel ``op_call(*inputs)`` compiled, through its
    launcher, with the tensors of ``inputs`` replaced by ``new_inputs`` and the op's outputs (the
    tensors ``outputs_of(op_call(*inputs))``) replaced by fresh ``empty_like`` ones, which it returns."""
    from regionc.ops._utils import CompiledLaunch, cuda_stream

    rec = _Recorder(getattr(module, kernel_name))
    setattr(module, kernel_name, rec)
    try:
        outs = outputs_of(op_call(*inputs))
    finally:
        setattr(module, kernel_name, rec.kernel)
    torch.cuda.synchronize()
    ((grid,), args, options, compiled) = rec.calls[0]
    ent = CompiledLaunch.make(rec.kernel, compiled, grid, options["num_warps"])
    if ent is None:
        raise RuntimeError("the launch returned no compiled kernel to call directly")
    in_slots = [[i for i, a in enumerate(args) if a is t] for t in inputs]
    out_slots = [[i for i, a in enumerate(args) if a is t] for t in outs]
    dev = inputs[0].get_device()

    def run(*new_inputs):
        a = list(args)
        for slots, t in zip(in_slots, new_inputs):
            for i in slots:
                a[i] = t
        fresh = [torch.empty_like(o) for o in outs]
        for slots, t in zip(out_slots, fresh):
            for i in slots:
                a[i] = t
        ent.run(grid, 1, 1, cuda_stream(dev), ent.function, ent.meta, None, None, None, *a)
        return fresh

    return run


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def rms_rows(dtype=torch.bfloat16) -> list[dict]:
    import _common as C

    from regionc.ops import rms_norm as R

    bw = C.copy_bandwidth_gbps()
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for M, N in RMS_SHAPES + [RMS_DECODE]:
        lab = f"{M}x{N}"
        decode = (M, N) == RMS_DECODE
        nbytes = (2 * M * N + N) * torch.finfo(dtype).bits // 8
        nxt = C.rotating(lambda: (torch.randn(M, N, device="cuda", dtype=dtype),
                                  torch.randn(N, device="cuda", dtype=dtype)), nbytes)
        x0, w0 = (torch.randn(M, N, device="cuda", dtype=dtype, generator=gen),
                  torch.randn(N, device="cuda", dtype=dtype, generator=gen))
        r0 = torch.randn_like(x0)
        ref, (ref_f, ref_r) = R.rms_norm_reference(x0, w0, EPS), R.fused_add_rms_norm_reference(x0, r0, w0, EPS)
        fns = {"op": lambda x, w: torch.ops.regionc.rms_norm(x, w, EPS)}
        fused = {"op": lambda x, w, r: torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)}
        for name in VARIANTS:
            fns[name] = lambda x, w, name=name: rms_norm_variant(x, w, EPS, None, name)
            fused[name] = lambda x, w, r, name=name: rms_norm_variant(x, w, EPS, r, name)
        try:
            plain = cached_launch(R, "_rms_norm_fwd_kernel", lambda x, w: R.rms_norm_triton(x, w, EPS), (x0, w0),
                                  lambda y: (y,))
            res = cached_launch(R, "_rms_norm_fwd_kernel", lambda x, w, r: R.rms_norm_triton(x, w, EPS, r),
                                (x0, w0, r0), lambda o: o)
            fns["op+cached"] = lambda x, w: plain(x, w)[0]
            fused["op+cached"] = lambda x, w, r: res(x, w, r)
        except Exception as exc:
            rows.append({"op": "rms_norm", "shape": lab, "variant": "op+cached", "error": _error(exc)})
        for name, fn in fns.items():
            row = {"op": "rms_norm", "shape": lab, "variant": name}
            try:
                out_f = fused[name](x0, w0, r0)
                row["rel_err"] = max(C.rel_err(fn(x0, w0), ref), *(C.rel_err(o, e) for o, e in zip(out_f, (ref_f, ref_r))))
                if row["rel_err"] > 1e-2:
                    raise AssertionError(f"wrong result: rel err {row['rel_err']:.3g}")
                row["ms"] = C.bench(lambda fn=fn: fn(*nxt()))
                row["GBps"] = nbytes / (row["ms"] * 1e-3) / 1e9
                row["pct_copy_bw"] = 100 * row["GBps"] / bw
                if decode:
                    row["graph_ms"] = C.bench_graph(lambda fn=fn: fn(x0, w0))
                    row["host_us"] = C.host_us_per_call(lambda fn=fn: fn(x0, w0))
            except Exception as exc:  # a variant that fails is recorded, the rest still run
                row["error"] = _error(exc)
            rows.append(row)
            print_row(row)
        ms = C.bench(lambda: nxt()[0].clone())
        rows.append({"op": "rms_norm", "shape": lab, "variant": "copy", "ms": ms,
                     "GBps": 2 * M * N * torch.finfo(dtype).bits // 8 / (ms * 1e-3) / 1e9})
        print_row(rows[-1])
    return rows


def rope_rows(dtype=torch.bfloat16) -> list[dict]:
    import _common as C

    from regionc.ops import rope as P

    B, S, Hq, Hk, D = ROPE_DECODE
    rows = []
    for layout in ("bhsd", "bshd"):
        lab = f"{B}x{S} tok, {Hq}/{Hk}h d{D} {layout}"
        shp = (lambda h: (B, h, S, D)) if layout == "bhsd" else (lambda h: (B, S, h, D))
        ang = torch.rand(B, S, D, device="cuda") * 6.28
        args = (torch.randn(shp(Hq), device="cuda", dtype=dtype), torch.randn(shp(Hk), device="cuda", dtype=dtype),
                ang.cos().to(dtype), ang.sin().to(dtype))
        ref = P.rope_reference(*args, "rotate_half", layout)
        fns = {"op": lambda *a, layout=layout: torch.ops.regionc.rope(*a, "rotate_half", layout)}
        try:
            fns["op+cached"] = cached_launch(P, "_rope_fwd_kernel", lambda *a, layout=layout: P.rope_triton(
                *a, "rotate_half", layout), args, lambda o: o)
        except Exception as exc:
            rows.append({"op": "rope", "shape": lab, "variant": "op+cached", "error": _error(exc)})
        for name, fn in fns.items():
            row = {"op": "rope", "shape": lab, "variant": name}
            try:
                row["rel_err"] = max(C.rel_err(o, e) for o, e in zip(fn(*args), ref))
                if row["rel_err"] > 1e-2:
                    raise AssertionError(f"wrong result: rel err {row['rel_err']:.3g}")
                row["ms"] = C.bench(lambda fn=fn: fn(*args))
                row["graph_ms"] = C.bench_graph(lambda fn=fn: fn(*args))
                row["host_us"] = C.host_us_per_call(lambda fn=fn: fn(*args))
            except Exception as exc:
                row["error"] = _error(exc)
            rows.append(row)
            print_row(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per RMSNorm variant: geomean GB/s over the bandwidth shapes relative to the op, and the
    decode shape's eager and in-graph microseconds."""
    out = {}
    for v in dict.fromkeys(r["variant"] for r in rows if r["op"] == "rms_norm"):
        gbps = [r.get("GBps") for r in rows if r["op"] == "rms_norm" and r["variant"] == v
                and r["shape"] != "x".join(map(str, RMS_DECODE))]
        dec = next((r for r in rows if r["op"] == "rms_norm" and r["variant"] == v
                    and r["shape"] == "x".join(map(str, RMS_DECODE))), {})
        if gbps and all(gbps):
            out[v] = {"geomean_GBps": round(math.exp(sum(map(math.log, gbps)) / len(gbps)), 1)}
            out[v]["decode_us"] = round(dec["ms"] * 1e3, 2) if dec.get("ms") else None
            out[v]["decode_graph_us"] = round(dec["graph_ms"] * 1e3, 2) if dec.get("graph_ms") else None
    base = out.get("op", {}).get("geomean_GBps")
    for v in out:
        if base:
            out[v]["vs_op_pct"] = round(100 * (out[v]["geomean_GBps"] / base - 1), 2)
    return out


def print_row(r: dict) -> None:
    us = f"{r['ms'] * 1e3:8.1f} us" if r.get("ms") else "     n/a   "
    gb = f"{r['GBps']:7.0f} GB/s" if r.get("GBps") else ""
    extra = f"  in a graph {r['graph_ms'] * 1e3:.2f} us" if r.get("graph_ms") else ""
    extra += f"  host {r['host_us']:.2f} us/call" if r.get("host_us") else ""
    err = f"  ERROR {r['error']}" if r.get("error") else ""
    print(f"  {r['op']:<8} {r['shape']:<28} {r['variant']:<18} {us} {gb}{extra}{err}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-rope", action="store_true", help="RMSNorm only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return 0
    import _common as C

    import regionc.ops  # noqa: F401  (registers the ops)

    with torch.inference_mode():
        rows = rms_rows()
        if not args.no_rope:
            rows += rope_rows()
    payload = {"env": C.env_info(), "copy_bandwidth_GBps": C.copy_bandwidth_gbps(),
               "variants": {k: asdict(v) for k, v in VARIANTS.items()}, "rms_norm_summary": summary(rows),
               "results": rows}
    for v, s in payload["rms_norm_summary"].items():
        print(f"  rms_norm {v:<18} {s}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "norm_rope_launch_variants.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
