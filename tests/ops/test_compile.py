"""All four regionc ops inside one torch.compile'd function (CPU: Inductor's C++ backend) give
exactly the eager result, under inference_mode, with static and dynamic (batch) shapes. One graph
for all ops keeps Inductor's compile cost paid once."""

import pytest
import torch


def block(x, res, w, q, k, v, cos, sin):
    h, res = torch.ops.regionc.fused_add_rms_norm(x, res, w, 1e-6)
    h = torch.ops.regionc.rms_norm(h, w, 1e-6)
    q, k = torch.ops.regionc.rope(q, k, cos, sin, "rotate_half", "bhsd")
    q2, k2 = torch.ops.regionc.rope(q, k, cos, sin, "interleaved", "bhsd")
    o = torch.ops.regionc.attention(q2, k2, v, True, None)
    return h, res, o


def inputs(gen, b=2, s=9, dtype=torch.bfloat16):
    r = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    return (r(b, s, 64), r(b, s, 64), r(64), r(b, 4, s, 32), r(b, 2, s, 32), r(b, 2, s, 32),
            torch.randn(1, s, 32, generator=gen), torch.randn(1, s, 32, generator=gen))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_matches_eager(dynamic, gen):
    torch._dynamo.reset()
    cf = torch.compile(block, backend="inductor", fullgraph=True, dynamic=dynamic)
    with torch.inference_mode():
        for b, s in ([(2, 9), (3, 5)] if dynamic else [(2, 9)]):
            args = inputs(gen, b, s)
            for got, want in zip(cf(*args), block(*args)):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
def test_compiled_matches_eager_cuda(gen, cuda):
    """Same graph on CUDA: Inductor calls the ops (Triton kernels; attention d32 takes its SDPA
    fallback) as fallback kernels; results match eager bit for bit."""
    torch._dynamo.reset()
    cf = torch.compile(block, fullgraph=True)
    with torch.inference_mode():
        args = tuple(t.to(cuda) for t in inputs(gen))
        for got, want in zip(cf(*args), block(*args)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
