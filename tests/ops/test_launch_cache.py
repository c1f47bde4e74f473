"""The launch variants and the cached launch path of rms_norm and rope, without a GPU or the
interpreter: the Triton kernel is replaced by a stand-in that records what the JIT launch would
receive, and the stand-in's compiled kernel records what a cached launch passes to ``run``.

The contract checked: a cached launch calls ``compiled.run(grid, 1, 1, stream, function,
packed_metadata, None, None, None, *args)`` with ``args`` the same tuple, in the same order, the
JIT launch got (fresh outputs in the output slots); inputs the entry cannot serve (another shape,
non-contiguous, misaligned, launch hooks installed, explicit overrides, a variant without the
cache) go through the JIT."""

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
    monkeypatch.setattr(R, "_LAUNCHES", _utils.LaunchCache())
    monkeypatch.setattr(R, "_RESIDENT", {})
    return k


@pytest.fixture
def rope_kernel(monkeypatch):
    k = FakeKernel()
    monkeypatch.setattr(P, "_rope_fwd_kernel", k, raising=False)
    monkeypatch.setattr(P, "_LAUNCHES", _utils.LaunchCache())
    monkeypatch.setattr(P, "_RESIDENT", {})
    return k


def _same_args(cached_args, jit_args, outputs):
    """cached_args == jit_args position by position; tensors: the same object, except in the
    ``outputs`` slots (fresh tensors of the same shape and dtype)."""
    assert len(cached_args) == len(jit_args)
    for i, (a, b) in enumerate(zip(cached_args, jit_args)):
        if isinstance(b, torch.Tensor):
            if i in outputs:
                assert a is not b and a.shape == b.shape and a.dtype == b.dtype and a.is_contiguous()
            else:
                assert a is b, f"argument {i}"
        else:
            assert type(a) is type(b) and a == b, f"argument {i}: {a!r} != {b!r}"


@pytest.mark.parametrize("residual", [False, True])
def test_rms_cached_launch_repeats_the_jit_arguments(rms_kernel, residual):
    x = torch.randn(6, 64)
    w = torch.randn(64)
    r = torch.randn(6, 64) if residual else None
    R.rms_norm_triton(x, w, 1e-6, r, variant="s2+cached")
    assert len(rms_kernel.jit_calls) == 1 and len(R._LAUNCHES) == 1
    (grid,), jit_args, _ = rms_kernel.jit_calls[0]
    out = R.rms_norm_triton(x, w, 1e-6, r, variant="s2+cached")
    assert len(rms_kernel.jit_calls) == 1, "the second call must not go through the JIT"
    (call,) = rms_kernel.compiled.calls
    assert call[:9] == (grid, 1, 1, 0, "cufunction", (8, 1, 0), None, None, None)
    _same_args(call[9:], jit_args, outputs={3, 4} if residual else {3, 4})
    if residual:
        y, res_out = out
        assert call[9 + 3] is y and call[9 + 4] is res_out and call[9 + 1] is r
    else:
        assert call[9 + 3] is out and call[9 + 4] is out and call[9 + 1] is x


def test_rms_cache_misses(rms_kernel, monkeypatch):
    x = torch.randn(6, 64)
    w = torch.randn(64)
    R.rms_norm_triton(x, w, 1e-6, variant="s2+cached")
    R.rms_norm_triton(x, w, 1e-6, variant="s2+cached")
    assert len(rms_kernel.jit_calls) == 1 and len(rms_kernel.compiled.calls) == 1

    def jit_again(*args, **kw):
        before = len(rms_kernel.jit_calls)
        R.rms_norm_triton(*args, **kw)
        assert len(rms_kernel.jit_calls) == before + 1

    jit_again(torch.randn(7, 64), w, 1e-6, variant="s2+cached")  # another shape (then cached too)
    jit_again(torch.randn(64, 6).t(), w, 1e-6, variant="s2+cached")  # same shape, not contiguous
    mis = torch.randn(6 * 64 + 1)[1:].view(6, 64)  # contiguous, 4 bytes off 16-byte alignment
    jit_again(mis, w, 1e-6, variant="s2+cached")
    jit_again(x, torch.randn(128)[::2], 1e-6, variant="s2+cached")  # strided weight
    jit_again(x, w, 1e-6, variant="s2")  # a variant without the cache
    jit_again(x, w, 1e-6, variant="s2+cached", num_warps=4)  # overrides
    jit_again(x, w.half(), 1e-6, variant="s2+cached")  # another weight dtype: another key
    monkeypatch.setattr(R._utils, "launch_hooks_active", lambda: True)
    jit_again(x, w, 1e-6, variant="s2+cached")  # a launch hook installed (profiler)
    assert not any(k[0] == "s2" for k in R._LAUNCHES)
    assert len(rms_kernel.compiled.calls) == 1


def test_rms_persistent_grid(rms_kernel):
    """Persistent variants launch at most one wave: resident programs per SM (a default on CPU
    tensors, where no compiled kernel can be asked) times the SM count, never more than the blocks."""
    R.rms_norm_triton(torch.randn(5000, 64), torch.randn(64), 1e-6, variant="persistent")
    R.rms_norm_triton(torch.randn(100, 64), torch.randn(64), 1e-6, variant="persistent")
    R.rms_norm_triton(torch.randn(5000, 64), torch.randn(64), 1e-6, variant="persistent", programs=7)
    R.rms_norm_triton(torch.randn(5000, 64), torch.randn(64), 1e-6, variant="s2")
    block, rows, warps, loop = R._launch_params(5000, 64, 132)
    grids = [c[0][0] for c in rms_kernel.jit_calls]
    assert grids == [R.DEFAULT_PROGRAMS_PER_SM * 132, -(-100 // R._launch_params(100, 64, 132)[1]), 7,
                     -(-5000 // rows)]
    persistent_flags = [c[1][14] for c in rms_kernel.jit_calls]
    assert persistent_flags == [True, True, True, False]


def test_rms_evict_hints_and_chunked_path(rms_kernel):
    R.rms_norm_triton(torch.randn(4, 64), torch.randn(64), 1e-6, variant="evict")
    R.rms_norm_triton(torch.randn(2, 40000), torch.randn(40000), 1e-6, variant="persistent+evict")
    R.rms_norm_triton(torch.randn(4, 64), torch.randn(64), 1e-6, variant="evict-loads")
    R.rms_norm_triton(torch.randn(4, 64), torch.randn(64), 1e-6, variant="s2")
    (_, a, _), (_, b, _), (_, c, _), (_, d, _) = rms_kernel.jit_calls
    assert a[13:] == (False, False, True, "evict_first", "evict_last", "evict_first")
    assert c[13:] == (False, False, True, "evict_first", "evict_last", "")
    assert d[13:] == (False, False, False, "", "", "")
    # rows wider than MAX_FUSED_BLOCK: chunked, never persistent, no hints (pass 2 re-reads the row)
    assert b[13:] == (True, False, False, "", "", "")


def test_rms_variant_names(monkeypatch):
    assert R.VARIANT in R.VARIANTS and P.VARIANT in P.VARIANTS
    monkeypatch.setitem(R.VARIANTS, "bad", R.Variant(evict="some"))
    with pytest.raises(ValueError, match="evict='some'"):
        R.rms_norm_triton(torch.randn(2, 8), torch.randn(8), 1e-6, variant="bad")
    assert "VARIANT" in R.__doc__ and "VARIANT" in P.__doc__
    with pytest.raises(ValueError, match="unknown variant 'nope'; valid: s2, s2\\+cached"):
        R.rms_norm_triton(torch.randn(2, 8), torch.randn(8), 1e-6, variant="nope")
    with pytest.raises(ValueError, match="unknown variant 'nope'; valid: s2, s2\\+cached"):
        P.rope_triton(torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(3, 8), torch.randn(3, 8),
                      "rotate_half", "bhsd", variant="nope")


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("view", [False, True])
def test_rope_cached_launch_repeats_the_jit_arguments(rope_kernel, layout, view):
    B, S, Hq, Hk, D = 2, 5, 4, 2, 16
    other = view == (layout == "bhsd")
    shp = (lambda h: (B, S, h, D)) if other else (lambda h: (B, h, S, D))
    q, k = torch.randn(shp(Hq)), torch.randn(shp(Hk))
    if view:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = torch.randn(1, S, D), torch.randn(1, S, D)
    P.rope_triton(q, k, cos, sin, "rotate_half", layout, variant="evict")
    (grid,), jit_args, _ = rope_kernel.jit_calls[0]
    qo, ko = P.rope_triton(q, k, cos, sin, "rotate_half", layout, variant="evict")
    assert len(rope_kernel.jit_calls) == 1
    (call,) = rope_kernel.compiled.calls
    assert call[:9] == (grid, 1, 1, 0, "cufunction", (8, 1, 0), None, None, None)
    _same_args(call[9:], jit_args, outputs={4, 5})
    assert call[9 + 4] is qo and call[9 + 5] is ko and qo.is_contiguous() and ko.is_contiguous()


def test_rope_cache_misses(rope_kernel):
    B, S, Hq, Hk, D = 1, 4, 4, 2, 8
    q, k = torch.randn(B, Hq, S, D), torch.randn(B, Hk, S, D)
    cos, sin = torch.randn(S, D), torch.randn(S, D)

    def jit_again(*args, **kw):
        before = len(rope_kernel.jit_calls)
        P.rope_triton(*args, **kw)
        assert len(rope_kernel.jit_calls) == before + 1

    jit_again(q, k, cos, sin, "rotate_half", "bhsd")
    P.rope_triton(q, k, cos, sin, "rotate_half", "bhsd")
    assert len(rope_kernel.compiled.calls) == (1 if P.VARIANTS[P.VARIANT].cached_launch else 0)
    jit_again(q, k, cos, sin, "interleaved", "bhsd")  # another style
    strided = torch.randn(B, Hq, S, 2 * D)[..., ::2]  # D stride 2: copied, so never cached
    jit_again(strided, k, cos, sin, "rotate_half", "bhsd")
    jit_again(strided, k, cos, sin, "rotate_half", "bhsd")
    jit_again(q, k, cos, sin, "rotate_half", "bhsd", block_s=2)  # overrides
    mis = torch.randn(B * Hq * S * D + 2)[2:].view(B, Hq, S, D)
    jit_again(mis, k, cos, sin, "rotate_half", "bhsd", variant="s2+cached")
    jit_again(mis, k, cos, sin, "rotate_half", "bhsd", variant="s2+cached")


def test_rope_persistent_grid(rope_kernel):
    q, k = torch.randn(1, 32, 4096, 128), torch.randn(1, 8, 4096, 128)
    cos = sin = torch.randn(4096, 128)
    P.rope_triton(q, k, cos, sin, "rotate_half", "bhsd", variant="persistent+evict")
    P.rope_triton(q, k, cos, sin, "rotate_half", "bhsd", variant="evict")
    (g1, a1, _), (g2, a2, _) = rope_kernel.jit_calls
    n_tiles = a1[19]
    assert g1 == (min(n_tiles, P.DEFAULT_PROGRAMS_PER_SM * 132),) and g2 == (n_tiles,)
    assert a1[27:] == (True, "evict_first", "evict_last", "evict_first")
    assert a2[27:] == (False, "evict_first", "evict_last", "evict_first")


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


def test_resident_programs_needs_a_gpu():
    assert _utils.resident_programs(None, (), 4, -1) is None
