"""The runner's logic on the CPU, through a fake backend that behaves like a CUDA graph (tests/cudagraph/fakes.py)."""

from __future__ import annotations

import logging
import operator

import pytest
import torch
import torch.fx

import regionc.logs
from regionc.blocks.writes import mutated_placeholders
from regionc.config import Config
from regionc.cudagraph.runner import (
    PAYING_REPLAYS,
    RECAPTURES,
    CudaGraphAddressError,
    GraphPool,
    PieceGraphRunner,
    should_use_cudagraphs,
)
from regionc.cudagraph.sizes import DynamicSpec
from regionc.report import Report
from tests.cudagraph.fakes import FakeBackend

SIZES = (1, 2, 4, 8)


def make_pool(backend=None, report=None, **options):
    config = Config.build({"capture_sizes": SIZES, **options}, environ={})
    return GraphPool(config, report, backend=backend or FakeBackend())


def linear_relu(x, w):
    return (torch.relu(x @ w),)


def linear_add(h, w, n):
    assert h.shape[0] == n  # ints are padded with the tensors
    return (h @ w + 1.0, n)


def two_piece_model(pool, w1, w2, report=None):
    spec1 = DynamicSpec.make(inputs=[(0, 0)], outputs=[(0, 0)])
    spec2 = DynamicSpec.make(inputs=[(0, 0)], int_args=[2], outputs=[(0, 0), (1, None)])
    first = PieceGraphRunner(linear_relu, name="p0", static_input_indices={1}, pool=pool, report=report,
                             dynamic_inputs=spec1, mutated_inputs=set())
    last = PieceGraphRunner(linear_add, name="p1", static_input_indices={1}, pool=pool, report=report,
                            dynamic_inputs=spec2, is_last=True, mutated_inputs=set())

    def run(x):
        with pool.forward(size=x.shape[0]):
            (h,) = first(x, w1)
            return last(h, w2, x.shape[0])

    return run, first, last


def eager(x, w1, w2):
    return torch.relu(x @ w1) @ w2 + 1.0


def test_lifecycle_warmup_capture_replay_and_padding():
    torch.manual_seed(0)
    backend, report = FakeBackend(), Report()
    pool = make_pool(backend, report)
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)
    run, first, last = two_piece_model(pool, w1, w2, report)
    for step, n in enumerate([3, 3, 3, 4, 2, 2, 3, 1, 1, 7, 5, 7, 8, 3]):
        x = torch.randn(n, 8)
        out, size = run(x)
        assert size == n and out.shape == (n, 8)
        torch.testing.assert_close(out, eager(x, w1, w2))
        if step == 0:
            assert backend.captures == 0  # first forward in bucket 4: warm-up only
        if step == 1:
            assert backend.captures == 2  # second: both pieces captured, in order
    # buckets seen twice or more: 4 (n=3,4), 2, 1, 8 (n=7,5,8) -> 4 graphs per piece
    assert report.cudagraphs["graphs"] == 8
    assert report.cudagraphs["captured"]["p0"] == {"N=1": 1, "N=2": 1, "N=4": 1, "N=8": 1}
    assert report.cudagraphs["private_pool_graphs"] == 0
    assert all(h is backend._shared for h in backend.handles)  # one shared pool for every piece and size
    assert backend.replays > 8


def test_second_piece_reads_first_output_in_place():
    pool = make_pool()
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)
    run, first, last = two_piece_model(pool, w1, w2)
    for _ in range(3):
        run(torch.randn(3, 8))
    (entry_first,) = first._entries.values()
    (entry_last,) = last._entries.values()
    assert entry_first.staged[0].owned  # the user's input is copied into a static buffer
    borrowed = entry_last.staged[0]
    assert not borrowed.owned  # p1's input buffer IS p0's graph output: no copy
    assert borrowed.buffer is entry_first.outputs[0]


def test_intermediate_outputs_are_graph_memory_last_outputs_are_clones():
    pool = make_pool()
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)
    run, first, _ = two_piece_model(pool, w1, w2)
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8)
    run(x1), run(x1)  # warm-up, capture
    with pool.forward(size=4):
        (h_a,) = first(x1, w1)
    with pool.forward(size=4):
        (h_b,) = first(x2, w1)
    assert h_a.data_ptr() == h_b.data_ptr()  # intermediate: the graph's own output, overwritten by replay
    out1, _ = run(x1)
    keep = out1.clone()
    out2, _ = run(x2)
    assert out1.data_ptr() != out2.data_ptr()
    torch.testing.assert_close(out1, keep)  # the user's result survives the next call
    torch.testing.assert_close(out2, eager(x2, w1, w2))


def kv_step(cache, pos, k):
    cache.index_copy_(0, pos, k)
    return cache.sum(dim=0, keepdim=True), cache


def test_inplace_static_buffer_update_persists_over_replays():
    pool = make_pool()
    cache = torch.zeros(32, 4)
    reference = torch.zeros(32, 4)
    runner = PieceGraphRunner(kv_step, name="kv", static_input_indices={0}, pool=pool, is_last=True)
    for step in range(32):
        pos, k = torch.tensor([step]), torch.full((1, 4), float(step + 1))
        reference.index_copy_(0, pos, k)
        with pool.forward():
            total, returned = runner(cache, pos, k)
        assert returned is cache or returned.data_ptr() == cache.data_ptr()  # aliases the static input: not cloned
        torch.testing.assert_close(total, reference.sum(dim=0, keepdim=True))
    torch.testing.assert_close(cache, reference)
    assert pool.backend.replays >= 30


def captured_linear_relu(pool, name):
    """A ``linear_relu`` piece with static weight (input 1), called 3 times (warmed up, captured): (runner, x, w)."""
    w = torch.randn(8, 8)
    runner = PieceGraphRunner(linear_relu, name=name, static_input_indices={1}, pool=pool)
    x = torch.randn(2, 8)
    for _ in range(3):
        with pool.forward():
            runner(x, w)
    return runner, x, w


def test_a_static_input_moved_after_its_graph_paid_is_captured_anew_every_time():
    backend = FakeBackend()
    pool = make_pool(backend)
    runner, x, w = captured_linear_relu(pool, "blk")
    for _ in range(RECAPTURES + 1):
        for _ in range(PAYING_REPLAYS):
            with pool.forward():
                runner(x, w)
        w.data = w.data * 2
        for _ in range(2):  # warm-up, capture
            with pool.forward():
                (out,) = runner(x, w)
            torch.testing.assert_close(out, torch.relu(x @ w))
    assert backend.captures == 2 + RECAPTURES and runner.capturable


def test_address_check_raises_when_a_static_input_moves():
    pool = make_pool(cudagraph_check_addresses=True)
    runner, x, w = captured_linear_relu(pool, "blk3")
    with pytest.raises(CudaGraphAddressError, match="static input 1 of piece blk3"):
        with pool.forward():
            runner(x, w.clone())


def test_a_static_input_whose_storage_moved_is_captured_anew_then_graphs_stop(caplog):
    """``p.data = ...`` (or a CPU-offload round trip) keeps the tensor but moves its storage, and a graph
    reads the address it was captured at (the fake graphs read the storage captured, as a GPU does): the
    piece warms up and captures anew, every call equal to eager; after ``RECAPTURES`` moves its graphs stop."""
    backend = FakeBackend()
    pool = make_pool(backend)
    runner, x, w = captured_linear_relu(pool, "blk")
    with caplog.at_level(logging.INFO, logger="regionc"):
        for _ in range(RECAPTURES + 1):
            w.data = w.data * 2  # the same tensor, new storage and values
            for _ in range(3):  # warm-up, capture, replay
                with pool.forward():
                    (out,) = runner(x, w)
                torch.testing.assert_close(out, torch.relu(x @ w))
    assert backend.captures == 1 + RECAPTURES
    assert not runner.capturable
    assert sum("static input 1 of piece blk moved" in r.getMessage() for r in caplog.records) == RECAPTURES + 1


def test_capture_failure_falls_back_with_one_log(caplog):
    report = Report()
    backend = FakeBackend(fail=RuntimeError("operation not permitted when stream is capturing\nmore"))
    pool = make_pool(backend, report)
    w = torch.randn(8, 8)
    runner = PieceGraphRunner(linear_relu, name="syncy", static_input_indices={1}, pool=pool, is_last=True)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for _ in range(5):
            x = torch.randn(3, 8)
            with pool.forward():
                (out,) = runner(x, w)
            torch.testing.assert_close(out, torch.relu(x @ w))
    lines = [r for r in caplog.records if "syncy" in r.getMessage()]
    assert len(lines) == 1 and "capture failed" in lines[0].getMessage()
    assert len(backend.handles) == 1  # no second attempt
    assert report.cudagraphs["graphs"] == 0
    assert report.cudagraphs["fallbacks"] and "syncy" in report.cudagraphs["fallbacks"][0]


def test_above_max_size_runs_eagerly_with_one_log(caplog):
    pool = make_pool()
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)
    run, first, last = two_piece_model(pool, w1, w2)
    with caplog.at_level(logging.INFO, logger="regionc"):
        for n in (9, 12, 9):
            x = torch.randn(n, 8)
            torch.testing.assert_close(run(x)[0], eager(x, w1, w2))
    assert pool.backend.captures == 0
    lines = [r.getMessage() for r in caplog.records if "above the largest capture size" in r.getMessage()]
    assert len(lines) == 2 and any("p0" in m for m in lines) and any("p1" in m for m in lines)


def test_call_outside_forward_runs_eagerly():
    pool = make_pool()
    w = torch.randn(8, 8)
    runner = PieceGraphRunner(linear_relu, name="loose", static_input_indices={1}, pool=pool)
    x = torch.randn(2, 8)
    for _ in range(3):
        torch.testing.assert_close(runner(x, w)[0], torch.relu(x @ w))
    assert pool.backend.captures == 0


def test_cpu_tensor_input_is_refused():
    backend = FakeBackend(accepts=lambda t: t.dtype != torch.int64)  # pretend int64 tensors are on the wrong device
    pool = make_pool(backend)
    runner = PieceGraphRunner(lambda x, i: (x[i],), name="gather", static_input_indices=set(), pool=pool)
    x, i = torch.randn(4, 2), torch.tensor([1, 2])
    for _ in range(3):
        with pool.forward():
            torch.testing.assert_close(runner(x, i)[0], x[i])
    assert backend.captures == 0 and runner._no_capture


def test_late_shape_is_captured_into_a_private_pool():
    backend = FakeBackend()
    pool = make_pool(backend)
    w = torch.randn(8, 8)
    runner = PieceGraphRunner(linear_relu, name="p", static_input_indices={1}, pool=pool)
    for rows in (2, 2, 2, 3, 3, 3):  # nothing dynamic: rows=3 is a new key after the capture forward
        x = torch.randn(rows, 8)
        with pool.forward():
            torch.testing.assert_close(runner(x, w)[0], torch.relu(x @ w))
    assert backend.captures == 2
    assert backend.handles[0] is backend._shared and backend.handles[1] is not backend._shared


def test_an_int_that_changes_on_every_call_turns_graphs_off_with_one_log(caplog):
    from regionc.cudagraph.runner import LATE_KEYS

    backend = FakeBackend()
    pool = make_pool(backend)
    w = torch.randn(8, 8)
    runner = PieceGraphRunner(lambda x, w, step: (x @ w + step,), name="p", static_input_indices={1}, pool=pool)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="regionc"):
        for step in range(2 * LATE_KEYS + 2):
            with pool.forward():
                torch.testing.assert_close(runner(x, w, step if step > 1 else 0)[0], x @ w + (step if step > 1 else 0))
    assert backend.captures == 1 and not runner.capturable
    warnings = [r.getMessage() for r in caplog.records if "no CUDA graphs for p" in r.getMessage()]
    assert len(warnings) == 1 and "argument(s) [2] change from call to call" in warnings[0]


def test_broadcast_and_strided_inputs_are_captured_in_their_layouts(caplog):
    """A compiled piece asserts the strides it was compiled for (an expanded mask, a strided view); its
    graph is captured on buffers of those layouts, and a call whose mask is not broadcast runs eagerly."""
    backend = FakeBackend()
    pool = make_pool(backend)
    w = torch.randn(8, 8)

    compiled_for = {"mask": (0, 1)}

    def piece(mask, x, w):  # asserts the layouts it was compiled for, as Inductor's assert_size_stride does
        assert mask.stride() == compiled_for["mask"] and x.stride() == (16, 2)
        return ((x @ w) * mask,)

    runner = PieceGraphRunner(piece, name="p", static_input_indices={2}, pool=pool)
    for _ in range(4):
        mask, x = torch.randn(1, 8).expand(4, 8), torch.randn(4, 16)[:, ::2]
        with pool.forward():
            torch.testing.assert_close(runner(mask, x, w)[0], (x @ w) * mask)
    assert backend.captures == 1 and runner.capturable
    dense, x = torch.randn(4, 8), torch.randn(4, 16)[:, ::2]
    compiled_for["mask"] = (8, 1)  # code for a dense mask (a replay would read one row of it)
    with caplog.at_level(logging.INFO, logger="regionc"), pool.forward():
        torch.testing.assert_close(runner(dense, x, w)[0], (x @ w) * dense)
    assert "cannot go where the graph reads it" in caplog.text


def test_static_piece_gets_one_graph_per_bucket():
    backend = FakeBackend()
    pool = make_pool(backend)
    w = torch.randn(8, 8)
    x = torch.randn(2, 8)
    runner = PieceGraphRunner(linear_relu, name="glue", static_input_indices={1}, pool=pool)
    for n in (1, 1, 3, 3, 1, 3):
        with pool.forward(size=n):
            runner(x, w)
    assert len(runner._entries) == 2 and backend.captures == 2  # lockstep with the dynamic pieces


def test_mutated_activation_input_disables_graphs():
    pool = make_pool()
    runner = PieceGraphRunner(kv_step, name="kv", static_input_indices=set(), pool=pool, mutated_inputs={0})
    cache = torch.zeros(4, 2)
    for step in range(3):
        with pool.forward():
            runner(cache, torch.tensor([step]), torch.ones(1, 2))
    assert pool.backend.captures == 0
    assert cache[:3].sum() == 6  # the caller's tensor got every write


def test_undeclared_int_output_under_padding_disables():
    pool = make_pool()
    spec = DynamicSpec.make(inputs=[(0, 0)], outputs=[(0, 0)])
    runner = PieceGraphRunner(lambda x: (x * 2, x.shape[0] * 3), name="ints", static_input_indices=set(), pool=pool,
                              dynamic_inputs=spec, mutated_inputs=set())
    for _ in range(3):
        x = torch.randn(3, 2)
        with pool.forward(size=3):
            out, m = runner(x)
        assert m == 9 and out.shape == (3, 2)
    assert runner._no_capture and "padding could change" in runner._no_capture


def test_should_use_cudagraphs_on_cpu(caplog):
    cpu = [torch.randn(2), 3]
    assert should_use_cudagraphs(Config.build({"cudagraphs": None}, environ={}), cpu) is False
    assert should_use_cudagraphs(Config.build({"cudagraphs": False}, environ={}), cpu) is False
    regionc.logs._logged.discard("cudagraphs-no-cuda")
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert should_use_cudagraphs(Config.build({"cudagraphs": True}, environ={}), cpu) is False
        assert should_use_cudagraphs(Config.build({"cudagraphs": True}, environ={}), cpu) is False
    assert sum("no input is on a CUDA device" in r.getMessage() for r in caplog.records) == 1


def test_should_use_cudagraphs_with_fake_cuda_inputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cuda = [torch.empty(2, device="cuda")]
    assert should_use_cudagraphs(Config.build({}, environ={}), cuda) is True
    assert should_use_cudagraphs(Config.build({"cudagraphs": False}, environ={}), cuda) is False


def test_mutated_placeholders_scan():
    class M(torch.nn.Module):
        def forward(self, cache, pos, k, x, other, last):
            cache.index_copy_(0, pos, k)
            other.select(1, 0).fill_(1.0)  # in place through a view
            y = x.add(1)  # out of place
            y.mul_(2)  # in place on an intermediate, not an input
            torch.ops.aten.add_.Tensor(pos, 1)  # mutable schema
            return y

    gm = torch.fx.symbolic_trace(M())
    assert mutated_placeholders(gm) == {0, 1, 4}
    last = next(n for n in gm.graph.nodes if n.name == "last")
    view = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "x")
    with gm.graph.inserting_before(list(gm.graph.nodes)[-1]):
        item = gm.graph.call_function(operator.getitem, (last, 0))
        gm.graph.call_function(operator.setitem, (item, 0, view))  # last[0][0] = x
    assert mutated_placeholders(gm) == {0, 1, 4, 5}


def test_warmup_is_padded_only_for_pure_pieces():
    seen = []

    def spy(x):
        seen.append(x.shape[0])
        return (x + 1,)

    spec = DynamicSpec.make(inputs=[(0, 0)], outputs=[(0, 0)])
    for mutated, expected in ((set(), [4, 4]), (None, [3, 4])):  # None: unknown, may write in place
        seen.clear()
        pool = make_pool()
        runner = PieceGraphRunner(spy, name="spy", static_input_indices=set(), pool=pool, dynamic_inputs=spec,
                                  mutated_inputs=mutated)
        for _ in range(3):
            x = torch.randn(3, 2)
            with pool.forward(size=3):
                (out,) = runner(x)
            torch.testing.assert_close(out, x + 1)
        assert seen[:2] == expected  # warm-up, capture (the replay re-runs spy on the fake: 4)


def test_each_set_of_weights_gets_its_own_graphs():
    backend = FakeBackend()
    pool = make_pool(backend)
    runner = PieceGraphRunner(linear_relu, name="shared", static_input_indices={1}, pool=pool)
    x = torch.randn(2, 8)
    weights = [torch.randn(8, 8) for _ in range(3)]
    for _ in range(4):
        for w in weights:  # one compiled piece run with three sets of weights, as blocks compiled one by one are
            with pool.forward(statics=[w]):
                torch.testing.assert_close(runner(x, w)[0], torch.relu(x @ w))
    assert backend.captures == 3
    assert all(handle is backend._shared for handle in backend.handles)  # each captured in its own capture forward


def test_sets_of_static_tensors_handed_once_are_not_kept_alive():
    """Beam search's ``reorder_cache`` hands the backend's graphs a new static cache every step: each set
    is warmed up on its own (never replayed over another set's addresses), and a set the caller has
    dropped is freed and forgotten, not kept alive by the pool for the process's life."""
    import weakref

    backend = FakeBackend()
    pool = make_pool(backend)
    runner = PieceGraphRunner(linear_relu, name="reads a cache", static_input_indices={1}, pool=pool)
    x = torch.randn(2, 8)
    cache = torch.randn(8, 8)
    freed, instances = [], set()
    for _ in range(6):
        with pool.forward(statics=[cache]) as forward:
            torch.testing.assert_close(runner(x, cache)[0], torch.relu(x @ cache))
        instances.add(forward.instance)
        freed.append(weakref.ref(cache))
        cache = cache.flip(0)  # the reorder: another tensor, the old one dropped
    assert len(instances) == 6 and backend.captures == 0  # one warm-up per set
    assert all(ref() is None for ref in freed[:-1])  # the last set is the pool's fast path
    assert len(pool._instances) <= 2
    with pool.forward(statics=[cache]) as forward:  # a set handed again warms, then captures
        runner(x, cache)
    with pool.forward(statics=[cache]) as again:
        torch.testing.assert_close(runner(x, cache)[0], torch.relu(x @ cache))
    assert again.instance == forward.instance and backend.captures == 1
