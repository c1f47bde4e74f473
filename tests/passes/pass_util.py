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
    """A tiny HF decoder of ``arch`` (2 layers, 4 / 2 heads of 64) on SDPA, in eval mode: (model, config)."""
    cfg = getattr(transformers, f"{arch}Config")(hidden_size=256, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                                 head_dim=64, **overrides)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return getattr(transformers, f"{arch}Model")(cfg).eval(), cfg


def prefilled_cache(transformers, model, cfg, batch: int, prompt: int, max_cache_len: int):
    """A ``StaticCache`` holding an eager prefill of ``batch`` × ``prompt`` tokens."""
    cache = transformers.StaticCache(config=cfg, max_cache_len=max_cache_len)
    model(torch.arange(batch * prompt).view(batch, prompt), past_key_values=cache, use_cache=True,
          cache_position=torch.arange(prompt))
    return cache
