"""Attention forward microbenchmark (bf16): regionc's kernels (native GQA) vs SDPA
with the flash, cuDNN and efficient backends and, for GQA shapes, the eager model path
(repeat_interleave + SDPA default). TFLOP/s = 4*B*Hq*Sq*Skv*D / t, halved when causal.

Providers (rows of the JSON / bars of the PNG):

* ``regionc[ptr]``, ``regionc[tma]``: ``attention_triton(variant=...)``, each autotuned over its
  own config list (``PTR_CONFIGS`` / ``TMA_CONFIGS`` in regionc/ops/attention.py).
* ``regionc[hopper]``: the warp-specialised Gluon kernel (regionc/ops/attention_hopper.py), one
  fixed config per head dim; an error row off Hopper.
* ``regionc``: the op as models call it (``torch.ops.regionc.attention``): the Hopper kernel where
  it runs, else the Triton variant ``ATTENTION_VARIANT`` selects (recorded as ``op_variant_used``).
* ``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient`` (k/v repeated beforehand, not timed) and
  ``eager_repeat+sdpa`` (GQA shapes: the repeat is timed, as a model pays it).

The first call of each regionc provider per shape runs its autotuner (not timed); each regionc
row also has ``rel_err_vs_sdpa`` (‖out - SDPA‖ / ‖SDPA‖ in fp32: a fast wrong kernel is no win).
The autotuners' own timing of every config is recorded under ``autotune`` (per shape and
provider: the chosen config and each config's median ms), so no separate sweep is needed. A
provider that fails (compile error, unsupported GPU) is recorded with its error string under
``errors`` and the run goes on. ``summary`` has each regionc provider's speed relative to cuDNN
per shape (>1: faster), the faster variant per shape and the value to set ``ATTENTION_VARIANT``
to (the variant that wins every shape, else "auto").

Meant to finish in ~90 s on an H100 (``run_all.py`` runs it): the compiles dominate (lengths are
not specialised on, so the five shapes need only three kernel families); past ``BUDGET_S`` the
remaining ``regionc`` op rows are skipped (recorded as errors).

    python benchmarks/kernels/bench_attention.py --out benchmarks/results/kernels
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# (B, Hq, Hkv, S, D, causal, label) - TARGETS.md shapes, plus the Llama GQA block shape
SHAPES = [
    (4, 32, 32, 4096, 128, True, "B4 H32 S4096 D128 causal"),
    (4, 32, 32, 4096, 128, False, "B4 H32 S4096 D128 full"),
    (16, 32, 32, 1024, 64, True, "B16 H32 S1024 D64 causal"),
    (1, 24, 24, 4680, 128, False, "B1 H24 S4680 D128 full"),
    (1, 32, 8, 2048, 64, True, "B1 H32/8 S2048 D64 causal GQA"),
]
VARIANT_PROVIDERS = {"regionc[ptr]": "ptr", "regionc[tma]": "tma"}
BUDGET_S = 120.0  # after this many seconds, skip the remaining ``regionc`` op rows


def sdpa_backends():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name, be in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_cudnn", "CUDNN_ATTENTION"),
                     ("sdpa_efficient", "EFFICIENT_ATTENTION")):
        if hasattr(SDPBackend, be):
            out[name] = getattr(SDPBackend, be)
    return out, sdpa_kernel


def _err(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def timed(name: str, fn) -> tuple[float | None, str | None]:
    """(median ms, None), or (None, error string) when ``fn`` raises (first call or timing)."""
    try:
        fn()
        torch.cuda.synchronize()
        return C.bench(fn), None
    except Exception as exc:  # a backend/variant unavailable on this GPU or shape: record, go on
        msg = _err(exc)
        print(f"  {name}: failed ({msg})")
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None, msg


def config_dict(cfg) -> dict:
    d = dict(cfg.kwargs)
    d.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if getattr(cfg, "maxnreg", None) is not None:
        d["maxnreg"] = cfg.maxnreg
    return d


def tuner_record(tuner, before: set, flops: float) -> dict | None:
    """The autotuner's decision for the key it just tuned: chosen config and every config's time."""
    new = [key for key in tuner.cache if key not in before]
    if not new:
        return None
    rec = {"chosen": config_dict(tuner.cache[new[-1]]), "configs": []}
    timings = getattr(tuner, "configs_timings", None) or {}
    for cfg, t in timings.items():
        ms = t[0] if isinstance(t, (list, tuple)) else t
        ms = None if ms is None or not math.isfinite(ms) else float(ms)
        rec["configs"].append({"config": config_dict(cfg), "ms": ms,
                               "TFLOPs": None if not ms else flops / (ms * 1e-3) / 1e12})
    rec["configs"].sort(key=lambda r: float("inf") if r["ms"] is None else r["ms"])
    return rec


def summarize(rows: list[dict]) -> dict:
    """Per shape: each regionc provider's speed relative to sdpa_cudnn (>1: faster) and the faster
    variant; the ATTENTION_VARIANT to set: the variant that wins every shape, else "auto" (each
    shape bucket then autotunes over both lists)."""
    by = {(r["shape"], r["provider"]): r.get("ms") for r in rows}
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    providers = ["regionc", "regionc[hopper]", *VARIANT_PROVIDERS]
    ratios = {p: {s: (by.get((s, "sdpa_cudnn")) / by[s, p] if by.get((s, p)) and by.get((s, "sdpa_cudnn")) else None)
                  for s in shapes} for p in providers}
    geo = {}
    for p in providers:
        vals = [v for v in ratios[p].values() if v]
        geo[p] = math.exp(sum(map(math.log, vals)) / len(vals)) if vals and len(vals) == len(shapes) else None
    winners = {}
    for s in shapes:
        times = {v: by.get((s, p)) for p, v in VARIANT_PROVIDERS.items() if by.get((s, p))}
        winners[s] = min(times, key=times.get) if times else None
    won = set(winners.values())
    suggestion = None if None in won or not won else (won.pop() if len(won) == 1 else "auto")
    return {"ratio_vs_cudnn": ratios, "geomean_ratio_vs_cudnn": geo, "faster_variant": winners,
            "suggested_ATTENTION_VARIANT": suggestion}


def run_shape(shape: tuple, dtype, sweep: bool, t0: float, rows: list, errors: dict, autotune: dict) -> str:
    """Times every provider on one shape (appends to ``rows``/``errors``/``autotune``); returns
    the variant the op ran."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from regionc.ops import attention as A
    from regionc.ops import attention_hopper as H

    B, Hq, Hkv, S, D, causal, label = shape
    backends, sdpa_kernel = sdpa_backends()
    q = torch.randn(B, Hq, S, D, device="cuda", dtype=dtype)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype)
    # SDPA backends get k/v already repeated (not timed): the fairest SDPA figure
    kr = k.repeat_interleave(Hq // Hkv, 1)
    vr = v.repeat_interleave(Hq // Hkv, 1)
    flops = 4 * B * Hq * S * S * D * (0.5 if causal else 1.0)
    try:  # reference output for rel_err_vs_sdpa
        ref = sdpa(q, kr, vr, is_causal=causal).float()
    except Exception as exc:
        print(f"  {label}: no SDPA reference ({_err(exc)})")
        ref = None
    cases = {}
    for name, be in backends.items():
        def f(be=be):
            with sdpa_kernel(be):
                return sdpa(q, kr, vr, is_causal=causal)
        cases[name] = (f, None)
    if Hq != Hkv:
        cases["eager_repeat+sdpa"] = (lambda: sdpa(q, k.repeat_interleave(Hq // Hkv, 1),
                                                   v.repeat_interleave(Hq // Hkv, 1), is_causal=causal), None)
    tuners = A.TUNERS if A.HAS_TRITON else {}
    for name, variant in VARIANT_PROVIDERS.items():
        cases[name] = ((lambda variant=variant: A.attention_triton(q, k, v, causal, None, variant=variant)),
                       tuners.get((variant, D)))
    cases["regionc[hopper]"] = (lambda: H.attention_hopper(q, k, v, causal, None)), None
    hopper_why = H.unusable(q, k, v)
    op_variant = "hopper" if A.HOPPER_KERNEL and hopper_why is None else A._pick_variant(q, k, v, None, False)
    cases["regionc"] = (lambda: torch.ops.regionc.attention(q, k, v, causal, None)), tuners.get((op_variant, D))
    for name, (fn, tuner) in cases.items():
        if name == "regionc[hopper]" and hopper_why is not None:
            ms, err = None, f"not run: {hopper_why}"
        elif name == "regionc" and time.perf_counter() - t0 > BUDGET_S:
            ms, err = None, f"skipped: past the {BUDGET_S:.0f} s budget of this script"
            print(f"  {name}: {err}")
        else:
            before = set(tuner.cache) if tuner is not None else set()
            ms, err = timed(f"{label} {name}", fn)
            if tuner is not None and sweep:
                rec = tuner_record(tuner, before, flops)
                if rec is not None:
                    autotune.setdefault(label, {})[name] = rec
        if err is not None:
            errors.setdefault(label, {})[name] = err
        row = {"shape": label, "provider": name, "ms": ms,
               "TFLOPs": None if ms is None else flops / (ms * 1e-3) / 1e12}
        if name.startswith("regionc") and ms is not None and ref is not None:
            try:
                row["rel_err_vs_sdpa"] = ((fn().float() - ref).norm() / ref.norm()).item()
            except Exception as exc:
                row["rel_err_vs_sdpa"] = None
                errors.setdefault(label, {})[name + " rel_err"] = _err(exc)
        rows.append(row)
    for name, rec in autotune.get(label, {}).items():
        print(f"  {label} {name}: autotuner chose {rec['chosen']}")
    # the op's kernel after the call (a failure switches it to the Triton / "ptr" kernel for good)
    if op_variant == "hopper" and H._disabled:
        op_variant = A._pick_variant(q, k, v, None, False)
    return "ptr" if op_variant != "hopper" and A._tma_disabled else op_variant


def run(out_dir: str, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    """``sweep``: record every autotuned config's time (free: the autotuners measure them anyway)."""
    import regionc.ops  # noqa: F401
    from regionc.ops import attention as A
    from regionc.ops import attention_hopper as H

    t0 = time.perf_counter()
    rows: list[dict] = []
    errors: dict[str, dict[str, str]] = {}
    autotune: dict[str, dict] = {}
    op_variants: dict[str, str] = {}
    with torch.inference_mode():
        for shape in SHAPES:
            label = shape[-1]
            try:
                op_variants[label] = run_shape(shape, dtype, sweep, t0, rows, errors, autotune)
            except Exception as exc:  # e.g. a kernel fault that took the CUDA context down
                print(f"  {label}: shape failed ({_err(exc)})")
                errors.setdefault(label, {})["shape"] = _err(exc)
            try:
                torch.cuda.empty_cache()
            except Exception:
                pass
    summary = summarize(rows)
    for p, rs in summary["ratio_vs_cudnn"].items():
        print(f"  {p:<14} vs cuDNN: " + ", ".join(f"{s}: {'n/a' if r is None else f'{r:.2f}x'}" for s, r in rs.items()))
    print(f"  geomean vs cuDNN: {summary['geomean_ratio_vs_cudnn']}")
    print(f"  faster variant per shape: {summary['faster_variant']}; "
          f"suggested ATTENTION_VARIANT = {summary['suggested_ATTENTION_VARIANT']!r}")
    return C.report(
        out_dir, "attention", rows, "TFLOPs", "TFLOP/s", dtype=str(dtype),
        flops="4*B*Hq*Sq*Skv*D, halved for causal",
        variant_choice=A.ATTENTION_VARIANT, op_variant_used=op_variants, tma_available=A.HAS_TMA,
        tma_disabled=A._tma_disabled, hopper_kernel=A.HOPPER_KERNEL, hopper_disabled=H._disabled,
        hopper_configs={str(d): c for d, c in H.CONFIGS.items()},
        configs={"ptr": {str(d): list(map(list, c)) for d, c in A.PTR_CONFIGS.items()},
                 "tma": {str(d): list(map(list, c)) for d, c in A.TMA_CONFIGS.items()},
                 "columns": ["BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg"]},
        summary=summary, errors=errors, autotune=autotune,
        seconds=round(time.perf_counter() - t0, 1),
    )


def main():
    C.bench_main("bench_attention", run, __doc__)


if __name__ == "__main__":
    main()
