"""regionc.skinny_linear and regionc.skinny_swiglu: the CPU and fake kernels (the Triton kernels under
the interpreter: interpret_skinny_linear.py, run by test_triton_interpret.py), the split-count choice,
argument checks, and on CUDA (``gpu``) the kernel's summed partials against F.linear in bf16 across the
decode shapes of Llama-style models and split counts, past its row limit, and inside a captured CUDA graph
that reads a weight updated in place; the SwiGLU product against the model's own bf16 code."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from regionc.ops.skinny_linear import MAX_ROWS, TARGET_PROGRAMS, _config, splits_for

op = torch.ops.regionc.skinny_linear
swiglu = torch.ops.regionc.skinny_swiglu


def linear64(x, weights):
    return [F.linear(x.double(), w.double()) for w in weights]


def summed(parts):
    return [p.double().sum(0) for p in parts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 3, 100])  # 100 > K: most ranges are empty
def test_cpu_kernel_partials_sum_to_linear(dtype, splits, gen, assert_rel):
    x = torch.randn(8, 64, generator=gen).to(dtype)
    ws = [torch.randn(n, 64, generator=gen).to(dtype) for n in (32, 8, 8)]
    parts = op(x, ws, splits)
    assert [tuple(p.shape) for p in parts] == [(splits, 8, 32), (splits, 8, 8), (splits, 8, 8)]
    assert all(p.dtype == torch.float32 for p in parts)
    for part, ref in zip(parts, linear64(x, ws)):
        assert_rel(part.sum(0), ref, torch.float32)


def test_fake_kernel_and_compile():
    with FakeTensorMode():
        x = torch.empty(4, 256, dtype=torch.bfloat16)
        outs = op(x, [torch.empty(512, 256, dtype=torch.bfloat16), torch.empty(128, 256, dtype=torch.bfloat16)], 2)
        assert [tuple(o.shape) for o in outs] == [(2, 4, 512), (2, 4, 128)]
        assert all(o.dtype == torch.float32 and o.is_contiguous() for o in outs)

    def fn(x, w1, w2):
        a, b = op(x, [w1, w2], 4)
        return a.sum(0).sum(-1) + b.sum(0).sum(-1)

    args = (torch.randn(3, 16), torch.randn(24, 16), torch.randn(8, 16))
    torch.testing.assert_close(torch.compile(fn, backend="inductor")(*args), fn(*args))


def test_splits_fill_the_gpu_and_keep_whole_k_steps():
    """Small weights get more splits, large ones none; a split never gets less than one BLOCK_K of K,
    never more than the cap the pass gives (Inductor's unrolled-sum limit), and never more programs
    than the target needs."""
    assert splits_for(8, [8192, 8192], 2048, most=8) == 1  # gate/up: 512 programs already
    assert splits_for(8, [2048], 2048, most=2) == 2
    for rows, columns, k in ((8, [2048, 512, 512], 2048), (8, [2048], 2048), (8, [2048], 8192), (1, [64], 64),
                             (8, [1], 4096), (64, [4096], 4096)):
        bm, bn, bk = _config(rows, k)[:3]
        programs = sum(-(-n // bn) for n in columns) * -(-rows // bm)
        s = splits_for(rows, columns, k, most=8)
        assert s & (s - 1) == 0 and 1 <= s <= 8 and (s == 1 or k // s >= bk), (columns, k, s)
        assert s == 1 or programs * s // 2 < TARGET_PROGRAMS, (columns, k, s)
    assert splits_for(8, [2048], 2048, most=8) > 1 and splits_for(1, [64], 64, most=8) == 1


@pytest.mark.parametrize("args, exc, msg", [
    (lambda x, w: (x[0], [w], 1), ValueError, "x must be 2-D"),
    (lambda x, w: (x, [], 1), ValueError, "weights is empty"),
    (lambda x, w: (x, [w], 0), ValueError, "splits must be at least 1, got 0"),
    (lambda x, w: (x, [w[:, :8]], 1), ValueError, r"weights\[0\] has K=8"),
    (lambda x, w: (x, [w, w.half()], 1), TypeError, r"weights\[1\] dtype"),
    (lambda x, w: (x.int(), [w], 1), TypeError, "x must be float16"),
])
def test_argument_errors_name_the_argument(args, exc, msg):
    x, w = torch.randn(4, 16), torch.randn(12, 16)
    with pytest.raises(exc, match=msg):
        op(*args(x, w))


def test_forward_only():
    """A weight that requires grad (an nn.Parameter under grad mode) is refused, even inside the list."""
    w = torch.nn.Parameter(torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="forward-only"):
        op(torch.randn(2, 8), [w])
    with torch.no_grad():
        assert op(torch.randn(2, 8), [w])[0].shape == (1, 2, 4)


def swiglu_eager(x, w_gate, w_up):
    """A SwiGLU MLP's first half as HF writes it (``act_fn(gate_proj(x)) * up_proj(x)``)."""
    return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_cpu_kernel_is_the_models_code(dtype, gen):
    x = torch.randn(8, 64, generator=gen).to(dtype)
    g, u = torch.randn(40, 64, generator=gen).to(dtype), torch.randn(40, 64, generator=gen).to(dtype)
    out = swiglu(x, g, u)
    assert out.dtype == dtype and out.shape == (8, 40)
    torch.testing.assert_close(out, swiglu_eager(x, g, u), rtol=0, atol=0)


def test_swiglu_fake_kernel_errors_and_forward_only():
    with FakeTensorMode():
        out = swiglu(torch.empty(4, 256, dtype=torch.bfloat16), torch.empty(512, 256, dtype=torch.bfloat16),
                     torch.empty(512, 256, dtype=torch.bfloat16))
        assert out.shape == (4, 512) and out.dtype == torch.bfloat16
    x, w = torch.randn(4, 16), torch.randn(12, 16)
    with pytest.raises(ValueError, match="regionc.skinny_swiglu: w_gate has N=12, w_up has N=8"):
        swiglu(x, w, w[:8])
    with pytest.raises(ValueError, match=r"regionc.skinny_swiglu: weights\[1\] has K=8"):
        swiglu(x, w, w[:, :8])
    with pytest.raises(RuntimeError, match="forward-only"):
        swiglu(x, torch.nn.Parameter(w), w)


# ---------------------------------------------------------------- CUDA


def rel_errors(parts, refs):
    return [((out - ref).norm() / ref.norm()).item() for out, ref in zip(summed(parts), refs)]


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 32, MAX_ROWS, MAX_ROWS + 1])
def test_cuda_bf16_matches_linear_on_decoder_shapes(cuda, rows):
    """q/k/v and gate/up of a 2048-wide GQA decoder, the down projection alone, a Qwen2-sized q/k/v,
    each at the split count the pass would pick and at 1, 3 (ragged K ranges) and 8."""
    torch.manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(rows, 2048, device=cuda, dtype=dt)
    xd = torch.randn(rows, 8192, device=cuda, dtype=dt)
    groups = [
        (x, [torch.randn(n, 2048, device=cuda, dtype=dt) * 0.02 for n in (2048, 512, 512)]),
        (x, [torch.randn(8192, 2048, device=cuda, dtype=dt) * 0.02 for _ in range(2)]),
        (xd, [torch.randn(2048, 8192, device=cuda, dtype=dt) * 0.02]),
        (x, [torch.randn(n, 2048, device=cuda, dtype=dt) * 0.02 for n in (1536, 256, 256)]),
    ]
    for inp, ws in groups:
        refs = linear64(inp, ws)
        picked = splits_for(rows, [w.shape[0] for w in ws], inp.shape[1], most=8)
        for splits in {picked, 1, 3, 8}:
            parts = op(inp, ws, splits)
            assert all(p.shape == (splits, rows, w.shape[0]) and p.dtype == torch.float32 for p, w in zip(parts, ws))
            errs = rel_errors(parts, refs)
            assert max(errs) < 1e-4, (rows, splits, errs)  # fp32 accumulation of bf16 products


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_other_dtypes(cuda, dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 1000, device=cuda, dtype=dtype)
    ws = [torch.randn(n, 1000, device=cuda, dtype=dtype) * 0.03 for n in (300, 77)]
    for splits in (1, 2):
        errs = rel_errors(op(x, ws, splits), linear64(x, ws))
        assert max(errs) < (1e-5 if dtype == torch.float32 else 1e-4), errs


@pytest.mark.gpu
def test_cuda_graph_replay_reads_weights_updated_in_place(cuda):
    """Nothing is packed: a weight changed in place after capture (load_state_dict, a LoRA merge)
    is what the next replay reads."""
    torch.manual_seed(0)
    x = torch.randn(8, 2048, device=cuda, dtype=torch.bfloat16)
    ws = [torch.randn(n, 2048, device=cuda, dtype=torch.bfloat16) * 0.02 for n in (2048, 512, 512)]
    for _ in range(2):
        op(x, ws, 4)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = op(x, ws, 4)
    for _ in range(2):
        ws[1].mul_(-2.0)
        x.normal_()
        graph.replay()
        assert max(rel_errors(outs, linear64(x, ws))) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 8, 32, MAX_ROWS, MAX_ROWS + 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_swiglu_matches_the_models_code(cuda, rows, dtype):
    """A 2048-wide model's gate/up (8192 columns) and a ragged one (K and N not multiples of a block):
    within the dtype's noise of the eager code, which rounds where the kernel does."""
    torch.manual_seed(0)
    for k, n in ((2048, 8192), (1000, 2730)):
        x = torch.randn(rows, k, device=cuda, dtype=dtype)
        g, u = (torch.randn(n, k, device=cuda, dtype=dtype) * 0.03 for _ in range(2))
        out, ref = swiglu(x, g, u), swiglu_eager(x.double(), g.double(), u.double())
        assert out.dtype == dtype and out.shape == (rows, n)
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (k, n, err)
