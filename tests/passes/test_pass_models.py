"""Fusion passes on whole models: the demo decoder, HF LlamaModel and HF Qwen3Model (tiny, random).

Head dim 64 (hidden 256, 4 heads, 2 KV heads): the attention kernel only has head dims 64 and 128,
so hidden 64 / 4 heads (head dim 16) would keep SDPA — that refusal is tested separately.
"""

from __future__ import annotations

import pytest
import torch

from regionc.config import PASS_NAMES, Config
from regionc.models.llama import LlamaConfig, build_demo_model
from regionc.passes import PassManager
from tests.helpers import assert_close
from tests.passes.pass_util import capture, compile_with_passes

regionc_ops = torch.ops.regionc
aten = torch.ops.aten
ALWAYS = {"kernel_choice": "always"}
EXPANSION_OPS = (aten.expand.default, aten.clone.default, aten.repeat_interleave.self_int)


def demo(dtype=torch.float32):
    return build_demo_model(LlamaConfig.tiny(2, dim=256), dtype=dtype)


def hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=256, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, head_dim=64)
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaModel(cfg)
    else:
        cfg = transformers.Qwen3Config(**common)
        model = transformers.Qwen3Model(cfg)
    cfg._attn_implementation = "sdpa"
    return model.eval()


def run_model(model, options, tokens):
    with capture() as cap, torch.no_grad():
        expected = model(tokens)
        compiled = compile_with_passes(model, options, cap)
        actual = compiled(tokens)
    return cap, expected, actual


def assert_block_rewritten(cap, graph, norms_in_block: int, attention: bool = True):
    """Every norm is rewritten; a block's two adds each fuse with the norm after them (the residual
    add entering the block comes from the previous one: blocks/boundaries.py). ``attention=False``: the
    block's SDPA is handed a mask, which the kernel does not take, so it stays."""
    targets = cap.targets(graph)
    assert targets.count(regionc_ops.fused_add_rms_norm.default) == 2
    assert targets.count(regionc_ops.rms_norm.default) == norms_in_block
    assert targets.count(regionc_ops.rope.default) == 1
    if not attention:
        assert regionc_ops.attention.default not in targets
        assert [t for t in targets if "scaled_dot_product" in str(t)]
        return
    assert targets.count(regionc_ops.attention.default) == 1
    # nothing of the patterns is left: no SDPA, no rsqrt, no cat of rotate_half, no GQA copies
    assert not [t for t in targets if "scaled_dot_product" in str(t)]
    assert aten.rsqrt.default not in targets and aten.cat.default not in targets
    attn = next(n for n in graph.nodes if n.target is regionc_ops.attention.default)
    q, k, v = attn.args[:3]
    assert k.meta["val"].shape[1] == 2 and v.meta["val"].shape[1] == 2  # kv heads read once
    # nothing upstream of k/v copies them (the RoPE tables, recomputed in the block, may expand; they are
    # not followed through the rope op)
    seen, todo = set(), [k, v]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        assert node.target not in EXPANSION_OPS, f"{node} copies k/v before attention"
        todo.extend(node.args[:2] if node.target is regionc_ops.rope.default else node.all_input_nodes)


def test_demo_decoder_all_passes():
    model = demo()
    cap, expected, actual = run_model(model, ALWAYS, torch.randint(0, 128, (2, 16)))
    assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert_block_rewritten(cap, cap.block_graph(), norms_in_block=0)
    # the final norm (glue, after the last block's add) is rewritten too; block passes counted once;
    # 32 rows are few enough for the skinny linears: q/k/v, o, down, and the glue's output head, and the
    # SwiGLU of gate/up
    assert cap.matches == {"fused_add_rms_norm": 3, "rope": 1, "attention": 1, "skinny_linear": 4,
                           "skinny_swiglu": 1}


def test_demo_decoder_bf16():
    model = demo(torch.bfloat16)
    cap, expected, actual = run_model(model, ALWAYS, torch.randint(0, 128, (1, 16)))
    assert_close(actual.float(), expected.float(), atol=5e-2, rtol=5e-2)
    assert_block_rewritten(cap, cap.block_graph(), norms_in_block=0)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_hf_models(kind):
    model = hf_model(kind)
    cap, expected, actual = run_model(model, ALWAYS, torch.randint(0, 128, (1, 16)))
    assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    # Torch 2.11's trace of HF's causal prefill hands SDPA the mask HF built (2.13's sets is_causal):
    # the attention kernel takes no mask, so the pass keeps SDPA there and says why
    masked = torch.__version__ < torch.torch_version.TorchVersion("2.12")
    if masked:
        assert any(": attention at " in s and "attn_mask given" in s for s in cap.skips), cap.skips
    # Qwen3 adds q_norm and k_norm (RMSNorm over the head dim) in each block
    assert_block_rewritten(cap, cap.block_graph(), norms_in_block=0 if kind == "llama" else 2, attention=not masked)


def test_disabling_a_pass_removes_its_matches():
    model = demo()
    cap, expected, actual = run_model(model, {**ALWAYS, "passes": {"rope": False}},
                                      torch.randint(0, 128, (1, 8)))
    assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert "rope" not in cap.matches and cap.matches["attention"] == 1
    graph = cap.block_graph()
    assert regionc_ops.rope.default not in cap.targets(graph)
    assert aten.cat.default in cap.targets(graph)  # rotate_half is still there


def test_auto_on_cpu_swaps_nothing_and_says_why():
    model = demo()
    cap, expected, actual = run_model(model, {"kernel_choice": "auto"}, torch.randint(0, 128, (1, 8)))
    assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    assert cap.matches == {}
    assert not any(str(t).startswith("regionc.") for g in cap.graphs for t in cap.targets(g))
    ops = {s.split(": ", 1)[1].split(" ")[0] for s in cap.skips}  # "<piece>: <op> at ...: kept ..."
    assert ops == {"rms_norm", "fused_add_rms_norm", "rope", "attention", "skinny_linear", "skinny_swiglu"}
    assert all("kept" in s and "cpu" in s for s in cap.skips)


def test_uuid_follows_options_and_sources():
    base = PassManager(Config.build({}), "cpu")
    same = PassManager(Config.build({}), "cpu")
    patch = base.inductor_config_patches()["post_grad_custom_post_pass"]
    assert patch.uuid() == same.inductor_config_patches()["post_grad_custom_post_pass"].uuid()
    others = [
        PassManager(Config.build({"passes": {"rope": False}}), "cpu"),
        PassManager(Config.build({"kernel_choice": "always"}), "cpu"),
        PassManager(Config.build({}), "cuda"),
    ]
    uuids = {patch.uuid()} | {pm.inductor_config_patches()["post_grad_custom_post_pass"].uuid() for pm in others}
    assert len(uuids) == 4
    off = PassManager(Config.build({"passes": {n: False for n in PASS_NAMES}}), "cpu")
    assert off.inductor_config_patches() == {}


def test_uuid_follows_the_code_a_pass_can_insert_on_the_device(monkeypatch):
    """A pass's or kernel's source is in the version only where that pass may swap its kernel in:
    editing RoPE's kernel keeps every CPU entry (auto swaps nothing there), not a kernel_choice="always" one."""
    import regionc.passes.version as version

    auto, always = Config.build({}), Config.build({"kernel_choice": "always"})
    assert PassManager(auto, "cpu").acting_passes() == []
    assert PassManager(auto, "cuda").acting_passes() == ["decode_attention", "skinny_linear", "skinny_swiglu"]
    before = {name: PassManager(config, "cpu").uuid() for name, config in (("auto", auto), ("always", always))}
    monkeypatch.setitem(version.PASS_SOURCES, "rope", ("passes/rope.py", "ops/rms_norm.py"))  # "rope's kernel edited"
    assert PassManager(auto, "cpu").uuid() == before["auto"]
    assert PassManager(always, "cpu").uuid() != before["always"]
    monkeypatch.setattr(version, "COMMON_SOURCES", (*version.COMMON_SOURCES, "passes/decisions.py"))
    assert PassManager(auto, "cpu").uuid() != before["auto"]


def test_inductor_cache_key_sees_the_pass():
    """Inductor keeps its FX cache on for a CustomGraphPass with a uuid (no bypass)."""
    pm = PassManager(Config.build({}), "cpu")
    pass_ = pm.inductor_config_patches()["post_grad_custom_post_pass"]
    from torch._inductor.custom_graph_pass import CustomGraphPass

    assert isinstance(pass_, CustomGraphPass) and isinstance(pass_.uuid(), str)
