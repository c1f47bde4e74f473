"""CPU dispatch: the C++ kernels of regionc._C (when built) against the torch references; the
package without the extension (REGIONC_NO_EXTENSION=1, subprocess); and loading the .so before the
Python op definitions (subprocess)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from regionc.ops import _extension
from regionc.ops.rms_norm import fused_add_rms_norm_reference, rms_norm_reference
from regionc.ops.rope import rope_reference

needs_ext = pytest.mark.skipif(
    not _extension.available(),
    reason=f"regionc._C not loaded ({_extension.reason()}); build it with "
    "`pip install --no-build-isolation --no-deps -e .`",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _run(code: str, **env):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@needs_ext
@pytest.mark.parametrize("op", _extension.CPP_OPS)
def test_cpu_kernels_are_the_cpp_ones(op):
    dump = torch._C._dispatch_dump(f"regionc::{op}")
    cpu = [line for line in dump.splitlines() if line.startswith("CPU:")]
    assert cpu and "csrc/" in cpu[0], dump


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (2, 5, 128), (2, 8192)])
def test_cpp_rms_norm_matches_reference(shape, dtype, gen, rel_err):
    x = torch.randn(shape, generator=gen).to(dtype)
    r = torch.randn(shape, generator=gen).to(dtype)
    w = torch.randn(shape[-1], generator=gen)  # fp32 weight for every x dtype
    out = torch.ops.regionc.rms_norm(x, w, 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out, rms_norm_reference(x, w, 1e-5)) < (1e-6 if dtype == torch.float32 else 4e-3)
    n, nr = torch.ops.regionc.fused_add_rms_norm(x, r, w, 1e-5)
    rn, rr = fused_add_rms_norm_reference(x, r, w, 1e-5)
    assert torch.equal(nr, rr)
    assert rel_err(n, rn) < (1e-6 if dtype == torch.float32 else 4e-3)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("style", ["rotate_half", "interleaved"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_cpp_rope_matches_reference(layout, style, dtype, gen):
    qs, ks = ((2, 6, 5, 32), (2, 3, 5, 32)) if layout == "bhsd" else ((2, 5, 6, 32), (2, 5, 3, 32))
    q = torch.randn(qs, generator=gen).to(dtype)
    k = torch.randn(ks, generator=gen).to(dtype)
    cos, sin = torch.randn(2, 5, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    got = torch.ops.regionc.rope(q, k, cos, sin, style, layout)
    want = rope_reference(q, k, cos, sin, style, layout)
    for g, w in zip(got, want):
        # same fp32 formula; only fused-multiply-add contraction may differ: <= 1 ulp of the dtype
        torch.testing.assert_close(g, w, rtol=1e-6 if dtype == torch.float32 else 8e-3, atol=1e-5)


def test_without_extension_uses_reference():
    out = _run(
        """
        import logging, torch
        logging.basicConfig(level=logging.INFO)
        import regionc.ops
        from regionc.ops import _extension
        assert not regionc.ops.extension_loaded()
        assert _extension.reason() == "REGIONC_NO_EXTENSION=1"
        assert "csrc/" not in torch._C._dispatch_dump("regionc::rms_norm")
        x, w = torch.randn(3, 40, dtype=torch.bfloat16), torch.randn(40)
        y = torch.ops.regionc.rms_norm(x, w, 1e-6)
        ref = (x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double())
        assert ((y.double() - ref).norm() / ref.norm()) < 1e-2
        n, r = torch.ops.regionc.fused_add_rms_norm(x, x, w, 1e-6)
        assert torch.equal(r, x + x)
        q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
        c, s = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
        qo, ko = torch.ops.regionc.rope(q, k, c, s, "interleaved", "bhsd")
        assert qo.shape == q.shape and ko.shape == k.shape
        try:
            torch.ops.regionc.rope(q, k, c, s, "bad", "bhsd")
        except ValueError as e:
            assert "style" in str(e)
        else:
            raise AssertionError("no error")
        print("OK-NOEXT")
        """,
        REGIONC_NO_EXTENSION="1",
    )
    assert "OK-NOEXT" in out
    assert "regionc._C not loaded" in out  # said once, through the "regionc" logger


@needs_ext
def test_extension_loaded_before_python_definitions():
    out = _run(
        """
        import torch
        import regionc._C           # TORCH_LIBRARY_IMPL(regionc, CPU) before the schemas exist
        import regionc.ops          # torch.library.custom_op defines them afterwards
        assert regionc.ops.extension_loaded()
        x = torch.randn(2, 16)
        torch.testing.assert_close(torch.ops.regionc.rms_norm(x, torch.ones(16), 1e-6),
                                   regionc.ops.rms_norm_reference(x, torch.ones(16), 1e-6))
        print("OK-ORDER")
        """
    )
    assert "OK-ORDER" in out
