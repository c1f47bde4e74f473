"""Pass tests: Inductor's FX/AOT caches would skip the post-grad pass (no graph to look at)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def passes_always_run(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
