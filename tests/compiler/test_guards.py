"""Size guards a piece's compiled code carries (regionc/compiler/guards.py): what Inductor assumed of
symbolic sizes where Dynamo's guards do not check it (background compiles, pieces loaded from the store)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.source import LocalSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext, guard_int

import regionc
from regionc.compiler.guards import GuardedPiece, GuardMark, ShapeGuards, UncheckableGuard, guard_mark, guards_added
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import assert_close
from tests.models import PerLayerCounters


def fake(mode, rows, name):
    dynamic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    return mode.from_tensor(torch.randn(rows, 4), source=LocalSource(name), symbolic_context=dynamic)


def test_the_guards_a_compile_adds_are_checked_on_real_sizes():
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x, y = fake(mode, 6, "x"), fake(mode, 9, "y")
    since = guard_mark([x, y])
    assert bool(y.shape[0] % 3 == 0)  # a divisibility, as a tiling may assume
    guard_int(x.shape[0])  # a specialization: ShapeEnv's own printer drops this one
    found = guards_added([x, y], since)
    assert found is not None
    assert found.holds([torch.empty(6, 4), torch.empty(12, 4)])
    assert not found.holds([torch.empty(7, 4), torch.empty(12, 4)])
    assert not found.holds([torch.empty(6, 4), torch.empty(10, 4)])
    assert ShapeGuards.from_bytes(found.to_bytes()) == found


def test_a_specialized_float_input_is_checked_on_real_values():
    """A Python float Dynamo made symbolic (a global that changed) comes to a piece as a SymFloat input;
    Inductor may specialize it back to its traced value, and the piece's code is then right for that value only."""
    env = ShapeEnv()
    symbol = env.create_symbol(0.5, LocalSource("scale"), dynamic_dim=DimDynamic.DYNAMIC)
    scale = env.create_symfloatnode(symbol, hint=0.5)
    since = guard_mark([scale])
    assert float(scale) == 0.5  # reading the value: a specialization
    found = guards_added([scale], since)
    assert found is not None and found.holds([0.5]) and not found.holds([0.25])


def test_a_compile_that_adds_no_guard_carries_none():
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = fake(mode, 6, "x")
    since = guard_mark([x, torch.empty(3)])
    assert x.shape[0] + 1 == x.shape[0] + 1  # static truth: no guard
    assert guards_added([x, torch.empty(3)], since) is None
    assert guard_mark([torch.empty(3)]) == GuardMark() and guards_added([torch.empty(3)], GuardMark()) is None


def test_a_guard_an_earlier_compile_added_counts_for_every_piece_that_carries_its_symbol():
    """A symbol one piece's compile specialized is a constant in the next piece's code as well."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x, unrelated = fake(mode, 6, "x"), fake(mode, 4, "unrelated")
    since = guard_mark([x])
    guard_int(x.shape[0])  # the first piece's compile
    assert guards_added([x], since).holds([torch.empty(6, 4)])
    assert not guards_added([x], since).holds([torch.empty(7, 4)])
    assert guards_added([unrelated], since) is None  # its code does not depend on that symbol


def test_a_guard_on_the_symbol_an_input_was_renamed_to_counts_for_the_piece():
    """Dynamo found an int input equal to a size and made them one symbol (Gemma 2's sliding-window
    ``cumulative_length`` and its cache length); another piece's compile then specialized that size, which
    renames the int straight to the constant. A piece handed only the int computed with the constant too,
    and the guard that says so names the size's symbol, not the int's."""
    env = ShapeEnv()
    x = fake(FakeTensorMode(shape_env=env), 6, "x")
    length = env.create_symintnode(env.create_symbol(6, LocalSource("length"), dynamic_dim=DimDynamic.DYNAMIC),
                                   hint=6)
    assert bool(length == x.shape[0])  # Dynamo's trace: the int is renamed to the size's symbol
    since = guard_mark([x, length])
    guard_int(x.shape[0])  # another piece's compile
    found = guards_added([length], since)
    assert found is not None and found.holds([6]) and not found.holds([7])


def test_a_guard_another_piece_added_on_a_symbol_this_piece_lacks_is_left_to_that_piece():
    """Another layer's compile compared one of its own sizes with a size this piece shares (HF's assisted
    generation: each layer's cache length is a symbol of its own): no code of this piece can have used it,
    so it neither stops the piece's compile nor joins its checks; its own guards still do."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x, other = fake(mode, 6, "x"), fake(mode, 8, "other")
    since = guard_mark([x])
    assert bool(x.shape[0] < other.shape[0])  # the other piece's compile
    assert guards_added([x], since) is None
    assert bool(x.shape[0] % 3 == 0)  # this piece's compile
    found = guards_added([x], since)
    assert found.holds([torch.empty(6, 4)]) and found.holds([torch.empty(12, 4)])  # 12 > 8: not checked
    assert not found.holds([torch.empty(7, 4)])


def test_a_guard_on_a_symbol_carried_only_inside_a_larger_size_cannot_be_checked():
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x, y = fake(mode, 6, "x"), fake(mode, 8, "y")
    with mode:
        both = torch.cat([x, y])  # rows s0 + s1: neither size is given alone
    since = guard_mark([both])
    assert bool(y.shape[0] < 10)
    with pytest.raises(UncheckableGuard, match="no size, stride or offset of the piece's inputs gives alone"):
        guards_added([both], since)


def test_a_guarded_piece_runs_eagerly_where_its_guards_fail(caplog):
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = fake(mode, 6, "x")
    since = guard_mark([x])
    guard_int(x.shape[0])
    piece = GuardedPiece(lambda t: "compiled", guards_added([x], since), lambda t: "eager", "submod_0 (layers.0)")
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert piece(torch.empty(6, 4)) == "compiled"
        assert piece(torch.empty(5, 4)) == "eager"
        assert piece(torch.empty(7, 4)) == "eager"
    warnings = [r.getMessage() for r in caplog.records if r.name == "regionc"]
    assert len(warnings) == 1 and "submod_0 (layers.0) runs eagerly for these inputs" in warnings[0]


# ---------------------------------------------------------------------------- end to end
def tokens(seq, batch=2):
    x = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seq))
    torch._dynamo.maybe_mark_dynamic(x, 1)  # the sequence length is symbolic (a compile may specialize it)
    return x


def specialize(monkeypatch, places):
    """Inductor as if each compile guarded on the sizes ``places(inputs)`` names ((input, dim), dim None for an
    int input) at the values it saw, its code wrong (all 7s) for any other values."""
    real = torch._inductor.standalone_compile

    def read(args, index, dim):
        return args[index] if dim is None else args[index].size(dim)

    class Specialized:
        def __init__(self, artifact, values):
            self.artifact, self.values = artifact, values

        def __call__(self, *args):
            out = self.artifact(*args)
            if any(read(args, i, d) != value for (i, d), value in self.values.items()):
                return [torch.full_like(o, 7.0) if isinstance(o, torch.Tensor) else o for o in out]
            return out

        def __getattr__(self, name):
            return getattr(self.artifact, name)

    def standalone_compile(gm, inputs, **kwargs):
        artifact = real(gm, inputs, **kwargs)
        values = {(i, d): read(inputs, i, d).node.hint for i, d in places(inputs)}
        for i, d in values:
            guard_int(read(inputs, i, d))
        return Specialized(artifact, values)

    monkeypatch.setattr(torch._inductor, "standalone_compile", standalone_compile)


@pytest.fixture
def specializing_inductor(monkeypatch):
    """Inductor as if it specialized every compile on the sequence length it saw (8). Without regionc's
    checks a background compile (whose guard Dynamo never sees) would give wrong outputs for other lengths."""
    specialize(monkeypatch, lambda inputs: [(i, d) for i, v in enumerate(inputs) if isinstance(v, torch.Tensor)
                                            for d, s in enumerate(v.shape)
                                            if isinstance(s, torch.SymInt) and s.node.hint == 8])


def test_a_guard_a_background_compile_adds_is_checked_on_each_call(specializing_inductor, caplog, tmp_path):
    torch.manual_seed(0)
    model = build_demo_model(LlamaConfig.tiny(n_layers=2))
    compiled = torch.compile(model, backend="regionc",
                             options={"cache_dir": str(tmp_path), "strict": True, "background_compile": True})
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        compiled(tokens(8))
        assert regionc.wait_compiled(timeout=600)
        same = compiled(tokens(8))
        other = compiled(tokens(5))
        assert_close(same, model(tokens(8)))
        assert_close(other, model(tokens(5)))
    messages = [r.getMessage() for r in caplog.records]
    assert regionc.last_report().count("compiled") > 0
    assert any("checks its input sizes on each call" in m for m in messages)
    assert any("runs eagerly for these inputs" in m for m in messages)


def test_a_piece_reused_under_other_symbols_checks_the_guards_its_compile_added(monkeypatch, caplog):
    """Layers whose ints are distinct symbols share one compile. A guard that compile adds names the compiled
    layer's symbols, which Dynamo checks; the layers that reuse the code check it on their own ints."""
    torch.manual_seed(0)
    model = PerLayerCounters(n_layers=4)
    specialize(monkeypatch, lambda inputs: [(i, None) for i, v in enumerate(inputs) if isinstance(v, torch.SymInt)])
    compiled = torch.compile(model, backend="regionc", dynamic=True, options={"cache": False})
    x, counters = torch.randn(3, 16), [5, 6, 7, 8]
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        assert_close(compiled(x, counters), model(x, counters))
    report = regionc.last_report()
    assert report.count("compiled", "block") == 1 and report.count("reused", "block") == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("checks its input sizes on each call" in m for m in messages) == 3  # every layer but the compiled one
    assert any("runs eagerly for these inputs" in m for m in messages)


def test_a_piece_loaded_from_the_store_checks_the_guards_its_compile_added(caplog, tmp_path, monkeypatch):
    """The guards of a compile inside Dynamo's call are Dynamo's in that process, but a later process that
    loads the piece never ran Inductor: they come with the artifact. An entry whose guards the new graph's
    own sizes break is compiled again for them."""
    torch.manual_seed(0)
    model = build_demo_model(LlamaConfig.tiny(n_layers=2))
    options = {"cache_dir": str(tmp_path), "strict": True}
    real = torch._inductor.standalone_compile

    def guarding(gm, inputs, **kwargs):  # Inductor specializing the sequence length (8) without using it
        artifact = real(gm, inputs, **kwargs)
        for v in inputs:
            for size in (v.shape if isinstance(v, torch.Tensor) else ()):
                if isinstance(size, torch.SymInt) and size.node.hint == 8:
                    guard_int(size)
        return artifact

    def run(*lengths):
        torch._dynamo.reset()
        caplog.clear()
        compiled = torch.compile(model, backend="regionc", options=options)
        with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
            for seq in lengths:
                assert_close(compiled(tokens(seq)), model(tokens(seq)))
        return [r.getMessage() for r in caplog.records], {p.source for p in regionc.last_report().pieces}

    monkeypatch.setattr(torch._inductor, "standalone_compile", guarding)
    messages, sources = run(8)  # cold: Dynamo holds the guard, no per-call check
    assert "compiled" in sources and not any("checks its input sizes" in m for m in messages)
    monkeypatch.undo()

    messages, sources = run(8, 5)  # warm: the loaded pieces check it
    assert "cache" in sources and "compiled" not in sources
    assert any("checks its input sizes on each call: its compiled code assumes s" in m for m in messages)
    assert any("runs eagerly for these inputs" in m for m in messages)

    messages, sources = run(5)  # a graph traced at another length compiles its own code
    assert "compiled" in sources
    assert any("which this graph's sizes break: compiling it for them" in m for m in messages)


def test_a_saved_trace_installs_its_pieces_with_their_guards(caplog, tmp_path, monkeypatch):
    """regionc.compile's saved trace (a warm start without Dynamo) loads pieces whose code carries guards:
    they are installed over the recipe's piece graphs, which run where the guards fail."""
    from regionc.tracing.compile import nested_regions_reuse_traces
    from regionc.tracing.saved import traces_can_be_saved

    if not traces_can_be_saved():
        pytest.skip("this torch cannot save a Dynamo trace")
    if not nested_regions_reuse_traces():
        pytest.skip("per-block tracing: a block frame's first trace has static sizes, so the compile this test "
                    "specializes has no size symbol (Dynamo's own guards send other sizes to a new trace)")
    torch.manual_seed(0)
    model = build_demo_model(LlamaConfig.tiny(n_layers=2))
    options = {"cache_dir": str(tmp_path), "strict": True, "background_compile": True}
    real = torch._inductor.standalone_compile

    def guarding(gm, inputs, **kwargs):  # a compile that specializes the sequence length (8) in the background
        artifact = real(gm, inputs, **kwargs)
        for v in inputs:
            for size in (v.shape if isinstance(v, torch.Tensor) else ()):
                if isinstance(size, torch.SymInt) and size.node.hint == 8:
                    guard_int(size)
        return artifact

    monkeypatch.setattr(torch._inductor, "standalone_compile", guarding)
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        caplog.clear()
        compiled = regionc.compile(build_demo_model(LlamaConfig.tiny(n_layers=2)), options=options)
        compiled.load_state_dict(model.state_dict())
        with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
            compiled(tokens(8))
            assert regionc.wait_compiled(timeout=600)
            for seq in (8, 5):
                assert_close(compiled(tokens(seq)), model(tokens(seq)))
        messages = [r.getMessage() for r in caplog.records]
        assert any("checks its input sizes on each call" in m for m in messages), start
    assert any("loaded saved trace" in m or "load in the background" in m for m in messages)
    assert any("runs eagerly for these inputs" in m for m in messages)
