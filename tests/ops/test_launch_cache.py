"""How rms_norm and rope launch their Triton kernels, without a GPU or the interpreter: the kernel is
replaced by a stand-in that records what each launch receives (grid, arguments, options). Each call
goes through the Triton JIT with one program per tile and the arguments in the kernel's signature
order. Also the cached-launch helpers of ``_utils`` (``LaunchCache``, ``launch_hooks_active``) that
the Hopper attention kernel's cached launch relies on."""

import pytest
import torch

from regionc.ops import _utils
from regionc.ops import rms_norm as R
from regionc.ops import rope as P
from tests.ops.fakes import FakeKernel


@pytest.fixture
def rms_kernel(monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(R, "_rms_norm_fwd_kernel", k, raising=False)
    return k


@pytest.fixture
def rope_kernel(monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(P, "_rope_fwd_kernel", k, raising=False)
    return k


@pytest.mark.parametrize("residual", [False, True])
def test_rms_launch_every_call_through_the_jit(rms_kernel, residual):
    x = torch.randn(6, 64)
    w = torch.randn(64)
    r = torch.randn(6, 64) if residual else None
    outs = [R.rms_norm_triton(x, w, 1e-6, r) for _ in range(2)]
    assert len(rms_kernel.jit_calls) == 2, "no launch cache: every call goes through the JIT"
    assert not rms_kernel.compiled.calls
    block, rows, warps, loop = R._launch_params(6, 64, 132)
    for ((grid,), args, options), out in zip(rms_kernel.jit_calls, outs):
        assert grid == -(-6 // rows) and options == {"num_warps": warps}
        y, res_out = out if residual else (out, out)
        assert args[0] is x and args[1] is (r if residual else x) and args[2] is w
        assert args[3] is y and args[4] is res_out and y.shape == x.shape and y.is_contiguous()
        assert args[5:] == (64, 64, 6, 64, 1e-6, residual, rows, block, loop)
    if residual:
        assert outs[0][0] is not outs[1][0], "fresh outputs per call"


def test_rms_launch_strided_inputs_and_overrides(rms_kernel):
    """A row stride other than the hidden size is read in place, a non-unit last stride is copied;
    ``rows``/``num_warps`` and ``loop`` (one row per program, chunks of ``block_n``) override the heuristic."""
    big = torch.randn(10, 128)
    x = big[:, :64]  # row stride 128, unit last stride
    w = torch.randn(64)
    R.rms_norm_triton(x, w, 1e-6)
    (_, args, _) = rms_kernel.jit_calls[-1]
    assert args[0].data_ptr() == x.data_ptr() and args[5] == 128
    xt = torch.randn(64, 10).t()  # last stride 10: copied
    R.rms_norm_triton(xt, w, 1e-6)
    (_, args, _) = rms_kernel.jit_calls[-1]
    assert args[0].is_contiguous() and torch.equal(args[0], xt) and args[5] == 64
    R.rms_norm_triton(torch.randn(9, 64), w, 1e-6, rows=4, num_warps=2)
    (grid,), args, options = rms_kernel.jit_calls[-1]
    assert grid == 3 and args[11] == 4 and not args[13] and options == {"num_warps": 2}
    R.rms_norm_triton(torch.randn(3, 50), torch.randn(50), 1e-6, rows=4, loop=True, block_n=16)
    (grid,), args, _ = rms_kernel.jit_calls[-1]
    assert grid == 3 and args[11:] == (1, 16, True)
    # rows wider than MAX_FUSED_BLOCK take the chunked path on their own
    R.rms_norm_triton(torch.randn(2, R.MAX_FUSED_BLOCK + 8), torch.randn(R.MAX_FUSED_BLOCK + 8), 1e-6)
    (grid,), args, _ = rms_kernel.jit_calls[-1]
    assert grid == 2 and args[11:] == (1, 4096, True)


def test_rms_empty_launches_nothing(rms_kernel):
    y, res = R.rms_norm_triton(torch.randn(0, 64), torch.randn(64), 1e-6, torch.randn(0, 64))
    assert y.shape == (0, 64) and res.shape == (0, 64) and not rms_kernel.jit_calls


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("view", [False, True])
def test_rope_launch_every_call_through_the_jit(rope_kernel, layout, view):
    """Strides are passed as the tensors have them (a transpose view is read in place), outputs are
    contiguous in the layout, one program per (batch, token block, head group)."""
    B, S, Hq, Hk, D = 2, 5, 4, 2, 16
    other = view == (layout == "bhsd")
    shp = (lambda h: (B, S, h, D)) if other else (lambda h: (B, h, S, D))
    q, k = torch.randn(shp(Hq)), torch.randn(shp(Hk))
    if view:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = torch.randn(1, S, D), torch.randn(1, S, D)
    outs = [P.rope_triton(q, k, cos, sin, "rotate_half", layout) for _ in range(2)]
    assert len(rope_kernel.jit_calls) == 2 and not rope_kernel.compiled.calls
    bs, bhq, bhk, groups, warps = P._launch_params(B, S, Hq, Hk, D, False, 132)
    n_sblocks = -(-S // bs)
    h, s_ = (1, 2) if layout == "bhsd" else (2, 1)
    for ((grid,), args, options), (qo, ko) in zip(rope_kernel.jit_calls, outs):
        assert grid == B * n_sblocks * groups and options == {"num_warps": warps}
        assert args[0] is q and args[1] is k and args[2] is cos and args[3] is sin
        assert args[4] is qo and args[5] is ko and qo.is_contiguous() and ko.is_contiguous()
        assert qo.shape == q.shape and ko.shape == k.shape
        qst, kst = q.stride(), k.stride()
        assert args[6:14] == (qst[0], qst[s_], qst[h], kst[0], kst[s_], kst[h], 0, D)  # cos broadcast over batch
        assert args[14:19] == (S, Hq, Hk, n_sblocks, groups)
        assert args[19:] == (D, D // 2, bs, bhq, bhk, False, layout == "bhsd")


def test_rope_launch_copies_and_overrides(rope_kernel):
    B, S, Hq, Hk, D = 1, 7, 6, 3, 16
    q, k = torch.randn(B, Hq, S, D), torch.randn(B, Hk, S, D)
    cos, sin = torch.randn(S, D), torch.randn(S, D)
    strided = torch.randn(B, Hq, S, 2 * D)[..., ::2]  # D stride 2: copied
    P.rope_triton(strided, k, cos, sin, "interleaved", "bhsd")
    (_, args, _) = rope_kernel.jit_calls[-1]
    assert args[0].is_contiguous() and torch.equal(args[0], strided) and args[12:14] == (0, D)
    assert args[19:21] == (D, D) and args[24] is True  # interleaved: the tile spans the whole head dim
    P.rope_triton(q, k, cos, sin, "rotate_half", "bhsd", block_s=4, heads_per_block=2, num_warps=2)
    (grid,), args, options = rope_kernel.jit_calls[-1]
    # 3 q-head groups of 2 (k: 1 head per group), 2 token blocks of 4
    assert args[17:19] == (2, 3) and args[21:24] == (4, 2, 1) and grid == 6 and options == {"num_warps": 2}


def test_launch_cache_is_bounded():
    c = _utils.LaunchCache(limit=3)
    for i in range(7):
        c.put(i, i)
    assert len(c) <= 3 and c[6] == 6


def test_launch_hooks_active_follows_triton_knobs():
    knobs = pytest.importorskip("triton.knobs")
    assert not _utils.launch_hooks_active()
    hook = knobs.runtime.launch_enter_hook

    def f(*a):
        return None

    if hasattr(hook, "add"):  # triton >= 3.6: a HookChain
        hook.add(f)
        try:
            assert _utils.launch_hooks_active()
        finally:
            hook.remove(f)
    else:
        knobs.runtime.launch_enter_hook = f
        try:
            assert _utils.launch_hooks_active()
        finally:
            knobs.runtime.launch_enter_hook = hook
    assert not _utils.launch_hooks_active()
