"""RMSNorm → ``regionc.rms_norm``.

Recognised in the post-grad graph (all spellings end up as these aten nodes)::

    X    = x  |  convert_element_type(x, float32)          # fp32 upcast or not
    rstd = rsqrt(mean(pow(X, 2) | X*X, [-1], keepdim=True) + eps)     (or 1/sqrt via div)
    h    = X * rstd                                          (or X / sqrt(...))
    out  = a chain of at most one ``* weight`` (weight 1-D [hidden], any float dtype, maybe cast)
           and dtype casts, in any order, ending in x's dtype

which covers Llama/HF (``weight * h.to(dtype)``), the weight applied before the cast
(``(h * weight).to(dtype)``), the no-upcast form, ``F.rms_norm`` and Gemma-style computed weights
(``1 + w`` is just another 1-D tensor). Not matched: a reduction over another dim than the last,
``keepdim=False``, no weight, a weight that is not 1-D [hidden] (broadcast [1, 1, H]), an output
dtype other than x's (e.g. fp32 weights with bf16 activations give an fp32 output), or
intermediates used elsewhere (e.g. ``rstd`` saved for a backward).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx

from regionc.passes import _graph
from regionc.passes._graph import FLOAT_DTYPES, aten, is_call, tensor_val

NAME = "rms_norm"


@dataclasses.dataclass
class RmsNormMatch:
    x: torch.fx.Node  # the normalised tensor, before any upcast
    weight: torch.fx.Node
    eps: float
    out: torch.fx.Node  # the node whose uses the op's output takes over

    @property
    def rows(self) -> int | None:
        t = tensor_val(self.x)
        n = 1
        for s in t.shape[:-1]:
            h = _graph.hint(s)
            if h is None:
                return None
            n *= h
        return n

    def describe(self, what: str = NAME) -> str:
        t = tensor_val(self.x)
        return f"{what} at {_graph.shape_str(t)} {_graph.dtype_str(t.dtype)}"


def _eps_of(add: torch.fx.Node, mean: torch.fx.Node):
    other = _graph.other_operand(add, mean)
    if isinstance(other, (int, float)) and not isinstance(other, bool) and len(add.args) == 2 and not add.kwargs:
        return float(other)
    return None


def _squared_input(node: torch.fx.Node):
    """X for ``pow(X, 2)`` or ``X * X``."""
    if is_call(node, aten.pow.Tensor_Scalar) and node.args[1] == 2:
        return node.args[0]
    if is_call(node, _graph.MUL) and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def match_at(rsqrt: torch.fx.Node) -> tuple[RmsNormMatch | None, str | None]:
    """Try to read an RMSNorm around an ``rsqrt``/``sqrt`` node: (match, None), (None, skip reason)
    when it is an RMSNorm that cannot be swapped, or (None, None) when it is something else."""
    inverse = is_call(rsqrt, aten.sqrt.default)  # x / sqrt(ms + eps)
    add = rsqrt.args[0]
    if not is_call(add, *_graph.ADD_TARGETS):
        return None, None
    mean = next((a for a in add.args[:2] if is_call(a, aten.mean.dim)), None)
    if mean is None:
        return None, None
    eps = _eps_of(add, mean)
    X = _squared_input(mean.args[0])
    if eps is None or X is None:
        return None, None
    xv = tensor_val(X)
    if xv is None or xv.dim() < 1 or xv.dtype not in FLOAT_DTYPES:
        return None, None
    # the normalising multiply: X * rstd (or X / sqrt)
    norm = None
    if _graph.single_user(rsqrt):
        (user,) = rsqrt.users
        if not inverse and is_call(user, _graph.MUL) and _graph.other_operand(user, rsqrt) is X:
            norm = user
        if inverse and is_call(user, aten.div.Tensor) and user.args[0] is X and user.args[1] is rsqrt:
            norm = user
    if norm is None:
        return None, None
    x = X
    if is_call(X, _graph.CONVERT) and tensor_val(X.args[0]) is not None and tensor_val(X.args[0]).dtype in FLOAT_DTYPES:
        x = X.args[0]
    xt = tensor_val(x)
    desc = f"{NAME} at {_graph.shape_str(xt)} {_graph.dtype_str(xt.dtype)}"
    # from here on it is an RMSNorm; refusals carry a reason
    dims = mean.args[1] if len(mean.args) > 1 else mean.kwargs.get("dim")
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if not (isinstance(dims, (list, tuple)) and len(dims) == 1
            and _graph.normalize_dim(dims[0], xv.dim()) == xv.dim() - 1 and keepdim):
        return None, f"{desc}: reduces over dims {dims} (keepdim={keepdim}), not the last dim"
    for node in (mean.args[0], mean, add, rsqrt):
        if not _graph.single_user(node):
            return None, f"{desc}: an intermediate ({node.name}) is used elsewhere"
    # walk the elementwise chain after the normalisation: casts and one weight multiply
    n = xt.shape[-1]
    weight = None
    node = norm
    end = None
    while True:
        if weight is not None and tensor_val(node).dtype == xt.dtype:
            end = node
        if len(node.users) != 1:
            break
        (user,) = node.users
        if is_call(user, _graph.CONVERT) and user.args[1] in FLOAT_DTYPES:
            node = user
            continue
        if weight is None and is_call(user, _graph.MUL):
            w = _graph.other_operand(user, node)
            wt = tensor_val(w)
            if wt is not None and wt.dim() == 1 and _graph.same(wt.shape[0], n) and wt.dtype in FLOAT_DTYPES:
                weight = _graph.strip_converts(w) if tensor_val(_graph.strip_converts(w)).dtype in FLOAT_DTYPES else w
                node = user
                continue
        break
    if weight is None:
        return None, f"{desc}: no 1-D [hidden] weight multiply after the normalisation"
    if end is None:
        return None, (f"{desc}: output dtype {_graph.dtype_str(tensor_val(node).dtype)} differs from the input's "
                      "(the kernel returns x's dtype)")
    if not all(_graph.same(a, b) for a, b in zip(tensor_val(end).shape, xt.shape)) or tensor_val(end).dim() != xt.dim():
        return None, f"{desc}: output shape {_graph.shape_str(tensor_val(end))} differs from the input's"
    return RmsNormMatch(x, weight, eps, end), None


def find(graph: torch.fx.Graph) -> tuple[list[RmsNormMatch], list[str]]:
    return _graph.split_matches(match_at(node) for node in list(graph.nodes)
                         if is_call(node, aten.rsqrt.default, aten.sqrt.default))


def rewrite(graph: torch.fx.Graph, match: RmsNormMatch) -> torch.fx.Node:
    new = _graph.insert_call(graph, match.out, torch.ops.regionc.rms_norm.default, (match.x, match.weight, match.eps))
    match.out.replace_all_uses_with(new)
    return new


def run(graph: torch.fx.Graph, ctx, matches: list[RmsNormMatch]) -> None:
    """Swap every match the context allows (``ctx.allow`` records the choice and any skip)."""
    for match in matches:
        if ctx.allow(NAME, match.describe(), device=tensor_val(match.x).device, rows=match.rows):
            rewrite(graph, match)
