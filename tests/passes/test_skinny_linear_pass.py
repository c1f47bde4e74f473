"""The skinny-linear pass: linears over few rows → ``regionc.skinny_linear``, the projections that read
one input grouped into one call. Whole models (HF Llama and Qwen2 on a StaticCache, the demo decoder)
and small functions for what it must group, swap alone, or leave to Inductor."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from regionc.config import Config
from regionc.models.llama import LlamaConfig, build_demo_model
from regionc.ops.skinny_linear import MAX_ROWS
from regionc.passes import PassManager
from tests.helpers import assert_close
from tests.passes.pass_util import (
    capture,
    compile_fn_with_passes,
    compile_with_passes,
    cuda_hf_decode,
    hf_decoder,
    prefilled_cache,
)

SKINNY = torch.ops.regionc.skinny_linear.default
ALWAYS = {"kernel_choice": "always"}
MM = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


def calls(cap):
    return [n for g in cap.graphs for n in g.nodes if n.target is SKINNY]


def weight_counts(cap) -> list[int]:
    return sorted(len(n.args[1]) for n in calls(cap))


def mm_count(cap) -> int:
    return sum(1 for g in cap.graphs for n in g.nodes if n.target in MM)


def added_after(cap) -> list[int]:
    """Per linear the swap replaced, the rank of what is added to its summed partials (1: a bias,
    2: an addend Inductor folded into addmm), None for nothing, in graph order."""
    out = []
    for call in calls(cap):
        for item in call.users:
            (total,) = item.users
            (nxt,) = total.users
            added = nxt.target is torch.ops.aten.add.Tensor
            out.append(next(a for a in nxt.args if a is not total).meta["val"].dim() if added else None)
    return out


# ---------------------------------------------------------------- whole models


@pytest.mark.parametrize("arch", ["Llama", "Qwen2"])  # Qwen2: q/k/v biases
def test_hf_decoder_static_cache_decode(arch):
    """A layer's seven projections become four calls (q/k/v, o, gate/up, down), every step equals eager."""
    transformers = pytest.importorskip("transformers")
    model, cfg = hf_decoder(transformers, arch)
    batch, prompt = 3, 5

    with capture() as cap, torch.no_grad():
        eager_cache, compiled_cache = (prefilled_cache(transformers, model, cfg, batch, prompt, 16) for _ in range(2))
        compiled = compile_with_passes(model, ALWAYS, cap)
        for pos in (prompt, prompt + 1):
            tok = torch.randint(0, 128, (batch, 1))
            expected = model(tok, past_key_values=eager_cache, use_cache=True, cache_position=torch.tensor([pos]))
            actual = compiled(tok, past_key_values=compiled_cache, use_cache=True, cache_position=torch.tensor([pos]))
            assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    assert weight_counts(cap) == [1, 1, 2, 3], weight_counts(cap)
    assert mm_count(cap) == 0
    assert added_after(cap).count(1) == (3 if arch == "Qwen2" else 0)  # Qwen2: q/k/v biases
    assert all(n.args[2] >= 1 for n in calls(cap))
    assert cap.matches.get("skinny_linear") == 4, cap.matches


def test_demo_decoder_decode_and_prefill():
    """Decode rows are swapped; a prefill of more than MAX_ROWS tokens keeps its GEMMs, without a report line."""
    model = build_demo_model(LlamaConfig.tiny(2, dim=256, max_seq=128))
    model.setup_kv_cache(2, torch.float32)
    eager = copy.deepcopy(model)
    prompt = MAX_ROWS // 2 + 1  # 2 sequences: more rows than MAX_ROWS
    with capture() as cap, torch.no_grad():
        compiled = compile_with_passes(model, ALWAYS, cap)
        tokens = torch.randint(0, 128, (2, prompt))
        assert_close(compiled(tokens, torch.arange(prompt)), eager(tokens, torch.arange(prompt)), atol=1e-5, rtol=1e-4)
        assert not calls(cap) and mm_count(cap) > 0
        assert not [s for s in cap.skips if "skinny_linear" in s]
        cap.graphs.clear()
        for pos in (prompt, prompt + 1):
            tok = torch.randint(0, 128, (2, 1))
            assert_close(compiled(tok, torch.tensor([pos])), eager(tok, torch.tensor([pos])), atol=1e-5, rtol=1e-4)
    assert calls(cap) and mm_count(cap) == 0 and cap.matches.get("skinny_linear", 0) >= 4


# ---------------------------------------------------------------- small functions


def run_fn(fn, *args, options=None):
    run, _ = compile_fn_with_passes(fn, options)
    with capture() as cap, torch.no_grad():
        out = run(*args)
    assert_close(out, fn(*args), atol=1e-5, rtol=1e-4)
    return cap


def test_siblings_grouped_by_input_biases_kept():
    """Two linears of x in one call, one with its [N] bias; the bias, like the sum Inductor folds
    into the other's addmm (a [M, N] addend), is added to the summed partials after the call."""
    x, w1, w2, w3, b2 = torch.randn(4, 32), torch.randn(16, 32), torch.randn(8, 32), torch.randn(8, 16), torch.randn(8)

    def fn(x, w1, w2, w3, b2):
        h = F.linear(x, w1) + F.linear(x, w2, b2).repeat(1, 2)
        return F.linear(torch.tanh(h), w3)

    cap = run_fn(fn, x, w1, w2, w3, b2)
    assert weight_counts(cap) == [1, 2]
    assert 1 in added_after(cap)


def test_small_weight_is_split_over_k():
    """A weight too small to fill the GPU is read in several ranges of K; the sum of the partials,
    the bias and the cast back to the model's dtype follow in the graph, and the result is eager's."""
    from regionc.ops.skinny_linear import splits_for

    x, w, b = torch.randn(4, 1024), torch.randn(64, 1024) * 0.03, torch.randn(64)
    cap = run_fn(lambda x, w, b: torch.tanh(F.linear(x, w, b)), x, w, b)
    (call,) = calls(cap)
    # below Inductor's unrolled-sum limit, so the sum is loads in the consumer, not a kernel
    assert 1 < call.args[2] < torch._inductor.config.unroll_reductions_threshold
    assert call.args[2] == splits_for(4, [64], 1024, most=torch._inductor.config.unroll_reductions_threshold - 1)
    assert added_after(cap) == [1]
    assert [n.args[1] for g in cap.graphs for n in g.nodes
            if n.target is torch.ops.prims.convert_element_type.default] == [torch.float32]


def test_computed_weight_is_swapped_alone():
    """A weight computed in the graph (here from a sibling's output) is never grouped: one call for
    both would read its own output."""
    x, w1 = torch.randn(4, 16), torch.randn(16, 16)

    def fn(x, w1):
        a = F.linear(x, w1)
        return F.linear(x, w1 * a.mean())

    cap = run_fn(fn, x, w1)
    assert weight_counts(cap) == [1, 1]


def test_three_dimensional_input_and_rows_limit():
    w = torch.randn(24, 32)
    cap = run_fn(lambda x, w: F.linear(x, w), torch.randn(2, 3, 32), w)  # 6 rows
    assert weight_counts(cap) == [1]
    cap = run_fn(lambda x, w: F.linear(x, w), torch.randn(MAX_ROWS + 1, 32), w)
    assert not calls(cap)


def test_symbolic_rows_are_kept_and_said():
    """A row count only known at run time may be a prefill: the linear stays a GEMM, with a reason."""
    def fn(x, w):
        return F.linear(x, w)

    pm = PassManager(Config.build(ALWAYS), "cpu")
    compiled = torch.compile(fn, backend="inductor", dynamic=True)
    with torch._inductor.config.patch(pm.inductor_config_patches()), capture() as cap, torch.no_grad():
        x, w = torch.randn(5, 32), torch.randn(8, 32)
        assert_close(compiled(x, w), fn(x, w))
    assert not calls(cap)
    assert any("skinny_linear" in s and "symbolic" in s for s in pm.take_skips())


def test_auto_on_cpu_keeps_the_gemm_and_says_why():
    model = build_demo_model(LlamaConfig.tiny(2, dim=256, max_seq=16))
    model.setup_kv_cache(1, torch.float32)
    with capture() as cap, torch.no_grad():
        compiled = compile_with_passes(model, {"kernel_choice": "auto"}, cap)
        compiled(torch.randint(0, 128, (1, 1)), torch.tensor([3]))
    assert not calls(cap) and "skinny_linear" not in cap.matches
    kept = [s for s in cap.skips if "skinny_linear at" in s]
    assert any("kept (group, rows<=16)" in s for s in kept) and any("kept (single, rows<=16)" in s for s in kept), kept


def test_pass_can_be_turned_off():
    x, w = torch.randn(4, 32), torch.randn(8, 32)
    run, pm = compile_fn_with_passes(lambda x, w: F.linear(x, w), {"passes": {"skinny_linear": False}})
    with capture() as cap, torch.no_grad():
        run(x, w)
    assert not calls(cap)
    assert PassManager(Config.build(ALWAYS), "cpu").uuid() != pm.uuid()


def test_decision_table_swaps_on_cuda_all_but_groups_past_16_rows():
    from regionc.passes.decisions import decide, shape_class

    assert shape_class("skinny_linear", rows=8, weights=3) == "group, rows<=16"
    for rows, weights in ((8, 2), (8, 1), (32, 1)):
        assert decide("cuda", "skinny_linear", shape_class("skinny_linear", rows=rows, weights=weights)).swap
    assert not decide("cuda", "skinny_linear", shape_class("skinny_linear", rows=32, weights=2)).swap
    assert not decide("cpu", "skinny_linear", "group, rows<=16").swap


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("batch, kernel_choice, swapped", [(1, "always", 4), (8, "always", 4), (8, "auto", 4),
                                                           (32, "auto", 2)])
def test_cuda_hf_llama_static_cache(batch, kernel_choice, swapped):
    """bf16 decode on the GPU: the pass finds the projections on the GPU's torch and the kernel's
    output stays within bf16 noise of eager through every step; by default (the decision table) all
    four projections are swapped at 8 rows, and at 32 rows only the single ones (o, down)."""
    transformers = pytest.importorskip("transformers")
    report = cuda_hf_decode(transformers, kernel_choice, batch=batch, max_cache_len=64, intermediate_size=1024)
    assert report.pass_matches.get("skinny_linear", 0) == swapped, (report.pass_matches, report.pass_skips)
