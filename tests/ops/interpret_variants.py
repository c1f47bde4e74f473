"""Runs every launch variant of the rms_norm and rope Triton kernels (``VARIANTS`` in
regionc/ops/rms_norm.py and rope.py: schedule, cache hints, launch path) through their launchers on
tiny CPU tensors under TRITON_INTERPRET=1 and checks them against float64 references. Executed in
a subprocess by test_triton_interpret.py (the variable must be set before triton is imported).
Prints one line per case; exits non-zero on failure.

Under the interpreter a launch returns no compiled kernel, so ``_utils.EMULATE_COMPILED`` makes
launch-cache entries replay through the interpreted kernel: the second call of a case with the
same inputs runs the cached-launch path (the argument tuple it builds, the grid it stored, the
outputs it allocates). The interpreter truncates fp32->bf16 casts (the GPU rounds to nearest even),
so bf16 results are compared with a tolerance, never bit-exactly.
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import pytest  # noqa: E402
import torch  # noqa: E402

from regionc.ops import _utils  # noqa: E402
from regionc.ops import rms_norm as rms_mod  # noqa: E402
from regionc.ops import rope as rope_mod  # noqa: E402

_utils.EMULATE_COMPILED = True

TOL = {torch.float32: 2e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}
gen = torch.Generator().manual_seed(0)
failures = []


def rel(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def expect(name, out, ref, tol):
    err = rel(out, ref)
    ok = err <= tol and out.shape == ref.shape and out.is_contiguous()
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (tol {tol:g})")
    if not ok:
        failures.append(name)


def rms64(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


# ---------------------------------------------------------------- rms_norm
# plain and residual, the first case twice (JIT, then the launch cache); narrow rows with several
# rows per program; a persistent grid smaller than the row blocks (each program loops, prefetching
# the next block; with ROWS > 1 the last block is ragged); the chunked path (never persistent)
RMS_CASES = [((7, 40), {}), ((9, 24), {"rows": 4}), ((11, 40), {"programs": 3}),
             ((13, 24), {"rows": 2, "programs": 2}), ((2, 33), {"loop": True, "block_n": 16})]
for i, name in enumerate(rms_mod.VARIANTS):
    dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
    for shape, kw in RMS_CASES:
        x = torch.randn(shape, generator=gen).to(dtype)
        r = torch.randn(shape, generator=gen).to(dtype)
        w = 1 + 0.1 * torch.randn(shape[-1], generator=gen)  # fp32 weight with any x dtype
        tag = f"rms_norm variant={name} {dtype} {shape} {kw}"
        for call in ((1, 2) if not kw else (1,)):
            expect(f"{tag} call {call}", rms_mod.rms_norm_triton(x, w, 1e-6, variant=name, **kw),
                   rms64(x, w, 1e-6), TOL[dtype])
            y, nr = rms_mod.rms_norm_triton(x, w, 1e-6, residual=r, variant=name, **kw)
            expect(f"{tag} new_residual call {call}", nr, x.double() + r.double(), TOL[dtype])
            expect(f"{tag} fused call {call}", y, rms64(nr, w, 1e-6), TOL[dtype])
    n_hits = sum(1 for k in rms_mod._LAUNCHES if k[0] == name)
    if n_hits != (2 if rms_mod.VARIANTS[name].cached_launch else 0):  # (7, 40) plain and residual
        failures.append(f"rms_norm variant={name}: {n_hits} launch-cache entries")

# a call without ``variant`` uses the module's switch
for name in rms_mod.VARIANTS:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rms_mod, "VARIANT", name)
        x = torch.randn(2, 1, 48, generator=gen)
        w = torch.randn(48, generator=gen)
        expect(f"rms_norm VARIANT={name}", rms_mod.rms_norm_triton(x, w, 1e-6), rms64(x, w, 1e-6), TOL[torch.float32])
    if not any(k[0] == name and k[1] == x.shape for k in rms_mod._LAUNCHES) and rms_mod.VARIANTS[name].cached_launch:
        failures.append(f"rms_norm VARIANT={name} was not the variant used")


# ---------------------------------------------------------------- rope
def rot64(x, style):
    if style == "rotate_half":
        a, b = x.chunk(2, -1)
        return torch.cat((-b, a), -1)
    o = torch.empty_like(x)
    o[..., 0::2], o[..., 1::2] = -x[..., 1::2], x[..., 0::2]
    return o


# two cases per variant (style x layout rotate over the variants; each variant sees both styles
# and both layouts): the first called twice (JIT, then the launch cache) with q/k as transposed
# views of the other layout and a [S, D] table; the second with a persistent grid smaller than the
# tile count, ragged token and head blocks and a per-batch table
COMBOS = [(s, lay) for s in ("rotate_half", "interleaved") for lay in ("bhsd", "bshd")]
for i, name in enumerate(rope_mod.VARIANTS):
    dtype = (torch.bfloat16, torch.float32)[i % 2]
    for j, ((B, S, Hq, Hk, D), kw, tb, view) in enumerate((((1, 2, 2, 1, 16), {}, (2, 16), True),
                                                           ((2, 5, 3, 2, 12),
                                                            {"block_s": 2, "heads_per_block": 2, "programs": 3},
                                                            (2, 5, 12), False))):
        style, layout = COMBOS[i % 4 if j == 0 else 3 - i % 4]  # both styles, both layouts
        bshd_shape = view == (layout == "bhsd")  # a view: built in the other layout, then transposed
        shp = (lambda h: (B, S, h, D)) if bshd_shape else (lambda h: (B, h, S, D))
        q = torch.randn(shp(Hq), generator=gen).to(dtype)
        k = torch.randn(shp(Hk), generator=gen).to(dtype)
        if view:
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos = torch.randn(tb, generator=gen)
        sin = torch.randn(tb, generator=gen)
        ax = 1 if layout == "bhsd" else 2
        c3, s3 = (cos, sin) if cos.dim() == 3 else (cos[None], sin[None])
        c, s_ = c3.double().unsqueeze(ax), s3.double().unsqueeze(ax)
        for call in ((1, 2) if not kw else (1,)):
            qo, ko = rope_mod.rope_triton(q, k, cos, sin, style, layout, variant=name, **kw)
            for nm, x, o in (("q", q, qo), ("k", k, ko)):
                expect(f"rope variant={name} {nm} {dtype} {style} {layout} {(B, S, Hq, Hk, D)} {kw} view={view} "
                       f"call {call}", o, x.double() * c + rot64(x.double(), style) * s_, TOL[dtype])
    n_hits = sum(1 for k in rope_mod._LAUNCHES if k[0] == name)
    if n_hits != (1 if rope_mod.VARIANTS[name].cached_launch else 0):
        failures.append(f"rope variant={name}: {n_hits} launch-cache entries")

if failures:
    print(f"{len(failures)} FAILED: {failures}")
    sys.exit(1)
print("all interpreter checks passed")
