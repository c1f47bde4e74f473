"""background_compile: the backend returns once the graph is split, the first calls run the pieces
eagerly while they compile on the background thread, and later calls run the compiled code."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import regionc
from regionc.compiler import background
from regionc.compiler import graph as graph_module
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import NO_CACHE, assert_close

BACKGROUND = {**NO_CACHE, "background_compile": True}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_demo_model(LlamaConfig.tiny(n_layers=3))


def tokens(batch=2, seq=8):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def held_compiles(monkeypatch):
    """Every piece compile waits until the test sets the returned event: what a call returns before
    that cannot have come from compiled code."""
    release = threading.Event()
    real = graph_module.compile_piece

    def held(*args, **kwargs):
        assert release.wait(timeout=600), "the test never released the compile"
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_module, "compile_piece", held)
    yield release
    release.set()
    assert regionc.wait_compiled(timeout=600)


def test_first_calls_run_eagerly_while_the_pieces_compile_then_the_compiled_code_runs(model, held_compiles, caplog):
    x = tokens()
    with torch.no_grad():
        expected = model(x)
    compiled = torch.compile(model, backend="regionc", options=BACKGROUND)
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        first = compiled(x)  # returns although no piece can have compiled yet
        second = compiled(x)
        report = regionc.last_report()
        assert background.busy() and report.count("compiled") == 0
        held_compiles.set()
        assert regionc.wait_compiled(timeout=600) and not background.busy()
        after = compiled(x)
    assert_close(first, expected)
    assert_close(second, expected)
    assert_close(after, expected)
    assert [p.source for p in report.pieces].count("compiled") == len({p.fingerprint for p in report.pieces})
    messages = [r.getMessage() for r in caplog.records]
    assert any("runs eagerly while 3 unique piece(s) compile in the background" in m for m in messages)
    assert any("runs its compiled pieces from call 3 on" in m for m in messages)


def test_the_compiled_pieces_replace_the_eager_ones(model, monkeypatch, held_compiles):
    """After the switch the split module calls the compiled functions, not the eager graph copies."""
    import regionc.backend

    programs = []
    make_program = regionc.backend.make_program
    monkeypatch.setattr(regionc.backend, "make_program", lambda *a, **k: programs.append(make_program(*a, **k))
                        or programs[-1])
    x = tokens()
    compiled = torch.compile(model, backend="regionc", options=BACKGROUND)
    with torch.no_grad():
        compiled(x)
        program = programs[-1]
        assert program.pending is not None
        assert all(isinstance(program.run.__dict__[p.name], torch.fx.GraphModule) for p in regionc.last_report().pieces)
        held_compiles.set()
        regionc.wait_compiled(timeout=600)
        compiled(x)
    assert program.pending is None
    shadows = [program.run.__dict__[p.name] for p in regionc.last_report().pieces]
    assert shadows and not any(isinstance(fn, torch.fx.GraphModule) for fn in shadows)


@pytest.mark.parametrize("tracing", ["auto", "per_block"])
def test_regionc_compile_in_the_background_and_a_warm_start(model, tracing, tmp_path, caplog):
    from regionc.tracing.saved import traces_can_be_saved

    x = tokens()
    with torch.no_grad():
        expected = model(x)
    options = {"cache_dir": str(tmp_path), "strict": True, "background_compile": True, "block_tracing": tracing}
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        compiled = regionc.compile(build_demo_model(LlamaConfig.tiny(n_layers=3)), options=options)
        compiled.load_state_dict(model.state_dict())
        before = len(regionc.reports())
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
            assert_close(compiled(x), expected)
            assert regionc.wait_compiled(timeout=600)
            assert_close(compiled(x), expected)
        reports = regionc.reports()[before:]
        sources = {p.source for r in reports for p in r.pieces}
        if start == "cold":
            assert "compiled" in sources, start
        else:
            assert sources <= {"cache", "reused"} and "cache" in sources, (start, sources)
            if traces_can_be_saved():  # the saved trace's program loads its pieces in the background
                assert any("piece artifact(s) load in the background" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tracing", ["auto", "per_block"])
def test_regionc_compile_holds_background_compiles_until_its_first_call_returns(model, tracing, monkeypatch, tmp_path):
    """Under per-block tracing each block class is a Dynamo frame of its own, and a frame traced while a
    piece compiles waits for that compile: the first call's compiles start only once it has returned."""
    in_first_call = threading.Event()
    started_during_call = []
    real = graph_module.compile_piece

    def recording(*args, **kwargs):
        started_during_call.append(in_first_call.is_set())
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_module, "compile_piece", recording)
    x = tokens()
    with torch.no_grad():
        expected = model(x)
    torch._dynamo.reset()
    compiled = regionc.compile(build_demo_model(LlamaConfig.tiny(n_layers=3)),
                               options={"cache_dir": str(tmp_path), "strict": True, "background_compile": True,
                                        "block_tracing": tracing})
    compiled.load_state_dict(model.state_dict())
    with torch.no_grad():
        in_first_call.set()
        first = compiled(x)
        in_first_call.clear()
        assert regionc.wait_compiled(timeout=600)
        after = compiled(x)
    assert_close(first, expected)
    assert_close(after, expected)
    assert started_during_call and not any(started_during_call), started_during_call


def dynamic_tokens(seq):
    x = tokens(seq=seq)
    torch._dynamo.mark_dynamic(x, 1)
    return x


def test_symbolic_shapes_compile_in_the_background_and_serve_every_size(model, held_compiles):
    compiled = torch.compile(model, backend="regionc", options=BACKGROUND)
    with torch.no_grad():
        first = compiled(dynamic_tokens(8))  # returns although no piece can have compiled yet
        assert background.busy() and regionc.last_report().count("compiled") == 0
        held_compiles.set()
        assert regionc.wait_compiled(timeout=600)
        graphs = len(regionc.reports())
        outputs = {seq: compiled(dynamic_tokens(seq)) for seq in (8, 5, 11)}
        expected = {seq: model(tokens(seq=seq)) for seq in (8, 5, 11)}
    assert_close(first, expected[8])
    for seq in outputs:
        assert_close(outputs[seq], expected[seq])
    assert len(regionc.reports()) == graphs  # one compiled graph serves every length
    assert regionc.last_report().count("compiled") > 0


def test_a_failed_background_compile_keeps_eager_pieces_and_says_so(model, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(graph_module, "compile_piece", broken)
    x = tokens()
    compiled = torch.compile(model, backend="regionc", options={**BACKGROUND, "strict": False})
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        compiled(x)
        regionc.wait_compiled(timeout=600)
        out = compiled(x)
    assert_close(out, model(x))
    assert {p.source for p in regionc.last_report().pieces} == {"eager"}
    assert any("falls back to eager: RuntimeError: no compiler today" in r.getMessage() for r in caplog.records)


def test_strict_raises_a_background_failure_on_the_next_call(model, monkeypatch):
    release = threading.Event()

    def broken(*args, **kwargs):
        release.wait(timeout=600)
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(graph_module, "compile_piece", broken)
    compiled = torch.compile(model, backend="regionc", options=BACKGROUND)
    with torch.no_grad():
        compiled(tokens())  # eager: the compile has not failed yet
        release.set()
        regionc.wait_compiled(timeout=600)
        with pytest.raises(RuntimeError, match="no compiler today"):
            compiled(tokens())


def test_the_switch_interval_is_short_while_jobs_run_and_restored_after():
    import sys

    before = sys.getswitchinterval()
    release = threading.Event()
    job = background.submit(lambda: release.wait(timeout=600))
    assert background.busy() and sys.getswitchinterval() == pytest.approx(min(before, background.SWITCH_INTERVAL_S))
    release.set()
    job.result(timeout=600)
    assert regionc.wait_compiled(timeout=600)
    assert sys.getswitchinterval() == before


def test_the_option_comes_from_the_environment():
    assert regionc.Config.build(environ={"REGIONC_BACKGROUND_COMPILE": "1"}).background_compile is True
    with pytest.raises(regionc.RegioncConfigError, match="background_compile"):
        regionc.Config.build({"background_compile": "yes"})



@pytest.mark.parametrize("name,tracing", [("wan", "auto"), ("wan", "per_block"), ("flux", "per_block"),
                                         ("chroma", "auto")])
def test_diffusers_blocks_compile_and_load_in_the_background(name, tracing, tmp_path, caplog):
    """Wan's block code assigns into tensors, which a GraphModule pickled and re-traced on load cannot
    replay: the recipe must carry the piece graphs themselves, or the warm start traces again. Flux's
    single block is traced and compiled again (dynamic) in the calling thread while the other blocks
    still compile in the background: neither may break the other. Chroma's glue between blocks runs as
    traced, compiled by neither."""
    pytest.importorskip("diffusers")
    from regionc.tracing.saved import traces_can_be_saved
    from tests.zoo.architectures import DIFFUSERS

    if not traces_can_be_saved():
        pytest.skip("this torch cannot save Dynamo traces")
    architecture = {a.name: a for a in DIFFUSERS}[name]
    options = {"cache_dir": str(tmp_path), "strict": True, "background_compile": True, "block_tracing": tracing}
    for start in ("cold", "warm"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model, inputs = architecture.build(2)
        with torch.no_grad():
            expected = model(**inputs)[0]
        compiled = regionc.compile(model, options=options)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
            first = compiled(**inputs)[0]
            assert regionc.wait_compiled(timeout=600)
            after = compiled(**inputs)[0]
        assert_close(first, expected)
        assert_close(after, expected)
        messages = [r.getMessage() for r in caplog.records]
        assert not any("falls back to eager" in m or "background compile failed" in m for m in messages), messages
    assert not any("cannot be used" in m for m in messages), messages
    assert any("piece artifact(s) load in the background" in m for m in messages), messages
