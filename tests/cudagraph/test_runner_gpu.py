"""Real CUDA graphs: capture, replay, padding, in-place buffers, address checks, fallback."""

from __future__ import annotations

import gc
import logging

import pytest
import torch

from regionc.config import Config
from regionc.cudagraph.capture import CudaGraphBackend, capture_graph
from regionc.cudagraph.runner import CudaGraphAddressError, GraphPool, PieceGraphRunner
from regionc.cudagraph.sizes import DynamicSpec
from regionc.report import Report

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SIZES = (1, 2, 4, 8, 16)


def make_pool(report=None, **options):
    return GraphPool(Config.build({"capture_sizes": SIZES, **options}, environ={}), report)


def linear_relu(x, w):
    return (torch.relu(x @ w),)


def linear_add(h, w, n):
    return (h @ w + 1.0,)


def build(pool, w1, w2, report=None, compiled=False):
    f1, f2 = linear_relu, linear_add
    if compiled:
        f1, f2 = torch.compile(f1, dynamic=True), torch.compile(f2, dynamic=True)
    first = PieceGraphRunner(f1, name="p0", static_input_indices={1}, pool=pool, report=report,
                             dynamic_inputs=DynamicSpec.make(inputs=[(0, 0)], outputs=[(0, 0)]),
                             mutated_inputs=set())
    last = PieceGraphRunner(f2, name="p1", static_input_indices={1}, pool=pool, report=report,
                            dynamic_inputs=DynamicSpec.make(inputs=[(0, 0)], int_args=[2], outputs=[(0, 0)]),
                            is_last=True, mutated_inputs=set())

    def run(x):
        with pool.forward(size=x.shape[0]):
            (h,) = first(x, w1)
            (out,) = last(h, w2, x.shape[0])
            return out

    return run, first, last


@pytest.mark.parametrize("compiled", [False, True])
def test_matches_eager_over_many_padded_sizes(compiled):
    torch.manual_seed(0)
    report = Report()
    pool = make_pool(report)
    w1 = torch.randn(32, 32, device="cuda")
    w2 = torch.randn(32, 32, device="cuda")
    run, first, last = build(pool, w1, w2, report, compiled)
    sizes = [3, 3, 3, 4, 1, 1, 1, 7, 5, 8, 6, 16, 9, 13, 2, 2, 2] * 3
    for n in sizes:
        x = torch.randn(n, 32, device="cuda")
        out = run(x)
        torch.testing.assert_close(out, torch.relu(x @ w1) @ w2 + 1.0, atol=1e-3, rtol=1e-3)
    stats = report.cudagraphs
    assert stats["graphs"] == 2 * 5  # buckets 1, 2, 4, 8, 16, two pieces each
    assert stats["private_pool_graphs"] == 0
    assert stats["pool_bytes"] >= 0 and stats["capture_s"] > 0
    # the second piece reads the first one's graph output in place
    assert all(not e.staged[0].owned for e in last._entries.values())


def test_final_output_not_overwritten_by_next_call():
    pool = make_pool()
    w1, w2 = torch.randn(16, 16, device="cuda"), torch.randn(16, 16, device="cuda")
    run, _, _ = build(pool, w1, w2)
    x1, x2 = torch.randn(4, 16, device="cuda"), torch.randn(4, 16, device="cuda")
    for _ in range(3):
        run(x1)  # warm-up, capture, replay
    out1 = run(x1)
    expected1 = out1.clone()
    out2 = run(x2)
    torch.cuda.synchronize()
    torch.testing.assert_close(out1, expected1)
    assert out1.data_ptr() != out2.data_ptr()


def test_pool_is_shared_between_pieces():
    pool = make_pool()
    calls = []
    real_capture = pool.backend.capture

    def spy(fn, args, handle):
        calls.append(handle)
        return real_capture(fn, args, handle)

    pool.backend.capture = spy
    w1, w2 = torch.randn(16, 16, device="cuda"), torch.randn(16, 16, device="cuda")
    run, _, _ = build(pool, w1, w2)
    for n in (4, 4, 4, 2, 2, 2):
        run(torch.randn(n, 16, device="cuda"))
    assert len(calls) == 4
    assert all(h == pool.handle for h in calls)


def test_shared_pool_renewed_once_its_graphs_are_gone():
    """A runner that drops its graphs leaves the shared pool with no user; the next capture into it
    must not trip the allocator's ``use_count > 0`` assert."""
    backend = CudaGraphBackend()
    x = torch.randn(8, 8, device="cuda")
    first = capture_graph(backend, lambda t: (t * 2,), (x,), private=False)
    old = backend.pool_handle(private=False)
    del first
    gc.collect()
    second = capture_graph(backend, lambda t: (t + 1,), (x,), private=False)
    assert backend.pool_handle(private=False) != old
    second.graph.replay()
    torch.testing.assert_close(second.out[0], x + 1)


def kv_step(cache, pos, k, q):
    cache.index_copy_(0, pos, k)
    return (q @ cache.t(), cache)


def test_inplace_kv_cache_update_persists_over_32_replays():
    torch.manual_seed(0)
    pool = make_pool()
    cache = torch.zeros(32, 8, device="cuda")
    reference = torch.zeros(32, 8, device="cuda")
    runner = PieceGraphRunner(kv_step, name="kv", static_input_indices={0}, pool=pool, is_last=True,
                              mutated_inputs={0})
    q = torch.randn(1, 8, device="cuda")
    for step in range(34):
        pos = torch.tensor([step % 32], device="cuda")
        k = torch.randn(1, 8, device="cuda")
        reference.index_copy_(0, pos, k)
        with pool.forward():
            scores, returned = runner(cache, pos, k, q)
        assert returned.data_ptr() == cache.data_ptr()  # aliases the static buffer: returned, not cloned
        torch.testing.assert_close(scores, q @ reference.t())
    torch.testing.assert_close(cache, reference)
    (entry,) = runner._entries.values()
    assert entry.graph is not None


def test_address_check_raises_on_swapped_weight():
    pool = make_pool(cudagraph_check_addresses=True)
    w = torch.randn(16, 16, device="cuda")
    runner = PieceGraphRunner(linear_relu, name="blk7", static_input_indices={1}, pool=pool, is_last=True,
                              mutated_inputs=set())
    x = torch.randn(2, 16, device="cuda")
    for _ in range(3):
        with pool.forward():
            runner(x, w)
    with pytest.raises(CudaGraphAddressError, match="blk7"):
        with pool.forward():
            runner(x, w.clone())


def syncing(x, w):
    scale = (x.abs().max() > 0).item()  # host sync: cannot be captured
    return (torch.relu(x @ w) * (2.0 if scale else 1.0),)


def test_item_in_piece_falls_back_with_log(caplog):
    report = Report()
    pool = make_pool(report)
    w = torch.randn(16, 16, device="cuda")
    runner = PieceGraphRunner(syncing, name="sync_piece", static_input_indices={1}, pool=pool, is_last=True,
                              mutated_inputs=set())
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for _ in range(5):
            x = torch.randn(2, 16, device="cuda")
            with pool.forward():
                (out,) = runner(x, w)
            torch.testing.assert_close(out, torch.relu(x @ w) * 2.0)
    assert sum("sync_piece" in r.getMessage() for r in caplog.records) == 1
    assert report.cudagraphs["graphs"] == 0 and report.cudagraphs["fallbacks"]
    # the device is still healthy, and other pieces still capture afterwards
    other = PieceGraphRunner(linear_relu, name="after", static_input_indices={1}, pool=pool, is_last=True,
                             mutated_inputs=set())
    x = torch.randn(2, 16, device="cuda")
    for _ in range(3):
        with pool.forward():
            (out,) = other(x, w)
    torch.testing.assert_close(out, torch.relu(x @ w))
    assert report.cudagraphs["graphs"] == 1


def test_above_max_runs_without_graphs():
    pool = make_pool()
    w1, w2 = torch.randn(16, 16, device="cuda"), torch.randn(16, 16, device="cuda")
    run, first, last = build(pool, w1, w2)
    for _ in range(3):
        x = torch.randn(40, 16, device="cuda")
        torch.testing.assert_close(run(x), torch.relu(x @ w1) @ w2 + 1.0, atol=1e-3, rtol=1e-3)
    assert not first._entries and not last._entries
