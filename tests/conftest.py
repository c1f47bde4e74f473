"""Session-wide test setup: one cache root for the whole session, fresh Dynamo per test."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def regionc_cache_root(tmp_path_factory):
    """All regionc, Inductor and Triton caches of the session live under one temporary root."""
    root = tmp_path_factory.mktemp("regionc-cache")
    os.environ["REGIONC_CACHE_DIR"] = str(root)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    return root


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
