"""Programmatic dependent launch of regionc's decode kernels (``regionc/ops/pdl.py``): where the
kernels wait and prefetch (compiled for sm_90 on the CPU), when they launch with it, the switch
that turns it off, and on a GPU the decode outputs with it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regionc.ops import pdl

KERNELS = {"_skinny_kernel", "_swiglu_kernel", "_decode_split_kernel", "_decode_reduce_kernel"}
#: kernels that ask L2 for what they will read (weights; a split's first K/V block and its mask) before the wait
PREFETCHING = {"_skinny_kernel", "_swiglu_kernel", "_decode_split_kernel"}


def _compiled(mode: str) -> dict[str, dict]:
    pytest.importorskip("triton", reason="triton not installed")
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "compile_pdl_sm90.py"), mode],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["kernel"] if r["case"] == "one wave" else f"{r['kernel']} ({r['case']})": r
            for r in map(json.loads, proc.stdout.splitlines())}


def test_kernels_wait_for_the_kernel_before_ahead_of_any_memory_access():
    """With PDL every decode kernel is launched with it and waits before its first load or store
    (then lets the next kernel launch); the linears ask L2 for their weights before that wait, and a
    split program of the decode attention for its first key block and its mask."""
    kernels = _compiled("pdl")
    assert KERNELS <= set(kernels)
    for name, k in kernels.items():
        assert k["launch_pdl"], name
        assert k["wait"] is not None and k["access"] is not None and k["wait"] < k["access"], (name, k)
        assert k["wait"] < k["launch_dependents"], (name, k)
        if name in PREFETCHING:
            assert k["prefetch"] is not None and k["prefetch"] < k["wait"], (name, k)
        else:
            assert k["prefetch"] is None, (name, k)
    # a grid of several waves: a later wave starts after the kernel before has finished, so no hint
    assert kernels["_decode_split_kernel (waves)"]["prefetch"] is None


def test_without_pdl_kernels_neither_wait_nor_prefetch():
    kernels = _compiled("plain")
    assert KERNELS <= set(kernels)
    for name, k in kernels.items():
        assert not k["launch_pdl"] and k["wait"] is None and k["prefetch"] is None, (name, k)


def test_cpu_tensors_and_the_switch():
    assert not pdl.launches_with_pdl(torch.empty(1))
    assert pdl.ENABLED
    with pdl.turned_off():
        assert not pdl.ENABLED
    assert pdl.ENABLED


def test_env_switch_turns_off_regionc_and_inductor_pdl():
    """``REGIONC_NO_PDL=1`` turns both off, and regionc's config takes it as a known variable."""
    code = ("import logging, regionc.ops.pdl as p, regionc.compiler.inductor as i, regionc.config as c;"
            "logging.basicConfig(); c.Config.build({});"
            "print(p.ENABLED, i.DECODE_DEFAULTS['triton.enable_pdl'])")
    for env, expected in (({"REGIONC_NO_PDL": "1"}, "False False"), ({}, "True True")):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**{k: v for k, v in os.environ.items() if k != "REGIONC_NO_PDL"}, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split() == expected.split()
        assert "REGIONC_NO_PDL" not in proc.stderr  # not reported as an unknown variable


@pytest.mark.gpu
def test_hopper_decode_kernels_launch_with_pdl_and_equal_the_reference():
    """On a Hopper GPU the decode ops launch with PDL, inside a CUDA graph too, and compute what
    their references do."""
    from regionc.ops import decode_attention, decode_attention_reference, skinny_linear, skinny_linear_reference

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs Hopper or newer")
    torch.manual_seed(0)
    x = torch.randn(8, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 2048, device="cuda", dtype=torch.bfloat16) / 40
    q = torch.randn(8, 32, 1, 64, device="cuda", dtype=torch.bfloat16)
    cache = torch.randn(8, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.arange(1024, device="cuda").view(1, 1, 1, -1) < 700

    def step():
        (y,) = torch.ops.regionc.skinny_linear(x, [w], 4)
        return y.sum(0), torch.ops.regionc.decode_attention(q, cache, cache, mask, None, None)

    step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, attn = step()
    x.normal_()
    graph.replay()
    torch.testing.assert_close(y, skinny_linear_reference(x, [w], 4)[0].sum(0), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(attn, decode_attention_reference(q, cache, cache, mask), rtol=2e-2, atol=2e-2)
    device = torch.cuda.current_device()
    for kernel in (skinny_linear._skinny_kernel, decode_attention._decode_split_kernel):
        compiled = list(kernel.device_caches[device][0].values())
        assert compiled and all(c.metadata.launch_pdl for c in compiled), kernel.fn.__name__
