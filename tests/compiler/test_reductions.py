"""Decode pieces' row reductions in one pass (``regionc/compiler/reductions.py``)."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.sizevars import SizeVarAllocator
from torch._inductor.virtualized import V

from regionc.compiler.reductions import MAX_ROW, persistent_rows
from regionc.passes.decisions import SMALL_ROWS
from tests.helpers import profiled_hf_decode_step


class _Features:
    """What Inductor's choice reads of a reduction: its kind and the length of the reduced dim."""

    def __init__(self, numel: int, hint=ReductionHint.INNER, rows: int = 8):
        self.reduction_numel = sympy.Integer(numel)
        self.numel = sympy.Integer(rows)
        self._hint = hint

    def get_reduction_hint(self):
        return self._hint


class _Graph:
    sizevars = SizeVarAllocator()


def _persistent(features) -> bool:
    return V.choices.should_use_persistent_reduction(features, False)


def test_few_rows_up_to_the_limit_are_reduced_in_one_pass_inside_only():
    with V.set_graph_handler(_Graph()):
        assert not _persistent(_Features(2048))  # Inductor's own limit is 1024
        with persistent_rows():
            assert _persistent(_Features(2048))
            assert _persistent(_Features(MAX_ROW))
            assert _persistent(_Features(512))  # what Inductor made persistent stays so
            assert not _persistent(_Features(2 * MAX_ROW))
            assert not _persistent(_Features(2048, ReductionHint.OUTER))  # only rows along the inner dim
            assert _persistent(_Features(2048, rows=SMALL_ROWS))
            assert not _persistent(_Features(2048, rows=SMALL_ROWS + 1))  # a prefill's rows: Inductor decides
        assert not _persistent(_Features(2048))


@pytest.mark.gpu
def test_hf_decode_norms_are_one_pass_kernels(tmp_path, monkeypatch):
    """HF Llama 2048 wide decoding on a CUDA StaticCache through the backend: its RMSNorms compile to
    persistent reductions (``triton_per``), not loops (``triton_red``), and the output equals eager's."""
    import contextlib

    from transformers import LlamaConfig, LlamaModel

    import regionc.compiler.inductor as inductor

    config = LlamaConfig(hidden_size=2048, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=128)
    torch.manual_seed(0)
    model = LlamaModel(config).eval().to("cuda", torch.bfloat16)

    def norm_kernels(tag):
        kernels, out, expected = profiled_hf_decode_step(model, tmp_path / tag)
        torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)
        return {n.split("_fused")[0] for n in kernels if "rsqrt" in n}

    assert "triton_red" not in norm_kernels("one-pass")
    monkeypatch.setattr(inductor, "persistent_rows", contextlib.nullcontext)
    assert "triton_red" in norm_kernels("looped")
