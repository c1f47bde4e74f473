"""regionc.warmup: the compile happens in a background thread while the weights are written in place,
and the first real call finds it done."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

import regionc
from regionc.models.llama import LlamaConfig, build_demo_model
from tests.helpers import NO_CACHE, assert_close


def tokens(batch=2, seq=8):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(0))


def skeleton(n_layers=3):
    """The model a server builds before reading its checkpoint: the structure, weights not yet loaded
    (here: other random values, so a wrong answer cannot pass for a right one)."""
    torch.manual_seed(1)
    return build_demo_model(LlamaConfig.tiny(n_layers=n_layers))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return build_demo_model(LlamaConfig.tiny(n_layers=3))


@pytest.mark.parametrize("tracing", ["auto", "per_block"])
def test_weights_loaded_during_warmup_are_used_and_nothing_compiles_again(trained, tracing, caplog):
    x = tokens()
    with torch.no_grad():
        expected = trained(x)
    model = regionc.compile(skeleton(), options={**NO_CACHE, "block_tracing": tracing})
    before = len(regionc.reports())
    with caplog.at_level(logging.INFO, logger="regionc"), torch.no_grad():
        job = regionc.warmup(model, x)  # under no_grad: the thread must trace under it too, or the call recompiles
        model.load_state_dict(trained.state_dict())  # in place, while the warm-up may be running
        seconds = job.result(timeout=600)
    compiled = regionc.reports()[before:]
    assert seconds > 0 and compiled, "the warm-up compiled nothing"
    with torch.no_grad():
        assert_close(model(x), expected)
    assert len(regionc.reports()) == before + len(compiled), "the first real call compiled again"
    messages = [r.getMessage() for r in caplog.records]
    where = "in the calling thread" if torch.version.cuda and not torch.cuda.is_available() else "in the background"
    assert any(f"warming up LlamaDecoder {where}" in m for m in messages)
    assert any("warm-up of LlamaDecoder done" in m for m in messages)


def test_a_call_during_warmup_waits_for_it_and_compiles_once(trained):
    x = tokens()
    options = {**NO_CACHE, "block_tracing": "per_block"}
    with torch.no_grad():
        expected = trained(x)
        before = len(regionc.reports())
        regionc.compile(skeleton(), options=options)(x)
        one_compile = len(regionc.reports()) - before  # what a single first call compiles
    torch._dynamo.reset()  # the block frame's compiled code is shared by every instance of its class
    model = regionc.compile(skeleton(), options=options)
    model.load_state_dict(trained.state_dict())
    before = len(regionc.reports())
    with torch.no_grad():
        job = regionc.warmup(model, x)
        out = model(x)  # immediately: one of the two calls compiles, the other waits and reuses it
        job.result(timeout=600)
    assert_close(out, expected)
    assert len(regionc.reports()) - before == one_compile


def test_a_failed_warmup_reaches_the_future_and_the_log_and_leaves_the_model_usable(trained, caplog):
    model = regionc.compile(skeleton(), options=NO_CACHE)
    model.load_state_dict(trained.state_dict())
    bad = torch.zeros(2, 8)  # float tokens: the embedding refuses them
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        job = regionc.warmup(model, bad)
        with pytest.raises(Exception) as raised:
            job.result(timeout=600)
    assert "warm-up of LlamaDecoder failed" in caplog.text
    assert str(raised.value).splitlines()[0][:60] in caplog.text
    x = tokens()
    with torch.no_grad():
        assert_close(model(x), trained(x))


def test_a_cuda_build_without_a_device_warms_up_in_the_calling_thread(trained, monkeypatch, caplog):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = regionc.compile(skeleton(), options={**NO_CACHE, "block_tracing": "per_block"})
    model.load_state_dict(trained.state_dict())
    x = tokens()
    with caplog.at_level(logging.WARNING, logger="regionc"), torch.no_grad():
        job = regionc.warmup(model, x)
        assert job.done(), "the warm-up did not run in the calling thread"
        assert "warming up LlamaDecoder in the calling thread" in caplog.text
        assert_close(model(x), trained(x))


@pytest.mark.parametrize("target", [torch.nn.Linear(2, 2), "model"])
def test_warmup_refuses_what_regionc_compile_did_not_return(target):
    with pytest.raises(TypeError, match=r"regionc.warmup: expected a model returned by regionc.compile"):
        regionc.warmup(target, torch.zeros(1, 2))


def test_the_switch_interval_is_short_during_a_warmup_and_restored_after():
    from regionc.compiler.background import SWITCH_INTERVAL_S, switch_interval

    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL_S
    with switch_interval(SWITCH_INTERVAL_S):
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_warmup_beside_a_weight_copy_then_graphs_on_the_real_calls():
    """On CUDA with graphs: the warm-up compiles while the weights are copied in on the caller's thread;
    nothing is captured then, the real calls capture and replay and match eager."""
    cfg = LlamaConfig(n_layers=3, dim=256, n_heads=4, n_kv_heads=2, ffn_dim=512, vocab_size=1000)
    torch.manual_seed(0)
    reference = build_demo_model(cfg, dtype=torch.bfloat16, device="cuda")
    torch.manual_seed(1)
    model = regionc.compile(build_demo_model(cfg, dtype=torch.bfloat16, device="cuda"),
                            options={"cache": False, "cudagraphs": True})
    x = torch.randint(0, cfg.vocab_size, (2, 16), device="cuda")
    before = len(regionc.reports())
    with torch.no_grad():
        job = regionc.warmup(model, x)
        model.load_state_dict(reference.state_dict())
        job.result(timeout=600)
        graphs = [r.cudagraphs for r in regionc.reports()[before:] if r.cudagraphs]
        assert not any(g.get("graphs", 0) for g in graphs), graphs  # the warm-up captured nothing
        expected = reference(x)
        for _ in range(3):
            out = model(x)
            assert ((out.float() - expected.float()).norm() / expected.float().norm()).item() < 2e-2
    stats = next(r.cudagraphs for r in reversed(regionc.reports()) if r.cudagraphs)
    assert stats["graphs"] > 0, stats
