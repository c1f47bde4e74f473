"""Fixtures for the regionc op tests (tests/ops)."""

import pytest
import torch

import regionc.ops  # noqa: F401  (registers torch.ops.regionc.*)

# ‖out − ref64‖ / ‖ref64‖ thresholds, by output dtype
REL_TOL = {torch.float32: 2e-5, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}
# attention rounds P to the input dtype before the PV product: a little looser
ATTN_REL_TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.fixture
def rel_err():
    """rel_err(out, ref) -> ‖out − ref‖ / ‖ref‖ computed in float64."""
    return _rel_err


@pytest.fixture
def assert_rel():
    """assert_rel(out, ref, dtype, table=REL_TOL): shape check + relative-error threshold by dtype."""

    def check(out, ref, dtype, attention=False):
        assert out.shape == ref.shape, (out.shape, ref.shape)
        assert out.dtype == dtype, (out.dtype, dtype)
        err = _rel_err(out, ref)
        tol = (ATTN_REL_TOL if attention else REL_TOL)[dtype]
        assert err <= tol, f"relative error {err:.3g} > {tol:g} ({dtype})"

    return check


@pytest.fixture
def gen():
    """A seeded CPU generator (reproducible random inputs)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def cuda():
    """Skips the test without CUDA; returns the device."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")
