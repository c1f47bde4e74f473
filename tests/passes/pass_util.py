"""Helpers for the pass tests: compile with regionc's passes and capture the rewritten graphs."""

from __future__ import annotations

import contextlib

import torch

import regionc
from regionc.config import Config
from regionc.passes import PassManager, graph_hook

REGIONC_OPS = ("rms_norm", "fused_add_rms_norm", "rope", "attention")


class Captured:
    """Post-pass graphs seen during a compile, and the matches/skips recorded."""

    def __init__(self):
        self.graphs: list[torch.fx.Graph] = []
        self.matches: dict[str, int] = {}
        self.skips: list[str] = []

    def targets(self, graph) -> list:
        return [n.target for n in graph.nodes if n.op == "call_function"]

    def count(self, graph, target) -> int:
        return sum(1 for t in self.targets(graph) if t == target)

    def with_op(self, name: str) -> list[torch.fx.Graph]:
        op = getattr(torch.ops.regionc, name).default
        return [g for g in self.graphs if op in self.targets(g)]

    def block_graph(self) -> torch.fx.Graph:
        """The graph with an attention (the block's): one per unique block, pieces are compiled once."""
        with_attn = [g for g in self.graphs if any(
            "attention" in str(t) for t in self.targets(g))]
        assert with_attn, "no graph with attention was compiled"
        return with_attn[0]


@contextlib.contextmanager
def capture():
    cap = Captured()
    with graph_hook(cap.graphs.append):
        yield cap


def compile_with_passes(model, options: dict | None, cap: Captured):
    """torch.compile through regionc (in-memory compiles); matches/skips copied from the report."""
    compiled = torch.compile(model, backend="regionc", options={"cache": False, "strict": True, **(options or {})})

    def run(*args, **kwargs):
        out = compiled(*args, **kwargs)
        report = regionc.last_report()
        cap.matches = dict(report.pass_matches)
        cap.skips = list(report.pass_skips)
        return out

    return run


def compile_fn_with_passes(fn, options: dict | None = None, device="cpu"):
    """Plain Inductor (no regions) with regionc's passes: for pattern tests on small functions."""
    pm = PassManager(Config.build({"kernel_choice": "always", **(options or {})}), device)
    patches = pm.inductor_config_patches()
    compiled = torch.compile(fn, backend="inductor")

    def run(*args):
        with torch._inductor.config.patch(patches):
            return compiled(*args)

    return run, pm


def hf_decoder(transformers, arch: str = "Llama", **overrides):
    """A tiny HF decoder of ``arch`` (2 layers, 4 / 2 heads of 64 unless overridden) on SDPA, in eval
    mode: (model, config)."""
    sizes = dict(hidden_size=256, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, head_dim=64)
    cfg = getattr(transformers, f"{arch}Config")(**{**sizes, **overrides})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return getattr(transformers, f"{arch}Model")(cfg).eval(), cfg


def prefilled_cache(transformers, model, cfg, batch: int, prompt: int, max_cache_len: int):
    """A ``StaticCache`` holding an eager prefill of ``batch`` × ``prompt`` tokens (on the model's device)."""
    device = next(model.parameters()).device
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    model(torch.arange(batch * prompt, device=device).view(batch, prompt) % cfg.vocab_size, past_key_values=cache,
          use_cache=True, cache_position=torch.arange(prompt, device=device))
    return cache


def cuda_hf_decode(transformers, kernel_choice: str, batch: int, max_cache_len: int, **sizes):
    """A tiny bf16 HF Llama (8 / 2 heads of 64) decoding three steps on a CUDA ``StaticCache`` through
    ``backend="regionc"``, each within bf16 noise of eager; returns regionc's last report."""
    import regionc

    model, cfg = hf_decoder(transformers, **{"hidden_size": 512, "num_attention_heads": 8, **sizes})
    model = model.to("cuda", torch.bfloat16)
    with torch.no_grad():
        eager_cache, compiled_cache = (prefilled_cache(transformers, model, cfg, batch, 6, max_cache_len)
                                       for _ in range(2))
        compiled = torch.compile(model, backend="regionc", options={"cache": False, "kernel_choice": kernel_choice})
        for pos in (6, 7, 8):
            tok = torch.randint(0, 128, (batch, 1), device="cuda")
            pos_t = torch.tensor([pos], device="cuda")
            expected = model(tok, past_key_values=eager_cache, use_cache=True, cache_position=pos_t).last_hidden_state
            actual = compiled(tok, past_key_values=compiled_cache, use_cache=True, cache_position=pos_t).last_hidden_state
            err = ((actual.float() - expected.float()).norm() / expected.float().norm()).item()
            assert err < 2e-2, (pos, err)
    return regionc.last_report()
