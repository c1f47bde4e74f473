"""Compiles the Hopper attention kernel for sm_90 on this (GPU-less) machine, one config per
(head dim, causal) given on the command line as ``D:causal`` pairs, and prints one JSON line per
compile: what its PTX uses and its shared memory. Run in a subprocess by
test_attention_hopper.py: the fake driver stays out of the test process, and so does the
binding-leak report Triton's IR bindings print at interpreter exit after a compile."""

import json
import sys

import torch
from sm90_target import sm90_target  # this script's folder is on sys.path

from regionc.ops import attention_hopper as hopper

for spec in sys.argv[1:]:
    head_dim, causal = int(spec.split(":")[0]), spec.split(":")[1] == "1"
    q = torch.empty(1, 4, 300, head_dim, dtype=torch.bfloat16)
    k = torch.empty(1, 2, 300, head_dim, dtype=torch.bfloat16)
    grid, args, options = hopper.launch_args(q, k, torch.empty_like(k), torch.empty_like(q), causal, None)
    with sm90_target():
        compiled = hopper._attn_fwd_hopper.warmup(*args, grid=grid, **options)
    ptx = compiled.asm["ptx"]
    print(json.dumps({
        "spec": spec,
        "wgmma": "wgmma.mma_async" in ptx,
        "tma": "cp.async.bulk.tensor" in ptx,
        "setmaxnreg": "setmaxnreg" in ptx,
        "shared": int(compiled.metadata.shared),
        "cubin": bool(compiled.asm.get("cubin")),
    }), flush=True)
