"""Residual add followed by RMSNorm → ``regionc.fused_add_rms_norm``.

Recognised: an RMSNorm (any spelling :mod:`regionc.passes.rms_norm` accepts) whose input is
``aten.add.Tensor(a, b)`` of two tensors with the same shape and dtype (no broadcast, no
``alpha``). The sum's other users (the residual stream the next block adds to) take the op's
second output, ``new_residual``; the norm's users take the first. Not matched: a broadcasting
add (bias), ``alpha != 1``, a scalar operand, a sum in another dtype than its operands.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from regionc.passes._graph import aten, insert_call, is_call, same_shape, tensor_val
from regionc.passes.rms_norm import RmsNormMatch

NAME = "fused_add_rms_norm"


def residual_operands(match: RmsNormMatch):
    """(a, b) when the norm's input is a plain same-shape, same-dtype add; else None."""
    add = match.x
    if not is_call(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs:
        return None
    a, b = add.args
    at, bt, st = tensor_val(a), tensor_val(b), tensor_val(add)
    if at is None or bt is None:
        return None
    if at.dtype != st.dtype or bt.dtype != st.dtype:
        return None
    if not (same_shape(at.shape, st.shape) and same_shape(bt.shape, st.shape)):
        return None
    return a, b


def rewrite(graph: torch.fx.Graph, match: RmsNormMatch, operands) -> None:
    a, b = operands
    add = match.x
    fused = insert_call(graph, match.out, torch.ops.regionc.fused_add_rms_norm.default,
                        (a, b, match.weight, match.eps))
    normed = insert_call(graph, match.out, operator.getitem, (fused, 0))
    new_residual = insert_call(graph, match.out, operator.getitem, (fused, 1))
    match.out.replace_all_uses_with(normed)
    add.replace_all_uses_with(new_residual)  # the norm's own nodes die with match.out's uses


def run(graph: torch.fx.Graph, ctx, matches: list[RmsNormMatch]) -> list[RmsNormMatch]:
    """Fuse the matches that sit on a residual add; return the ones left for the plain norm pass."""
    rest, fused_adds = [], set()
    for match in matches:
        operands = residual_operands(match)
        if operands is not None and match.x in fused_adds:  # a second norm of the same sum: plain norm
            operands = None
        if operands is not None and ctx.allow(NAME, match.describe(NAME), device=tensor_val(match.x).device,
                                              rows=match.rows):
            rewrite(graph, match, operands)
            fused_adds.add(match.x)
        else:
            rest.append(match)
    return rest
