"""The Hopper attention kernel (regionc/ops/attention_hopper.py): it compiles for sm_90 on this
CPU machine (the whole Gluon -> PTX -> ptxas pipeline, with warp specialisation, wgmma and TMA in
the PTX; compile_hopper_sm90.py in a subprocess); the cached launch path; the op's dispatch between it and the Triton kernel (reasons, the
off switch, a failing kernel disabled with one warning); on an H100 (gpu): numerics against a float64 reference over
ragged, GQA, Sq != Skv and transposed inputs, and CUDA-graph capture through the op."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regionc.ops import attention as attn_mod
from regionc.ops import attention_hopper as hopper
from tests.ops.fakes import FakeKernel

needs_gluon = pytest.mark.skipif(not hopper.HAS_GLUON, reason="this triton has no Gluon Hopper API")


def _inputs(B, Hq, Hkv, Sq, Skv, D, dtype=torch.bfloat16, device="cpu", gen=None):
    r = lambda *s: torch.randn(*s, generator=gen).to(dtype).to(device)  # noqa: E731
    return r(B, Hq, Sq, D), r(B, Hkv, Skv, D), r(B, Hkv, Skv, D)


def _ref64(q, k, v, causal, scale=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    return torch.nn.functional.scaled_dot_product_attention(q.double(), k, v, is_causal=causal, scale=scale)


# ------------------------------------------------------------------------------------ CPU


COMPILE_SPECS = ["64:1", "128:1", "128:0"]  # one and two consumer warpgroups, both mask kinds


@pytest.fixture(scope="module")
def sm90_compiles():
    """compile_hopper_sm90.py's report per spec (one subprocess for all of them)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "compile_hopper_sm90.py"), *COMPILE_SPECS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sm_90 compile failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {r["spec"]: r for r in map(json.loads, proc.stdout.splitlines())}


@needs_gluon
@pytest.mark.parametrize("spec", COMPILE_SPECS)
def test_kernel_compiles_for_sm90(spec, sm90_compiles):
    """Each config through Gluon, PTX and ptxas for an H100, on this CPU machine."""
    report = sm90_compiles[spec]
    assert report["wgmma"]  # tensor-core products on Hopper's warpgroup MMA
    assert report["tma"]  # TMA loads
    assert report["setmaxnreg"]  # warp-specialised partitions with their own register budgets
    assert report["shared"] <= 227 * 1024  # fits an H100 SM's shared memory
    assert report["cubin"]  # ptxas assembled it


def test_unusable_reasons():
    """Each reason the op falls back to the Triton kernel is named (checked before the device)."""
    q, k, v = _inputs(1, 4, 2, 9, 9, 64)
    expect_device = "no Gluon" if not hopper.HAS_GLUON else "not a CUDA tensor"
    assert expect_device in hopper.unusable(q, k, v)
    if not hopper.HAS_GLUON:
        return
    assert "no config" in hopper.unusable(q.float(), k.float(), v.float())
    q80, k80, v80 = _inputs(1, 4, 2, 9, 9, 80)
    assert "no config" in hopper.unusable(q80, k80, v80)
    odd = torch.randn(4 * 9 * 64 + 1).bfloat16()[1:].view(1, 4, 9, 64)  # base 2 bytes off
    assert "16-byte" in hopper.unusable(odd, k, v)
    # a [B, S, H, D] tensor viewed as [B, H, S, D] is fine: the descriptors take its strides
    qt = torch.randn(1, 9, 4, 64).bfloat16().transpose(1, 2)
    assert hopper.unusable(qt, k, v) == "not a CUDA tensor"


@pytest.fixture
def fake_dispatch(monkeypatch):
    """_attention_cuda on CPU tensors with the Hopper kernel 'usable' (until disabled), a Hopper
    launcher that fails, and a stub Triton launcher; returns the call log."""
    calls = []

    def failing_hopper(q, k, v, causal, scale):
        calls.append("hopper")
        raise RuntimeError("simulated Gluon compile error\nsecond line")

    def triton_stub(q, k, v, causal, scale):
        calls.append("triton")
        return torch.zeros_like(q)

    monkeypatch.setattr(hopper, "_disabled", None)
    monkeypatch.setattr(hopper, "unusable", lambda q, k, v: hopper._disabled)
    monkeypatch.setattr(hopper, "attention_hopper", failing_hopper)
    monkeypatch.setattr(attn_mod, "attention_triton", triton_stub)
    monkeypatch.setattr(attn_mod, "HAS_TRITON", True)
    return calls


def test_failing_kernel_is_disabled_with_one_warning(fake_dispatch, caplog):
    q, k, v = _inputs(1, 4, 2, 9, 9, 64)
    with caplog.at_level("WARNING", logger="regionc"):
        attn_mod._attention_cuda(q, k, v, True, None)
        attn_mod._attention_cuda(q, k, v, True, None)
    assert fake_dispatch == ["hopper", "triton", "triton"]
    assert "simulated Gluon compile error" in hopper._disabled
    assert caplog.text.count("the Hopper kernel failed") == 1
    assert "using the Triton kernel from now on" in caplog.text


def test_switch_off_keeps_triton(fake_dispatch, monkeypatch):
    monkeypatch.setattr(attn_mod, "HOPPER_KERNEL", False)
    q, k, v = _inputs(1, 4, 2, 9, 9, 128)
    attn_mod._attention_cuda(q, k, v, False, None)
    assert fake_dispatch == ["triton"]
    assert hopper._disabled is None


@needs_gluon
def test_cached_launch(monkeypatch):
    """The second call with the same shapes, strides, dtype, causal flag and scale skips the JIT:
    ``compiled.run`` gets the first launch's arguments with the descriptors over the new tensors.
    Another key, an explicit config or an installed launch hook goes through the JIT."""
    from regionc.ops._utils import LaunchCache

    fake = FakeKernel()
    monkeypatch.setattr(hopper, "_attn_fwd_hopper", fake)
    monkeypatch.setattr(hopper, "_LAUNCHES", LaunchCache())
    hopper.attention_hopper(*_inputs(1, 4, 2, 300, 300, 128), True, None)
    q, k, v = _inputs(1, 4, 2, 300, 300, 128)
    o = hopper.attention_hopper(q, k, v, True, None)
    assert len(fake.jit_calls) == 1 and len(fake.compiled.calls) == 1
    (grid, args, options), run = fake.jit_calls[0], fake.compiled.calls[0]
    assert options == {"num_warps": 4, "maxnreg": hopper.CONFIGS[128]["maxnreg"]}
    assert run[:9] == (grid[0], grid[1], 1, 0, "cufunction", (8, 1, 0), None, None, None)
    descs = run[9:13]
    assert all(d.base is t for d, t in zip(descs, (q, k, v, o)))
    assert [(d.shape, d.strides, d.block_shape) for d in descs] == [(a.shape, a.strides, a.block_shape)
                                                                     for a in args[:4]]
    assert run[13:] == args[4:]
    hopper.attention_hopper(q, k, v, False, None)
    hopper.attention_hopper(q, k, v, True, 0.1)
    hopper.attention_hopper(q, k, v, True, None, config={"STAGES": 3})
    monkeypatch.setattr(hopper, "launch_hooks_active", lambda: True)
    hopper.attention_hopper(q, k, v, True, None)
    assert len(fake.jit_calls) == 5 and len(fake.compiled.calls) == 1


# ------------------------------------------------------------------------------------ GPU

# (B, Hq, Hkv, Sq, Skv, D)
GPU_SHAPES = [
    (1, 1, 1, 1, 1, 64),
    (2, 4, 4, 17, 17, 64),
    (2, 8, 2, 300, 300, 128),  # ragged vs the 128-row tiles and key blocks
    (1, 8, 8, 129, 257, 64),  # Sq != Skv, both ragged
    (1, 4, 1, 257, 100, 128),  # Sq > Skv (causal rows past Skv see every key)
    (1, 4, 4, 100, 513, 128),  # Sq < Skv
    (2, 32, 8, 1024, 1024, 64),
    (1, 4, 4, 1, 513, 128),  # decode-like
]


@pytest.fixture
def hopper_gpu(cuda):
    if not hopper.HAS_GLUON or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper GPU and Gluon")
    return cuda


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_hopper_cuda(shape, causal, dtype, gen, hopper_gpu, assert_rel):
    q, k, v = _inputs(*shape, dtype=dtype, device=hopper_gpu, gen=gen)
    assert hopper.unusable(q, k, v) is None
    out = hopper.attention_hopper(q, k, v, causal, None)
    assert_rel(out, _ref64(q.cpu(), k.cpu(), v.cpu(), causal).to(hopper_gpu), dtype, attention=True)


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
def test_hopper_cuda_transposed_views(D, gen, hopper_gpu, assert_rel):
    """[B, S, H, D] storage viewed as [B, H, S, D]: read and written in place, no copies."""
    B, S, Hq, Hkv = 2, 200, 8, 2
    r = lambda h: torch.randn(B, S, h, D, generator=gen).bfloat16().to(hopper_gpu).transpose(1, 2)  # noqa: E731
    q, k, v = r(Hq), r(Hkv), r(Hkv)
    assert hopper.unusable(q, k, v) is None
    out = hopper.attention_hopper(q, k, v, True, 0.05)
    assert_rel(out, _ref64(q.cpu(), k.cpu(), v.cpu(), True, 0.05).to(hopper_gpu), torch.bfloat16, attention=True)


@pytest.mark.gpu
def test_op_runs_hopper_kernel_in_cuda_graph(gen, hopper_gpu, assert_rel, monkeypatch):
    """The op picks the Hopper kernel on sm_90, and its launch captures and replays in a graph."""
    launches = []
    real = hopper.attention_hopper
    monkeypatch.setattr(hopper, "attention_hopper", lambda *a, **kw: launches.append(1) or real(*a, **kw))
    q, k, v = _inputs(2, 8, 2, 256, 256, 128, device=hopper_gpu, gen=gen)
    torch.ops.regionc.attention(q, k, v, True, None)  # compile outside capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.regionc.attention(q, k, v, True, None)
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        g.replay()
        torch.cuda.synchronize()
        assert_rel(out, _ref64(q.cpu(), k.cpu(), v.cpu(), True).to(hopper_gpu), torch.bfloat16, attention=True)
    assert len(launches) == 2 and hopper._disabled is None, hopper._disabled
