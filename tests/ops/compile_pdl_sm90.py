"""Compiles regionc's decode kernels for sm_90 on this (GPU-less) machine through their real
launchers, with programmatic dependent launch on (``pdl``) or off (``plain``, the first argument),
and prints one JSON line per kernel: whether it is launched with PDL and where, in its PTX, the
L2 prefetches, the grid-dependency wait and the first memory access fall. The decode attention runs a
second time at batch 32, a grid of several waves (``"case": "waves"``). Run in a subprocess by
test_pdl.py, as compile_hopper_sm90.py is."""

import json
import re
import sys

import torch
from sm90_target import sm90_target  # this script's folder is on sys.path

from regionc.ops import decode_attention, pdl, skinny_linear

on = sys.argv[1] == "pdl"
pdl.launches_with_pdl = lambda t: on  # what an H200 answers for a CUDA tensor (these are CPU tensors)


class Compiles:
    """Stands in for ``kernel[grid](...)``: compiles for the grid, launches nothing, reports the PTX."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
            lines = compiled.asm["ptx"].splitlines()

            def first(pattern):
                return next((i for i, line in enumerate(lines) if re.search(pattern, line)), None)

            print(json.dumps({
                "kernel": self.kernel.fn.__name__,
                "case": case,
                "launch_pdl": bool(compiled.metadata.launch_pdl),
                "prefetch": first(r"prefetch\.global\.L2"),
                "wait": first(r"griddepcontrol\.wait"),
                "launch_dependents": first(r"griddepcontrol\.launch_dependents"),
                "access": first(r"\b(ld\.global|cp\.async\.c[ag]\.shared\.global|st\.global)"),
            }), flush=True)

        return launch


for module, name in ((skinny_linear, "_skinny_kernel"), (skinny_linear, "_swiglu_kernel"),
                     (decode_attention, "_decode_split_kernel"), (decode_attention, "_decode_reduce_kernel")):
    setattr(module, name, Compiles(getattr(module, name)))

case = "one wave"
x = torch.empty(8, 2048, dtype=torch.bfloat16)
w = torch.empty(1024, 2048, dtype=torch.bfloat16)
with sm90_target():
    skinny_linear.skinny_linear_triton(x, [w, w[:256]], splits=4)
    skinny_linear.skinny_swiglu_triton(x, w, w)
    q = torch.empty(8, 32, 1, 64, dtype=torch.bfloat16)
    cache = torch.empty(8, 8, 4096, 64, dtype=torch.bfloat16)
    mask = torch.ones(8, 1, 1, 4096, dtype=torch.bool)
    decode_attention.decode_attention_triton(q, cache, cache, mask)
    case = "waves"
    q, cache, mask = (t.new_empty((32, *t.shape[1:])) for t in (q, cache, mask))
    decode_attention.decode_attention_triton(q, cache, cache, mask)
