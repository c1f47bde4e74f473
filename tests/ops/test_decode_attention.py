"""regionc.decode_attention: the CPU kernel and the fake kernel against SDPA (the Triton kernels under the
interpreter: interpret_decode_attention.py, run by test_triton_interpret.py), argument checks, and on CUDA
(``gpu``) the kernel against SDPA in bf16 across cache positions and inside a captured CUDA graph."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from regionc.ops.decode_attention import decode_attention_reference

op = torch.ops.regionc.decode_attention


def sdpa(q, k, v, mask=None, kv_len=None, scale=None):
    """SDPA in fp32 with enable_gqa (no copies), kv_len folded into a bool mask (decode: Lq = 1)."""
    if kv_len is not None:
        lens = torch.arange(k.shape[2], device=q.device).view(1, 1, 1, -1) < kv_len.view(-1, 1, 1, 1)
        mask = lens if mask is None else mask & lens
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale,
                                          enable_gqa=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, d", [((8, 2), 64), ((4, 4), 128), ((6, 1), 64)])
def test_cpu_kernel_matches_sdpa(dtype, heads, d, gen, assert_rel):
    hq, hkv = heads
    q = torch.randn(3, hq, 1, d, generator=gen).to(dtype)
    k = torch.randn(3, hkv, 40, d, generator=gen).to(dtype)
    v = torch.randn(3, hkv, 40, d, generator=gen).to(dtype)
    kv_len = torch.tensor([1, 17, 40])
    assert_rel(op(q, k, v, None, kv_len, None), sdpa(q, k, v, kv_len=kv_len).to(dtype), dtype, attention=True)
    mask = torch.rand(3, 1, 1, 40, generator=gen) > 0.3
    mask[..., 0] = True
    assert_rel(op(q, k, v, mask, None, 0.3), sdpa(q, k, v, mask, scale=0.3).to(dtype), dtype, attention=True)
    additive = torch.zeros(1, 1, 1, 40).masked_fill(~mask[:1], float("-inf")).to(dtype)
    assert_rel(op(q, k, v, additive, kv_len, None), sdpa(q, k, v, ~additive.isinf(), kv_len).to(dtype), dtype,
               attention=True)


def test_reference_causal_tail_and_empty_rows():
    """kv_len with Lq > 1 is bottom-right causal; a row with no key is zeros, not NaN."""
    q, k, v = torch.randn(2, 4, 3, 64), torch.randn(2, 2, 10, 64), torch.randn(2, 2, 10, 64)
    out = op(q, k, v, None, torch.tensor([7, 0], dtype=torch.int32), None)
    rows = torch.arange(10).view(1, 10) < (7 - 2 + torch.arange(3)).view(3, 1)
    ref = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=rows, enable_gqa=True)
    torch.testing.assert_close(out[:1], ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_fake_kernel_and_compile():
    with FakeTensorMode():
        q, k = torch.empty(2, 8, 1, 64, dtype=torch.bfloat16), torch.empty(2, 2, 300, 64, dtype=torch.bfloat16)
        out = op(q, k, k, torch.empty(2, 1, 1, 300, dtype=torch.bool), None, None)
        assert out.shape == (2, 8, 1, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()

    def fn(q, k, v, lens):
        return op(q, k, v, None, lens, None) * 2

    args = (torch.randn(2, 4, 1, 64), torch.randn(2, 2, 16, 64), torch.randn(2, 2, 16, 64), torch.tensor([3, 16]))
    torch.testing.assert_close(torch.compile(fn, backend="inductor")(*args), fn(*args))


@pytest.mark.parametrize("args, exc, msg", [
    (lambda q, k: (q, k[:, :1].expand(2, 3, 16, 64), k, None, None), ValueError, "v_cache heads"),
    (lambda q, k: (q, k[:, :, :, :32], k[:, :, :, :32], None, None), ValueError, "head_dim"),
    (lambda q, k: (torch.randn(2, 5, 1, 64), k, k, None, None), ValueError, "multiple of cache heads"),
    (lambda q, k: (q, k, k, torch.ones(2, 4, 1, 16, dtype=torch.bool), None), ValueError, "broadcast"),
    (lambda q, k: (q, k, k, torch.ones(2, 1, 1, 16, dtype=torch.int32), None), TypeError, "bool or float"),
    (lambda q, k: (q, k, k, None, torch.tensor([1.0, 2.0])), TypeError, "int32 or int64"),
    (lambda q, k: (q, k, k, None, torch.tensor([1, 2, 3])), ValueError, "kv_len"),
    (lambda q, k: (q, k.half(), k, None, None), TypeError, "share a dtype"),
])
def test_argument_errors_name_the_argument(args, exc, msg):
    q, k = torch.randn(2, 4, 1, 64), torch.randn(2, 2, 16, 64)
    with pytest.raises(exc, match=msg):
        op(*args(q, k), None)


def test_forward_only():
    q = torch.randn(1, 2, 1, 64, requires_grad=True)
    k = torch.randn(1, 1, 8, 64)
    with pytest.raises(RuntimeError, match="forward-only"):
        op(q, k, k, None, None, None)


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("batch, heads", [(1, (32, 8)), (8, (32, 8)), (3, (8, 8)), (4, (28, 4))])
def test_cuda_bf16_matches_sdpa_across_positions(cuda, batch, heads, d):
    hq, hkv = heads
    seq = 4096
    torch.manual_seed(0)
    q = torch.randn(batch, hq, 1, d, device=cuda, dtype=torch.bfloat16)
    k = torch.randn(batch, hkv, seq, d, device=cuda, dtype=torch.bfloat16)
    v = torch.randn(batch, hkv, seq, d, device=cuda, dtype=torch.bfloat16)
    for pos in (0, 1, 63, 64, 511, 1000, 3900, seq - 1):
        kv_len = torch.full((batch,), pos + 1, device=cuda, dtype=torch.int32)
        kv_len[0] = max(1, pos // 3)  # ragged batch
        ref = sdpa(q, k, v, kv_len=kv_len)
        mask = torch.arange(seq, device=cuda).view(1, 1, 1, seq) < kv_len.view(-1, 1, 1, 1)
        for out in (op(q, k, v, None, kv_len, None), op(q, k, v, mask, None, None),
                    op(q, k, v, torch.zeros(mask.shape, device=cuda, dtype=torch.bfloat16).masked_fill(~mask, float("-inf")),
                       None, None)):
            err = ((out.float() - ref).norm() / ref.norm()).item()
            assert err < 2e-2, (pos, err)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_other_dtypes_and_lq(cuda, dtype):
    torch.manual_seed(0)
    q = torch.randn(2, 16, 4, 128, device=cuda, dtype=dtype)
    k = torch.randn(2, 4, 1000, 128, device=cuda, dtype=dtype)
    v = torch.randn(2, 4, 1000, 128, device=cuda, dtype=dtype)
    kv_len = torch.tensor([700, 1000], device=cuda)
    out = op(q, k, v, None, kv_len, 0.1)
    ref = decode_attention_reference(q, k, v, None, kv_len, 0.1, compute_dtype=torch.float64)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < (1e-4 if dtype == torch.float32 else 3e-3), err


@pytest.mark.gpu
def test_cuda_graph_replay_follows_kv_len_and_mask(cuda):
    """Captured once, replayed with other lengths/mask values in the same buffers: no host sync,
    no shape-dependent branch on values, the split workspace from the graph's pool."""
    torch.manual_seed(0)
    q = torch.randn(8, 32, 1, 64, device=cuda, dtype=torch.bfloat16)
    k = torch.randn(8, 8, 4096, 64, device=cuda, dtype=torch.bfloat16)
    v = torch.randn(8, 8, 4096, 64, device=cuda, dtype=torch.bfloat16)
    kv_len = torch.full((8,), 512, device=cuda, dtype=torch.int32)
    mask = torch.ones(8, 1, 1, 4096, device=cuda, dtype=torch.bool)
    for _ in range(2):  # compile outside the capture
        op(q, k, v, mask, kv_len, None)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(q, k, v, mask, kv_len, None)
    for pos, hole in ((512, 0), (3900, 100), (17, 5)):
        kv_len.fill_(pos)
        mask.fill_(True)
        mask[..., :hole] = False
        graph.replay()
        ref = sdpa(q, k, v, mask, kv_len)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 2e-2, (pos, err)
