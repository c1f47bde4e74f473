"""regionc.skinny_linear: the Triton kernel under the interpreter (subprocess), the CPU and fake
kernels, argument checks, and on CUDA (``gpu``) the kernel against F.linear in bf16 across the
decode shapes of Llama-style models, past its row limit, and inside a captured CUDA graph that
reads a weight updated in place."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from regionc.ops.skinny_linear import MAX_ROWS

HERE = Path(__file__).parent
op = torch.ops.regionc.skinny_linear


def linear64(x, weights, biases):
    return [F.linear(x.double(), w.double(), None if b is None else b.double()) for w, b in zip(weights, biases)]


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton", reason="triton not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "interpret_skinny_linear.py")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert "all interpreter checks passed" in proc.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_matches_linear(dtype, gen, assert_rel):
    x = torch.randn(8, 64, generator=gen).to(dtype)
    ws = [torch.randn(n, 64, generator=gen).to(dtype) for n in (32, 8, 8)]
    bs = [None, torch.randn(8, generator=gen).to(dtype), None]
    outs = op(x, ws, bs)
    assert len(outs) == 3
    for out, ref in zip(outs, linear64(x, ws, bs)):
        assert_rel(out, ref, dtype)


def test_fake_kernel_and_compile():
    with FakeTensorMode():
        x = torch.empty(4, 256, dtype=torch.bfloat16)
        outs = op(x, [torch.empty(512, 256, dtype=torch.bfloat16), torch.empty(128, 256, dtype=torch.bfloat16)],
                  [None, None])
        assert [tuple(o.shape) for o in outs] == [(4, 512), (4, 128)]
        assert all(o.dtype == torch.bfloat16 and o.is_contiguous() for o in outs)

    def fn(x, w1, w2, b2):
        a, b = op(x, [w1, w2], [None, b2])
        return a.sum(-1) + b.sum(-1)

    args = (torch.randn(3, 16), torch.randn(24, 16), torch.randn(8, 16), torch.randn(8))
    torch.testing.assert_close(torch.compile(fn, backend="inductor")(*args), fn(*args))


@pytest.mark.parametrize("args, exc, msg", [
    (lambda x, w: (x[0], [w], [None]), ValueError, "x must be 2-D"),
    (lambda x, w: (x, [], []), ValueError, "weights is empty"),
    (lambda x, w: (x, [w], []), ValueError, "1 weights but 0 biases"),
    (lambda x, w: (x, [w[:, :8]], [None]), ValueError, r"weights\[0\] has K=8"),
    (lambda x, w: (x, [w, w.half()], [None, None]), TypeError, r"weights\[1\] dtype"),
    (lambda x, w: (x, [w], [torch.randn(3)]), ValueError, r"biases\[0\] must be \[12\]"),
    (lambda x, w: (x.int(), [w], [None]), TypeError, "x must be float16"),
])
def test_argument_errors_name_the_argument(args, exc, msg):
    x, w = torch.randn(4, 16), torch.randn(12, 16)
    with pytest.raises(exc, match=msg):
        op(*args(x, w))


def test_forward_only():
    """A weight that requires grad (an nn.Parameter under grad mode) is refused, even inside the list."""
    w = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="forward-only"):
        op(torch.randn(2, 8), [w], [None])
    with torch.no_grad():
        assert op(torch.randn(2, 8), [w], [None])[0].shape == (2, 4)


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 32, MAX_ROWS, MAX_ROWS + 1])
def test_cuda_bf16_matches_linear_on_decoder_shapes(cuda, rows):
    """q/k/v and gate/up of a 2048-wide GQA decoder, the down projection alone, and a biased q/k/v (Qwen2)."""
    torch.manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(rows, 2048, device=cuda, dtype=dt)
    xd = torch.randn(rows, 8192, device=cuda, dtype=dt)
    groups = [
        (x, [torch.randn(n, 2048, device=cuda, dtype=dt) * 0.02 for n in (2048, 512, 512)], [None] * 3),
        (x, [torch.randn(8192, 2048, device=cuda, dtype=dt) * 0.02 for _ in range(2)], [None] * 2),
        (xd, [torch.randn(2048, 8192, device=cuda, dtype=dt) * 0.02], [None]),
        (x, [torch.randn(n, 2048, device=cuda, dtype=dt) * 0.02 for n in (1536, 256, 256)],
         [torch.randn(n, device=cuda, dtype=dt) for n in (1536, 256, 256)]),
    ]
    for inp, ws, bs in groups:
        for out, ref in zip(op(inp, ws, bs), linear64(inp, ws, bs)):
            err = ((out.double() - ref).norm() / ref.norm()).item()
            assert out.dtype == dt and err < 1e-2, (rows, tuple(out.shape), err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_other_dtypes(cuda, dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 1000, device=cuda, dtype=dtype)
    ws = [torch.randn(n, 1000, device=cuda, dtype=dtype) * 0.03 for n in (300, 77)]
    bs = [torch.randn(300, device=cuda, dtype=dtype), None]
    for out, ref in zip(op(x, ws, bs), linear64(x, ws, bs)):
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < (1e-5 if dtype == torch.float32 else 2e-3), err


@pytest.mark.gpu
def test_cuda_graph_replay_reads_weights_updated_in_place(cuda):
    """Nothing is packed: a weight changed in place after capture (load_state_dict, a LoRA merge)
    is what the next replay reads."""
    torch.manual_seed(0)
    x = torch.randn(8, 2048, device=cuda, dtype=torch.bfloat16)
    ws = [torch.randn(n, 2048, device=cuda, dtype=torch.bfloat16) * 0.02 for n in (2048, 512, 512)]
    bs = [None] * 3
    for _ in range(2):
        op(x, ws, bs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = op(x, ws, bs)
    for _ in range(2):
        ws[1].mul_(-2.0)
        x.normal_()
        graph.replay()
        for out, ref in zip(outs, linear64(x, ws, bs)):
            err = ((out.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-2, err
