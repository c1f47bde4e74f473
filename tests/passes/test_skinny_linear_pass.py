"""The skinny-linear pass: linears over few rows → ``regionc.skinny_linear``, the projections that read
one input grouped into one call, and a SwiGLU's gate/up with its product → ``regionc.skinny_swiglu``.
Whole models (HF Llama and Qwen2 on a StaticCache, the demo decoder) and small functions for what it
must group, swap alone, fold into the SwiGLU call, or leave to Inductor."""

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
SWIGLU = torch.ops.regionc.skinny_swiglu.default
ALWAYS = {"kernel_choice": "always"}
MM = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


def calls(cap):
    return [n for g in cap.graphs for n in g.nodes if n.target is SKINNY]


def swiglu_calls(cap):
    return [n for g in cap.graphs for n in g.nodes if n.target is SWIGLU]


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


@pytest.mark.parametrize("arch", ["Llama", "Qwen2", "Gemma"])  # Qwen2: q/k/v biases; Gemma: GELU, not SiLU
def test_hf_decoder_static_cache_decode(arch):
    """A layer's seven projections become four calls (q/k/v, o, the SwiGLU of gate/up, down; Gemma's
    GELU keeps gate/up a group and its product Inductor's), every step equals eager."""
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
    swiglu = 0 if arch == "Gemma" else 1
    assert weight_counts(cap) == ([1, 1, 2, 3] if arch == "Gemma" else [1, 1, 3]), weight_counts(cap)
    assert len(swiglu_calls(cap)) == swiglu and mm_count(cap) == 0
    assert added_after(cap).count(1) == (3 if arch == "Qwen2" else 0)  # Qwen2: q/k/v biases
    assert all(n.args[2] >= 1 for n in calls(cap))
    assert (cap.matches.get("skinny_linear"), cap.matches.get("skinny_swiglu", 0)) == (4 - swiglu, swiglu), cap.matches


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
    assert calls(cap) and swiglu_calls(cap) and mm_count(cap) == 0
    assert cap.matches.get("skinny_linear", 0) >= 3 and cap.matches.get("skinny_swiglu", 0) >= 1


# ---------------------------------------------------------------- small functions


def run_fn(fn, *args, options=None):
    run, _ = compile_fn_with_passes(fn, options)
    with capture() as cap, torch.no_grad():
        out = run(*args)
    torch.testing.assert_close(out, fn(*args), atol=1e-5, rtol=1e-4)
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


def mlp(act, x, wg, wu, wd):
    return F.linear(act(F.linear(x, wg)) * F.linear(x, wu), wd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", [F.silu, lambda t: t * torch.sigmoid(t), lambda t: torch.sigmoid(t) * t],
                         ids=["silu", "x*sigmoid", "sigmoid*x"])
def test_swiglu_product_is_one_call(act, dtype):
    """However SiLU is spelt (Inductor decomposes F.silu), gate, up and their product become one call
    that reads the gate weight first; down stays a skinny_linear."""
    x, wg, wu, wd = (torch.randn(*s).to(dtype) / 4 for s in ((6, 32), (48, 32), (48, 32), (16, 48)))
    run, pm = compile_fn_with_passes(lambda *a: mlp(act, *a), ALWAYS)
    with capture() as cap, torch.no_grad():
        out = run(x, wg, wu, wd)
    expected = mlp(F.silu, *(t.double() for t in (x, wg, wu, wd)))
    assert ((out.double() - expected).norm() / expected.norm()).item() < (1e-6 if dtype == torch.float32 else 1e-2)
    (call,) = swiglu_calls(cap)
    assert [a.name for a in call.args] == ["arg0_1", "arg1_1", "arg2_1"]  # x, w_gate, w_up
    assert weight_counts(cap) == [1] and mm_count(cap) == 0
    assert pm.take_matches() == {"skinny_linear": 1, "skinny_swiglu": 1}


@pytest.mark.parametrize("case", ["gelu", "activation read elsewhere", "gate read elsewhere", "bias"])
def test_swiglu_not_taken_where_it_would_change_the_graph(case):
    """Another activation, an activation or projection with another reader, a biased projection: the
    two linears stay one skinny_linear group and the product stays Inductor's."""
    x, wg, wu, wd, b = (torch.randn(*s) for s in ((6, 32), (48, 32), (48, 32), (16, 48), (48,)))

    def fn(x, wg, wu, wd, b):
        gate, up = F.linear(x, wg, b if case == "bias" else None), F.linear(x, wu)
        act = F.gelu(gate) if case == "gelu" else F.silu(gate)
        out = F.linear(act * up, wd)
        if case == "activation read elsewhere":
            return out, act.sum()
        return (out, gate.mean()) if case == "gate read elsewhere" else out

    cap = run_fn(fn, x, wg, wu, wd, b, options=ALWAYS)
    assert not swiglu_calls(cap) and weight_counts(cap) == [1, 2]


def test_swiglu_pass_can_be_turned_off_alone():
    """``passes={"skinny_swiglu": False}``: gate/up stay one skinny_linear group, the product Inductor's."""
    x, wg, wu, wd = (torch.randn(*s) for s in ((6, 32), (48, 32), (48, 32), (16, 48)))
    cap = run_fn(lambda *a: mlp(F.silu, *a), x, wg, wu, wd, options={**ALWAYS, "passes": {"skinny_swiglu": False}})
    assert not swiglu_calls(cap) and weight_counts(cap) == [1, 2]


def test_swiglu_decision_classes():
    """On CUDA only a gate/up that fills the GPU without a K split, at ≤ 16 rows, is measured to pay."""
    from regionc.ops.skinny_linear import SWIGLU_MIN_PROGRAMS, swiglu_programs
    from regionc.passes.decisions import decide, shape_class

    assert swiglu_programs(8, 8192, 2048) >= SWIGLU_MIN_PROGRAMS > swiglu_programs(8, 2816, 2048)
    assert shape_class("skinny_swiglu", rows=8) == "rows<=16"
    assert shape_class("skinny_swiglu", rows=32, narrow=True) == "rows<=64, narrow"
    assert decide("cuda", "skinny_swiglu", "rows<=16").swap
    for cls in ("rows<=16, narrow", "rows<=64", "rows<=64, narrow"):
        assert not decide("cuda", "skinny_swiglu", cls).swap
    assert not decide("cpu", "skinny_swiglu", "rows<=16").swap
    assert shape_class("skinny_swiglu", rows=8, width=2048) == "rows<=16"
    assert shape_class("skinny_swiglu", rows=8, width=4096) == "rows<=16, wide"
    assert not decide("cuda", "skinny_swiglu", "rows<=16, wide").swap


@pytest.mark.parametrize("width, cls", [(2048, "rows<=16, narrow"), (2304, "rows<=16, wide, narrow")])
def test_swiglu_class_follows_the_input_width(width, cls):
    """The pass hands the table the SwiGLU's input width: past 2048 a program's stream over the whole of K
    is long enough that the K-split group wins (a class of its own, kept on CUDA)."""
    x, wg, wu, wd = (torch.randn(*s) / 8 for s in ((8, width), (64, width), (64, width), (16, 64)))
    run, pm = compile_fn_with_passes(lambda *a: mlp(F.silu, *a), {"kernel_choice": "auto"})
    with torch.no_grad():
        torch.testing.assert_close(run(x, wg, wu, wd), mlp(F.silu, x, wg, wu, wd), atol=1e-4, rtol=1e-4)
    kept = [s for s in pm.take_skips() if s.startswith("skinny_swiglu at")]
    assert kept and all(f"kept ({cls})" in s for s in kept), kept


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


def test_decision_table_swaps_on_cuda_all_but_groups_past_16_rows_on_a_wide_input():
    """A group past 16 rows on an input wider than 2048 (a 4096-wide gate/up) was slower than cuBLAS; at
    2048 it was faster, end to end too."""
    from regionc.passes.decisions import decide, shape_class

    assert shape_class("skinny_linear", rows=8, weights=3) == "group, rows<=16"
    assert shape_class("skinny_linear", rows=8, weights=3, width=4096) == "group, rows<=16"
    assert shape_class("skinny_linear", rows=32, weights=2, width=4096) == "group, rows<=64, wide"
    assert shape_class("skinny_linear", rows=32, weights=1, width=4096) == "single, rows<=64"
    for rows, weights, width in ((8, 2, 4096), (8, 1, 4096), (32, 1, 4096), (32, 3, 2048)):
        cls = shape_class("skinny_linear", rows=rows, weights=weights, width=width)
        assert decide("cuda", "skinny_linear", cls).swap, cls
    assert not decide("cuda", "skinny_linear", shape_class("skinny_linear", rows=32, weights=2, width=4096)).swap
    assert not decide("cpu", "skinny_linear", "group, rows<=16").swap


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("batch, kernel_choice, intermediate, hidden, swapped, swiglu", [
    (1, "always", 1024, 512, 3, 1), (8, "always", 1024, 512, 3, 1), (8, "auto", 1024, 512, 4, 0),
    (8, "auto", 8192, 512, 3, 1), (8, "auto", 8192, 2560, 4, 0), (32, "auto", 8192, 512, 4, 0)])
def test_cuda_hf_llama_static_cache(batch, kernel_choice, intermediate, hidden, swapped, swiglu):
    """bf16 decode on the GPU: the pass finds the projections on the GPU's torch and the kernels'
    output stays within bf16 noise of eager through every step; by default (the decision table) all
    four projections are swapped at 8 and 32 rows (a 512-wide input), gate/up at 8 rows as one SwiGLU call
    where its 8192 columns fill the GPU without a K split (1024 do not) and its input is at most 2048 wide
    (2560 is not), else as a skinny_linear group."""
    transformers = pytest.importorskip("transformers")
    report = cuda_hf_decode(transformers, kernel_choice, batch=batch, max_cache_len=64,
                            intermediate_size=intermediate, hidden_size=hidden)
    matches = report.pass_matches
    assert (matches.get("skinny_linear", 0), matches.get("skinny_swiglu", 0)) == (swapped, swiglu), \
        (matches, report.pass_skips)
