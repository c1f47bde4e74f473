"""regionc::rms_norm and regionc::fused_add_rms_norm: numerics vs a float64 reference (CPU kernel:
C++ when built, torch reference otherwise), validation, torch.compile, inference_mode, autograd
refusal, and CUDA (Triton) numerics + CUDA-graph capture (marked gpu)."""

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 8), (3, 17), (2, 5, 64), (7, 1000), (4, 4096), (2, 16384), (2, 3, 4, 96)]
EPS = 1e-6


def ref64(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def make(shape, dtype, gen, wdtype=None, device="cpu"):
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(wdtype or dtype)
    return x.to(device), w.to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_cpu(shape, dtype, gen, assert_rel):
    x, w = make(shape, dtype, gen)
    out = torch.ops.regionc.rms_norm(x, w, EPS)
    assert out.is_contiguous()
    assert_rel(out, ref64(x, w, EPS), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rms_norm_fp32_weight(dtype, gen, assert_rel):
    x, w = make((6, 300), dtype, gen, wdtype=torch.float32)
    assert_rel(torch.ops.regionc.rms_norm(x, w, 1e-5), ref64(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 8), (3, 17), (2, 5, 128), (2, 4096)])
def test_fused_add_rms_norm_cpu(shape, dtype, gen, assert_rel):
    x, w = make(shape, dtype, gen)
    r = torch.randn(shape, generator=gen).to(dtype)
    x0, r0 = x.clone(), r.clone()
    out, new_res = torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
    assert torch.equal(x, x0) and torch.equal(r, r0), "must not modify its inputs"
    assert torch.equal(new_res, x + r), "new_residual must be x + residual in x's dtype (eager's rounding)"
    assert_rel(out, ref64(x + r, w, EPS), dtype)


def test_non_contiguous_input(gen, assert_rel):
    x = torch.randn(64, 10, generator=gen).t()  # [10, 64], stride (1, 10)
    w = torch.randn(64, generator=gen)
    assert_rel(torch.ops.regionc.rms_norm(x, w, EPS), ref64(x, w, EPS), torch.float32)


def test_inference_mode_and_no_grad(gen, assert_rel):
    x, w = make((4, 64), torch.bfloat16, gen)
    with torch.inference_mode():
        out = torch.ops.regionc.rms_norm(x, w, EPS)
        out2, _ = torch.ops.regionc.fused_add_rms_norm(x, x, w, EPS)
    assert_rel(out, ref64(x, w, EPS), torch.bfloat16)
    assert_rel(out2, ref64(x + x, w, EPS), torch.bfloat16)
    w.requires_grad_(True)
    with torch.no_grad():
        torch.ops.regionc.rms_norm(x, w, EPS)


def test_requires_grad_raises(gen):
    x, w = make((4, 64), torch.float32, gen)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.rms_norm(x, w, EPS)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.fused_add_rms_norm(x, x, w, EPS)


@pytest.mark.parametrize(
    "make_args, exc, match",
    [
        (lambda: (torch.randn(4, 8), torch.randn(7)), ValueError, "weight has 7 elements"),
        (lambda: (torch.randn(4, 8), torch.randn(2, 8)), ValueError, "weight must be 1-D"),
        (lambda: (torch.randn(4, 8, dtype=torch.float64), torch.randn(8)), TypeError, "x must be float16"),
        (lambda: (torch.randn(4, 8), torch.randn(8).to(torch.int32)), TypeError, "weight must be float16"),
    ],
)
def test_rms_norm_bad_inputs(make_args, exc, match):
    x, w = make_args()
    with pytest.raises(exc, match=match):
        torch.ops.regionc.rms_norm(x, w, EPS)


def test_fused_add_bad_inputs():
    x, w = torch.randn(4, 8), torch.randn(8)
    with pytest.raises(ValueError, match="residual shape"):
        torch.ops.regionc.fused_add_rms_norm(x, torch.randn(4, 9), w, EPS)
    with pytest.raises(TypeError, match="residual dtype"):
        torch.ops.regionc.fused_add_rms_norm(x, x.half(), w, EPS)


def test_fake_kernel_validates_under_compile():
    torch._dynamo.reset()
    cf = torch.compile(lambda x, w: torch.ops.regionc.rms_norm(x, w, EPS), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="weight has 7 elements"):
        cf(torch.randn(4, 8), torch.randn(7))


# ------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(8, 4096), (3, 40000), (5, 128), (20000, 64), (4096, 200)])
def test_rms_norm_cuda(shape, dtype, gen, cuda, assert_rel):
    x, w = make(shape, dtype, gen, device=cuda)
    assert_rel(torch.ops.regionc.rms_norm(x, w, EPS), ref64(x, w, EPS), dtype)
    r = torch.randn(shape, generator=gen).to(dtype).to(cuda)
    out, new_res = torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
    torch.testing.assert_close(new_res, x + r, rtol=0, atol=0)
    assert_rel(out, ref64(x + r, w, EPS), dtype)


@pytest.mark.gpu
def test_rms_norm_cuda_fp32_weight(gen, cuda, assert_rel):
    x, w = make((33, 2048), torch.bfloat16, gen, wdtype=torch.float32, device=cuda)
    assert_rel(torch.ops.regionc.rms_norm(x, w, EPS), ref64(x, w, EPS), torch.bfloat16)


@pytest.mark.gpu
def test_rms_norm_cuda_graph(gen, cuda, assert_rel):
    x, w = make((16, 4096), torch.bfloat16, gen, device=cuda)
    r = torch.randn_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (compiles the Triton kernels) outside capture
        for _ in range(2):
            torch.ops.regionc.rms_norm(x, w, EPS)
            torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = torch.ops.regionc.rms_norm(x, w, EPS)
        n, res = torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        r.copy_(torch.randn_like(r))
        g.replay()
        torch.cuda.synchronize()
        assert_rel(y, ref64(x, w, EPS), torch.bfloat16)
        torch.testing.assert_close(res, x + r, rtol=0, atol=0)
        assert_rel(n, ref64(x + r, w, EPS), torch.bfloat16)


@pytest.mark.gpu
def test_rms_norm_cuda_compile(gen, cuda):
    torch._dynamo.reset()
    x, w = make((4, 7, 256), torch.bfloat16, gen, device=cuda)
    f = lambda x, w: torch.ops.regionc.rms_norm(x, w, EPS) + 1  # noqa: E731
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, w), f(x, w), rtol=0, atol=0)


@pytest.mark.parametrize("rows", [1, 8, 64, 1000, 4096, 32768])
@pytest.mark.parametrize("n", [8, 17, 128, 1000, 4096, 8192, 16384, 40000])
def test_rms_launch_params(rows, n):
    """Heuristic sanity: the fused tile covers the row (else the chunked loop), powers of two,
    several rows per program only for narrow rows, cached per row-count bucket."""
    from regionc.ops.rms_norm import MAX_FUSED_BLOCK, _launch_params

    block, rws, warps, loop = _launch_params(rows, n, 132)
    for v in (block, rws, warps):
        assert v & (v - 1) == 0
    assert 1 <= warps <= 32
    if loop:
        assert n > MAX_FUSED_BLOCK and rws == 1
    else:
        assert block >= n
        assert rws == 1 or block < 1024
    assert _launch_params(rows, n, 132) is _launch_params(rows, n, 132)


@pytest.mark.gpu
def test_rms_norm_cuda_requires_grad_raises(gen, cuda):
    x, w = make((4, 64), torch.float32, gen, device=cuda)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.rms_norm(x, w, EPS)
    with pytest.raises(RuntimeError, match="forward-only"):
        torch.ops.regionc.fused_add_rms_norm(x, x, w, EPS)
    with torch.inference_mode():
        torch.ops.regionc.rms_norm(x, w, EPS)


@pytest.mark.gpu
def test_rms_norm_cuda_strided(gen, cuda, assert_rel):
    """Row stride != hidden (read in place) and a non-unit last stride (copied)."""
    big = torch.randn(33, 2 * 256, generator=gen).bfloat16().to(cuda)
    x = big[:, :256]
    r = big[:, ::2]
    w = torch.randn(256, generator=gen).bfloat16().to(cuda)
    assert_rel(torch.ops.regionc.rms_norm(x, w, EPS), ref64(x, w, EPS), torch.bfloat16)
    out, res = torch.ops.regionc.fused_add_rms_norm(x, r, w, EPS)
    torch.testing.assert_close(res, x + r, rtol=0, atol=0)
    assert_rel(out, ref64(x + r, w, EPS), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 7, 2048), (64, 4096)])
def test_rms_norm_cuda_repeat_and_misaligned(shape, gen, cuda, assert_rel):
    """Each call goes through the Triton JIT: a repeat call on the same tensors, then an input 2
    bytes off 16-byte alignment (another specialisation of the kernel), give the right answer."""
    x, w = make(shape, torch.bfloat16, gen, device=cuda)
    r = torch.randn(shape, generator=gen).bfloat16().to(cuda)
    mis = torch.randn(x.numel() + 1, generator=gen).bfloat16().to(cuda)[1:].view(shape)
    assert mis.data_ptr() % 16
    for xi in (x, x, mis):
        assert_rel(torch.ops.regionc.rms_norm(xi, w, EPS), ref64(xi, w, EPS), torch.bfloat16)
        out, res = torch.ops.regionc.fused_add_rms_norm(xi, r, w, EPS)
        torch.testing.assert_close(res, xi + r, rtol=0, atol=0)
        assert_rel(out, ref64(xi + r, w, EPS), torch.bfloat16)
