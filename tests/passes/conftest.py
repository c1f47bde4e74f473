"""Pass tests: Inductor's FX/AOT caches would skip the post-grad pass (no graph to look at)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def passes_always_run():
    # Config modules' own patch(): pytest's monkeypatch can delete a config entry on undo
    # (pytest 9.2 reads the old value from the module __dict__, where config entries do not live).
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield
