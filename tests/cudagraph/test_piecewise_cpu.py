"""The backend's piecewise wiring on the CPU: real Dynamo graphs, real compiled pieces, a fake CUDA graph.

What is checked is what the GPU would see: which graphs get captured for which padded size, that
outputs equal eager across sizes and replays, and when padding must stay off.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from regionc.compiler.graph import GraphCompiler
from regionc.config import Config
from regionc.cudagraph.piecewise import install_cudagraphs, plan_cudagraphs
from regionc.models.llama import LlamaConfig, build_demo_model
from regionc.report import new_report
from tests.cudagraph.fakes import FakeBackend
from tests.helpers import NO_CACHE, assert_close

SIZES = (1, 2, 4, 8)


def compile_with_fake_graphs(model, fake: FakeBackend, reports: list, mode: str = "full"):
    """``torch.compile`` with regionc's compile + CUDA-graph wiring, the CUDA calls faked."""
    config = Config.build({**NO_CACHE, "capture_sizes": SIZES, "cudagraph_mode": mode}, environ={})

    def backend(gm, example_inputs):
        report = new_report()
        split, pieces, _ = GraphCompiler(config).compile(gm, example_inputs, report)
        reports.append(report)
        plan = plan_cudagraphs(gm, split, pieces, example_inputs, config)
        return install_cudagraphs(split, pieces, plan, config, report, backend=fake)

    return torch.compile(model, backend=backend, dynamic=False)


def run_batches(model, compiled, batches, make_input):
    for n in batches:
        x = make_input(n)
        torch._dynamo.mark_dynamic(x, 0)
        with torch.no_grad():
            assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


BATCHES = [3, 3, 4, 3, 2, 2, 6, 5, 8, 7, 2]


def tokens_of(n):
    return torch.randint(0, 128, (n, 5), generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("mode", ["full", "piecewise"])
def test_dynamic_batch_is_padded_to_the_next_capture_size(mode):
    model = build_demo_model(LlamaConfig.tiny(n_layers=2))
    fake, reports = FakeBackend(), []
    compiled = compile_with_fake_graphs(model, fake, reports, mode)
    run_batches(model, compiled, BATCHES, tokens_of)
    (report,) = reports  # one Dynamo graph serves every batch size
    stats = report.cudagraphs
    assert stats["padding"].startswith("batch size") and stats["mode"] == mode
    graphed = 1 if mode == "full" else len(report.pieces)  # one graph over all pieces, or one per piece
    # buckets 4 (n=3,4), 2 and 8 (n=6,5,8,7) were each seen twice or more: one graph each
    assert stats["graphs"] == 3 * graphed and fake.captures == 3 * graphed
    assert len(stats["captured"]) == graphed
    assert stats["private_pool_graphs"] == 0
    for per_size in stats["captured"].values():
        assert per_size == {"N=4": 1, "N=2": 1, "N=8": 1}
    assert fake.replays > 3 * graphed


class FailsFirstCapture(FakeBackend):
    def capture(self, fn, args, pool):
        if not self.handles:
            self.handles.append(pool)
            raise RuntimeError("operation not permitted when stream is capturing")
        return super().capture(fn, args, pool)


def test_failed_full_capture_falls_back_to_a_graph_per_piece(caplog):
    model = build_demo_model(LlamaConfig.tiny(n_layers=2))
    fake, reports = FailsFirstCapture(), []
    compiled = compile_with_fake_graphs(model, fake, reports, "full")
    with caplog.at_level(logging.WARNING, logger="regionc"):
        run_batches(model, compiled, BATCHES, tokens_of)
    stats = reports[0].cudagraphs
    assert stats["mode"] == "piecewise (full capture failed)"
    assert sum("graphing each piece instead" in r.getMessage() for r in caplog.records) == 1
    assert "all pieces" not in stats["captured"] and len(stats["captured"]) == len(reports[0].pieces)
    assert stats["private_pool_graphs"] == 0  # the pieces start their lifecycle over in the shared pool


def test_padding_stays_off_when_the_graph_reduces_over_the_batch(caplog):
    class CentersBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x - x.mean(dim=0)  # every row depends on every other: zero rows would change it

    model = CentersBatch().eval()
    fake, reports = FakeBackend(), []
    compiled = compile_with_fake_graphs(model, fake, reports)
    with caplog.at_level(logging.INFO, logger="regionc"):
        run_batches(model, compiled, [3, 3, 3, 4, 4, 4], lambda n: torch.randn(n, 8))
    assert "reduces over or drops the batch dim" in reports[0].cudagraphs["padding"]
    assert sum("without padding" in r.getMessage() for r in caplog.records) == 1
    captured = next(iter(reports[0].cudagraphs["captured"].values()))
    assert captured == {"static": 2}  # one exact-shape graph for n=3 and one for n=4, per piece


def test_padding_stays_off_when_the_graph_writes_a_static_buffer():
    class SlotWriter(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
            self.register_buffer("slots", torch.zeros(16, 8))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            rows = torch.arange(x.shape[0])
            self.slots.index_copy_(0, rows, x)  # padded rows would land in slots the caller owns
            return x * 2

    model, reference = SlotWriter().eval(), SlotWriter().eval()
    reference.load_state_dict(model.state_dict())
    fake, reports = FakeBackend(), []
    compiled = compile_with_fake_graphs(model, fake, reports)
    run_batches(reference, compiled, [3, 3, 3], lambda n: torch.randn(n, 8, generator=torch.Generator().manual_seed(1)))
    assert "writes static input" in reports[0].cudagraphs["padding"]
    torch.testing.assert_close(model.slots, reference.slots)
    assert model.slots[3:].abs().sum() == 0
