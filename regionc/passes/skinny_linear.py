"""Linears over few rows → ``regionc.skinny_linear``, the projections that read one input in one call.

What it looks for in the post-grad graph: a linear as AOTAutograd leaves it, ::

    mm(reshape(x, [M, K]), permute(W, [1, 0]))            # or aten.t(W); addmm(b, ...) with a bias,
                                                          # or with any addend Inductor folded in
                                                          # (a residual)

with ``M`` a static number of rows at most ``ops.skinny_linear.MAX_ROWS`` (a decode step's tokens),
x and W of one float dtype and W's rows unit-strided on K. Each becomes, in the graph, ::

    parts = regionc.skinny_linear(x, [W, ...], splits)      # fp32 partial products over K
    y = convert_element_type(sum(parts[i], [0]) + b, dtype)

so the sum over the splits, the bias or addend and the cast are pointwise work that Inductor folds
into the consumer's kernel (``splits`` stays below Inductor's ``unroll_reductions_threshold``, under
which it inlines a sum as loads; at the threshold the sum is a kernel of its own), with one rounding
to the model's dtype as in cuBLAS's epilogue.

Linears whose inputs are the same tensor (the reshapes of one node, as HF's q/k/v and gate/up
projections each reshape the normed hidden state) become one call, their weights a list: a decoder
layer's seven projections become four calls (q/k/v, o, gate/up, down). The decision table swaps a
call in by its class, ``group`` or ``single``, and its row count.

Only weights that are graph inputs (the parameters, lifted) are grouped: a weight computed in the
graph could depend on a sibling's output, and one call for both would be a cycle; such a linear
is swapped alone.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch._inductor import config as inductor_config

from regionc.ops.skinny_linear import MAX_ROWS, splits_for
from regionc.passes import _graph
from regionc.passes._graph import aten, is_call, same, shape_str, tensor_val

NAME = "skinny_linear"


def _weight_of(node):
    """W when ``node`` is ``permute(W, [1, 0])`` or ``t(W)`` of a 2-D W, else None."""
    if is_call(node, aten.permute.default) and list(node.args[1]) in ([1, 0], [-1, -2], [1, -2], [-1, 0]):
        w = node.args[0]
    elif is_call(node, aten.t.default):
        w = node.args[0]
    else:
        return None
    wt = tensor_val(w)
    return w if wt is not None and wt.dim() == 2 else None


def match_at(node: torch.fx.Node):
    """(linear spec, None) | (None, skip reason) | (None, None) when ``node`` is not a linear."""
    if is_call(node, aten.mm.default):
        x, wt_node = node.args[:2]
        addend = None
    elif is_call(node, aten.addmm.default):
        addend, x, wt_node = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None, None
    else:
        return None, None
    w = _weight_of(wt_node)
    xt, wv = tensor_val(x), tensor_val(w)
    if w is None or xt is None or xt.dim() != 2:
        return None, None
    rows, k = xt.shape
    desc = f"{NAME} at x{shape_str(xt)} weight{shape_str(wv)} {_graph.dtype_str(xt.dtype)}"
    if not isinstance(rows, int):
        return None, f"{desc}: the row count is symbolic"
    if rows > MAX_ROWS:
        return None, None  # a GEMM: nothing for this pass, not worth a report line per linear
    if xt.dtype not in _graph.FLOAT_DTYPES or wv.dtype != xt.dtype:
        return None, f"{desc}: x and weight dtypes {xt.dtype} / {wv.dtype}"
    if not same(wv.shape[1], k) or not same(wv.stride(1), 1):
        return None, f"{desc}: the weight is not [N, K] with unit stride on K"
    return {"out": node, "x": x, "w": w, "addend": addend, "rows": rows, "dtype": xt.dtype}, None


def find(graph: torch.fx.Graph):
    """The linears, grouped: ``[{"x", "weights", "addends", "outs", "rows", "columns", "dtype", "device",
    "desc"}, ...]``."""
    linears, skips = _graph.split_matches(match_at(node) for node in list(graph.nodes))
    groups: dict = {}
    for spec in linears:
        shape = tuple(tensor_val(spec["x"]).shape)
        lifted = spec["w"].op in ("placeholder", "get_attr")
        # siblings reshape one tensor each on their own: grouped by what is behind the reshapes
        key = (_graph.strip_views(spec["x"]), shape) if lifted else spec["out"]
        groups.setdefault(key, []).append(spec)
    found = []
    for members in groups.values():
        first = members[0]
        xt = tensor_val(first["x"])
        columns = [_graph.hint(tensor_val(m["w"]).shape[0]) for m in members]
        found.append({
            "x": first["x"], "weights": [m["w"] for m in members], "addends": [m["addend"] for m in members],
            "outs": [m["out"] for m in members], "rows": first["rows"],
            "columns": columns, "dtype": first["dtype"], "device": xt.device,
            "desc": f"{NAME} at x{shape_str(xt)} × {len(members)} weight(s) of {'+'.join(map(str, columns))} columns "
                    f"{_graph.dtype_str(first['dtype'])}",
        })
    return found, skips


def rewrite(graph: torch.fx.Graph, group) -> None:
    """One call before the group's first linear (``finish`` reorders if a bias comes later), then per
    linear the sum of its partials, its bias (or other addend) in fp32, and one cast to the model's dtype."""
    first = group["outs"][0]
    k = _graph.hint(tensor_val(group["x"]).shape[1])
    splits = splits_for(group["rows"], group["columns"], k, most=inductor_config.unroll_reductions_threshold - 1)
    call = _graph.insert_call(graph, first, torch.ops.regionc.skinny_linear.default,
                              (group["x"], list(group["weights"]), splits))
    for i, (out, addend) in enumerate(zip(group["outs"], group["addends"])):
        result = _graph.insert_call(graph, first, operator.getitem, (call, i))
        result = _graph.insert_call(graph, first, aten.sum.dim_IntList, (result, [0]))
        if addend is not None:
            result = _graph.insert_call(graph, out, aten.add.Tensor, (result, addend))
        result = _graph.insert_call(graph, out, torch.ops.prims.convert_element_type.default, (result, group["dtype"]))
        out.replace_all_uses_with(result)


def run(graph: torch.fx.Graph, ctx, matches) -> None:
    for group in matches:
        if ctx.allow(NAME, group["desc"], device=group["device"], rows=group["rows"], weights=len(group["weights"])):
            rewrite(graph, group)
