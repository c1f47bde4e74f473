"""Combo kernels with the graph's sinks in the last one (``regionc/compiler/combo.py``)."""

from __future__ import annotations

import pytest
import torch

from regionc.compiler import combo
from tests.helpers import profiled_hf_decode_step


class _Scheduler:
    """What the grouping reads of Inductor's scheduler: its nodes, their levels and their dependencies."""

    def __init__(self, deps: dict[str, list[str]]):
        self.nodes = list(deps)
        self.deps = deps

    def _get_unmet_dep_nodes(self, node):
        return self.deps[node]

    def _topological_sort_nodes(self):
        levels, placed = [], set()
        while len(placed) < len(self.nodes):
            level = [n for n in self.nodes if n not in placed and set(self.deps[n]) <= placed]
            levels.append(level)
            placed.update(level)
        return levels


def test_sinks_join_the_last_level_and_nothing_runs_before_what_it_reads():
    # HF's decode piece in small: the cache write reads the counter, the counter's increment (a sink)
    # must follow it, and the block output is the deepest kernel
    deps = {"norm": [], "qkv": ["norm"], "rope_and_cache_write": ["qkv"], "counter_add": ["rope_and_cache_write"],
            "attention": ["rope_and_cache_write"], "o": ["attention"], "out": ["o"], "stat": ["norm"]}
    scheduler = _Scheduler(deps)
    before = scheduler._topological_sort_nodes()
    assert ["counter_add", "attention"] in before and before[-1] == ["out"]

    levels = combo._sinks_moved_last(scheduler)
    assert levels[-1] == ["out", "stat", "counter_add"]
    assert sorted(n for level in levels for n in level) == sorted(deps)
    index = {n: i for i, level in enumerate(levels) for n in level}
    assert all(index[d] < index[n] for n, ds in deps.items() for d in ds)


def test_a_graph_of_one_level_is_left_alone():
    assert combo._sinks_moved_last(_Scheduler({"a": [], "b": []})) == [["a", "b"]]


def test_the_grouping_is_installed_for_the_compiles_inside_only():
    from torch._inductor.scheduler import ForeachKernelSchedulerNode

    default = ForeachKernelSchedulerNode.group_algorithm_for_combo_kernels
    seen = []
    ForeachKernelSchedulerNode.set_group_algorithm_for_combo_kernels(lambda s: seen.append(s._topological_sort_nodes()))
    try:
        with combo.sinks_last():
            scheduler = _Scheduler({"a": [], "sink": ["a"], "b": ["a"], "c": ["b"]})
            ForeachKernelSchedulerNode.group_nodes_for_combo_kernels(scheduler)
        assert seen == [[["a"], ["b"], ["c", "sink"]]]
        assert "_topological_sort_nodes" not in vars(scheduler)  # the scheduler is handed back as it was
        ForeachKernelSchedulerNode.group_nodes_for_combo_kernels(scheduler)
        assert seen[-1] == [["a"], ["sink", "b"], ["c"]]
    finally:
        ForeachKernelSchedulerNode.set_group_algorithm_for_combo_kernels(default)


@pytest.mark.gpu
def test_hf_static_cache_counter_shares_the_last_launch_of_each_layer(tmp_path, monkeypatch):
    """HF Llama decoding on a CUDA StaticCache through the backend: each layer's counter increment
    joins the piece's last kernel, at least one launch per layer fewer than Inductor's own grouping; outputs
    equal eager's either way."""
    import contextlib

    from transformers import LlamaConfig, LlamaModel

    import regionc.compiler.inductor as inductor

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(0)
    model = LlamaModel(config).eval().to("cuda", torch.bfloat16)

    def launches_per_step(tag):
        kernels, out, expected = profiled_hf_decode_step(model, tmp_path / tag)
        return len(kernels), out, expected

    grouped, out, expected = launches_per_step("grouped")
    torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)
    monkeypatch.setattr(inductor, "sinks_last", contextlib.nullcontext)
    ungrouped, out, expected = launches_per_step("ungrouped")
    torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)
    assert ungrouped - grouped >= config.num_hidden_layers
