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

A group of two (gate, up) whose outputs feed nothing but a SwiGLU product, ``silu(gate) * up``,
becomes one ``regionc.skinny_swiglu`` call that returns the product itself (the pointwise kernel
between the projections and ``down`` goes away). SiLU is recognised by what the elementwise ops
between the projection and the product compute, evaluated once on a probe, not by their spelling:
Inductor decomposes it (``x / (1 + exp(-x))`` with dtype casts), models write ``x * sigmoid(x)``,
and another activation (GELU, say) must not match. Its decision-table class adds ``wide`` when its
input is wider than ``decisions.WIDE_INPUT`` and ``narrow`` when the column blocks alone are fewer than
``SWIGLU_MIN_PROGRAMS`` (the product needs the whole of K in one program, so there is no K split to
fill the GPU with, and each program's stream grows with K).
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch._inductor import config as inductor_config

from regionc.ops.skinny_linear import MAX_ROWS, SWIGLU_MIN_PROGRAMS, splits_for, swiglu_programs
from regionc.passes import _graph
from regionc.passes._graph import aten, is_call, same, shape_str, tensor_val

NAME = "skinny_linear"
SWIGLU = "skinny_swiglu"
#: where on [-8, 8] the probe's activation must equal SiLU (bf16 rounding of the graph's casts is
#: ~0.4%; GELU, the nearest other activation, is 0.1-0.2 away around 1-2)
_SILU_TOLERANCE = 0.02


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


def _elementwise(node: torch.fx.Node) -> bool:
    """A reshape, or an op torch tags pointwise (casts included): what may lie inside a SwiGLU."""
    if node.op != "call_function":
        return False
    target = node.target
    return target in _graph.VIEW_TARGETS or (isinstance(target, torch._ops.OpOverload)
                                              and torch.Tag.pointwise in target.tags)


def _region(root: torch.fx.Node, source: torch.fx.Node, order: dict) -> list[torch.fx.Node] | None:
    """The elementwise nodes that compute ``root`` from ``source`` and nothing else (in graph order),
    or None when ``root`` reads another tensor or passes through anything else."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is source or node in seen:
            continue
        if not _elementwise(node):
            return None
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return sorted(seen, key=order.__getitem__)


def _computes_silu(region: list[torch.fx.Node], source: torch.fx.Node) -> bool:
    """Run ``region`` on a probe in place of ``source``: does its last node give SiLU of it?"""
    shape = [_graph.hint(d) for d in tensor_val(source).shape]
    if None in shape:
        return False
    numel = 1
    for d in shape:
        numel *= d
    # real CPU tensors, whatever fake mode the compile has on
    with torch._subclasses.fake_tensor.unset_fake_temporarily(), torch.no_grad():
        probe = torch.linspace(-8.0, 8.0, numel).reshape(shape).to(tensor_val(source).dtype)
        env = {source: probe}
        try:
            for node in region:
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
                env[node] = node.target(*args, **kwargs)
            out = env[region[-1]]
            return (isinstance(out, torch.Tensor) and out.numel() == numel and torch.allclose(
                out.float().reshape(-1), torch.nn.functional.silu(probe.float()).reshape(-1),
                rtol=_SILU_TOLERANCE, atol=_SILU_TOLERANCE))
        except Exception:  # noqa: BLE001 - an op that does not run on a CPU probe: not recognised
            return False


def _swiglu_at(group: dict, order: dict):
    """``(product node, gate index)`` when a group's two linears feed nothing but ``silu(gate) * up``, else None."""
    outs = group["outs"]
    if len(outs) != 2 or any(a is not None for a in group["addends"]):
        return None
    for gate_i in (0, 1):
        gate, up = outs[gate_i], outs[1 - gate_i]
        end = up  # the up projection reaches the product through reshapes and casts only
        while len(end.users) == 1 and is_call(next(iter(end.users)), _graph.CONVERT, *_graph.VIEW_TARGETS):
            end = next(iter(end.users))
        (product,) = end.users if len(end.users) == 1 else (None,)
        if not is_call(product, _graph.MUL) or (act := _graph.other_operand(product, end)) is None:
            continue
        region = _region(act, gate, order) if isinstance(act, torch.fx.Node) else None
        if not region or region[-1] is not act:
            continue
        inside = set(region) | {product}
        if any(user not in inside for node in (gate, *region) for user in node.users):
            continue  # the activation or a step of it is read elsewhere: the linears must stay
        pv, gv = tensor_val(product), tensor_val(gate)
        if pv is None or pv.dtype != group["dtype"] or not same(pv.numel(), gv.numel()):
            continue
        if _computes_silu(region, gate):
            return product, gate_i
    return None


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


def rewrite_swiglu(graph: torch.fx.Graph, group, product: torch.fx.Node, gate_i: int) -> torch.fx.Node:
    """One ``skinny_swiglu`` call in place of the two linears, the activation and the product; returns
    what now stands for the product."""
    call = _graph.insert_call(graph, group["outs"][0], torch.ops.regionc.skinny_swiglu.default,
                              (group["x"], group["weights"][gate_i], group["weights"][1 - gate_i]))
    shape = list(tensor_val(product).shape)
    result = _graph.insert_call(graph, product, aten.reshape.default, (call, shape))
    product.replace_all_uses_with(result)
    return result


def run(graph: torch.fx.Graph, ctx, matches) -> None:
    # SwiGLUs are looked for before any rewrite (graph order, for the probe), and only with their pass on
    order = {node: i for i, node in enumerate(graph.nodes)} if ctx.on(SWIGLU) else None
    swiglus = [_swiglu_at(group, order) if order is not None else None for group in matches]
    moved = {}  # a product the SwiGLU call replaced -> its replacement (down's input, found before)
    for group, swiglu in zip(matches, swiglus):
        group["x"] = moved.get(group["x"], group["x"])
        device, rows = group["device"], group["rows"]
        k = _graph.hint(tensor_val(group["x"]).shape[1])
        if swiglu is not None:
            narrow = swiglu_programs(rows, group["columns"][0], k) < SWIGLU_MIN_PROGRAMS
            desc = f"{SWIGLU} at x{shape_str(tensor_val(group['x']))} × gate/up of {group['columns'][0]} columns " \
                   f"{_graph.dtype_str(group['dtype'])}"
            if ctx.allow(SWIGLU, desc, device=device, rows=rows, weights=2, narrow=narrow, width=k):
                moved[swiglu[0]] = rewrite_swiglu(graph, group, *swiglu)
                continue
        if ctx.on(NAME) and ctx.allow(NAME, group["desc"], device=device, rows=rows, weights=len(group["weights"]),
                                      width=k):
            rewrite(graph, group)
