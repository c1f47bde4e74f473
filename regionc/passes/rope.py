"""Rotary position embedding on q and k → one ``regionc.rope`` call.

Recognised per tensor, in the post-grad graph::

    out = x * cos' + rot(x) * sin'        (either operand order; optionally x = q.float() and
                                           out cast back to q's dtype)
    rot(x), rotate-half (Llama/NeoX/HF): cat([-x2, x1], -1), halves from ``chunk``/``split``
                                           (split + getitem) or from slicing ``x[..., :d/2]``
    rot(x), interleaved (GPT-J):          reshape(cat([unsqueeze(-x[..., 1::2], -1),
                                           unsqueeze(x[..., ::2], -1)], -1))   (= stack + flatten)

``cos'``/``sin'`` broadcast against x as ``[B|1, 1, S, D]`` (layout bhsd, e.g. HF's
``cos.unsqueeze(1)``) or ``[B|1, S, 1, D]`` (bshd), or are ``[S, D]``/``[1, S, D]`` (bhsd).
Two such tensors rotated with the same cos/sin (q and k; k may have fewer heads) become one
op. Not matched: a rotation applied to one tensor only, cos/sin that vary per head, a
partial rotary dim (rotating only the first d' < D channels), complex-number RoPE
(``view_as_complex``), outputs in another dtype than the input.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
import torch.fx

from regionc.passes import _graph
from regionc.passes._graph import aten, dtype_str, insert_call, is_call, normalize_dim, same, shape_str, tensor_val

NAME = "rope"


@dataclasses.dataclass
class RopeMatch:
    x: torch.fx.Node  # the rotated tensor (before an fp32 upcast, if any)
    cos: torch.fx.Node  # the broadcast cos' / sin' as multiplied
    sin: torch.fx.Node
    style: str
    layout: str
    out: torch.fx.Node
    order: int

    def tables(self):
        """(key for pairing, how to get [B|1, S, D] cos/sin: (node, squeeze dim or None))."""
        return _table(self.cos, self.layout), _table(self.sin, self.layout)


def _table(node: torch.fx.Node, layout: str):
    """Canonical [B|1, S, D] (or [S, D]) source of a broadcast table: (node, dim to squeeze)."""
    squeeze_dim = 1 if layout == "bhsd" else 2
    t = tensor_val(node)
    if t.dim() == 4:
        if is_call(node, aten.unsqueeze.default) and normalize_dim(node.args[1], 4) == squeeze_dim:
            return node.args[0], None
        return node, squeeze_dim
    return node, None


def _half(node, x, d: int, first: bool) -> bool:
    """Is ``node`` the first (or second) half of x's last dim?"""
    half = d // 2
    last = tensor_val(x).dim() - 1
    if is_call(node, aten.slice.Tensor):
        src, dim, start, end, step = _graph.slice_args(node)
        if src is not x or normalize_dim(dim, last + 1) != last or step != 1:
            return False
        if first:
            return start == 0 and isinstance(end, int) and end == half
        return start == half and (end is None or isinstance(end, int) and end >= d)
    if node is not None and node.op == "call_function" and node.target is operator.getitem:
        split, index = node.args
        if index != (0 if first else 1):
            return False
        if is_call(split, aten.split.Tensor) and split.args[0] is x:
            size = split.args[1]
            dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
            return size == half and normalize_dim(dim, last + 1) == last and 2 * half == d
        if is_call(split, aten.split_with_sizes.default) and split.args[0] is x:
            sizes = list(split.args[1])
            dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
            return sizes == [half, half] and normalize_dim(dim, last + 1) == last
    return False


def _strided(node, x, start: int) -> bool:
    """Is ``node`` ``x[..., start::2]``?"""
    if not is_call(node, aten.slice.Tensor):
        return False
    src, dim, s, end, step = _graph.slice_args(node)
    last = tensor_val(x).dim() - 1
    return src is x and normalize_dim(dim, last + 1) == last and s == start and step == 2


def _rotated(rot: torch.fx.Node):
    """(x, style) when ``rot`` is rotate_half(x) or the interleaved rotation of x, else None."""
    if is_call(rot, aten.cat.default):
        parts = rot.args[0]
        dim = rot.args[1] if len(rot.args) > 1 else rot.kwargs.get("dim", 0)
        if len(parts) != 2 or not is_call(parts[0], aten.neg.default):
            return None
        x2 = parts[0].args[0]
        x = x2.args[0] if is_call(x2, aten.slice.Tensor) else (
            x2.args[0].args[0] if x2.op == "call_function" and x2.target is operator.getitem else None)
        xt = tensor_val(x)
        if xt is None or normalize_dim(dim, xt.dim()) != xt.dim() - 1:
            return None
        d = _graph.hint(xt.shape[-1])
        if d is None or d % 2:
            return None
        if _half(x2, x, d, first=False) and _half(parts[1], x, d, first=True):
            return x, "rotate_half"
        return None
    if is_call(rot, *_graph.VIEW_TARGETS):
        inner = rot.args[0]
        parts = None
        if is_call(inner, aten.cat.default):
            us = inner.args[0]
            if len(us) == 2 and all(is_call(u, aten.unsqueeze.default) for u in us):
                parts = [u.args[0] for u in us]
                if any(normalize_dim(u.args[1], tensor_val(u).dim()) != tensor_val(u).dim() - 1 for u in us):
                    return None
        elif is_call(inner, aten.stack.default):
            parts = list(inner.args[0])
        if not parts or not is_call(parts[0], aten.neg.default):
            return None
        x2 = parts[0].args[0]
        if not is_call(x2, aten.slice.Tensor):
            return None
        x = x2.args[0]
        xt = tensor_val(x)
        if xt is None or not _strided(x2, x, 1) or not _strided(parts[1], x, 0):
            return None
        rt = tensor_val(rot)
        if rt.dim() != xt.dim() or not all(same(a, b) for a, b in zip(rt.shape, xt.shape)):
            return None
        return x, "interleaved"
    return None


def _layout(x: torch.Tensor, table: torch.Tensor) -> str | None:
    """How a broadcast cos/sin of shape ``table`` lines up with x: "bhsd", "bshd" or None."""
    if table.dim() > 4 or table.dim() < 2 or not same(table.shape[-1], x.shape[-1]):
        return None
    shape = [1] * (4 - table.dim()) + list(table.shape)
    batch_ok = same(shape[0], 1) or same(shape[0], x.shape[0])
    if not batch_ok:
        return None
    if same(shape[1], 1) and same(shape[2], x.shape[2]) and (table.dim() == 4 or same(shape[0], 1)):
        return "bhsd"
    if table.dim() == 4 and same(shape[2], 1) and same(shape[1], x.shape[1]):
        return "bshd"
    return None


def match_at(add: torch.fx.Node, order: int) -> tuple[RopeMatch | None, str | None]:
    if not is_call(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs:
        return None, None
    m1, m2 = add.args
    if not (is_call(m1, _graph.MUL) and is_call(m2, _graph.MUL)):
        return None, None
    for m_cos, m_sin in ((m1, m2), (m2, m1)):
        for rot in m_sin.args:
            found = _rotated(rot) if isinstance(rot, torch.fx.Node) else None
            if found is None:
                continue
            x, style = found
            sin = _graph.other_operand(m_sin, rot)
            cos = _graph.other_operand(m_cos, x)
            if not isinstance(cos, torch.fx.Node) or not isinstance(sin, torch.fx.Node):
                continue
            return _finish(add, x, cos, sin, style, order, [m_cos, m_sin, rot])
    return None, None


def _finish(add, x, cos, sin, style, order, inner):
    x0 = x
    if is_call(x, _graph.CONVERT) and tensor_val(x.args[0]) is not None and tensor_val(x.args[0]).dtype in _graph.FLOAT_DTYPES:
        x0 = x.args[0]
    xt = tensor_val(x0)
    desc = f"{NAME} at {shape_str(xt)} {dtype_str(xt.dtype)}"
    if xt.dim() != 4:
        return None, f"{desc}: q/k must be 4-D"
    ct, st = tensor_val(cos), tensor_val(sin)
    if ct is None or st is None or ct.dim() != st.dim() or not all(same(a, b) for a, b in zip(ct.shape, st.shape)):
        return None, f"{desc}: cos/sin shapes differ"
    layout = _layout(xt, ct)
    if layout is None:
        return None, f"{desc}: cos/sin of shape {shape_str(ct)} do not broadcast as [B|1,1,S,D] or [B|1,S,1,D]"
    for node in inner:
        if len(node.users) != 1:
            return None, f"{desc}: an intermediate ({node.name}) is used elsewhere"
    out = add
    if tensor_val(add).dtype != xt.dtype:
        if len(add.users) == 1 and is_call(next(iter(add.users)), _graph.CONVERT) and next(iter(add.users)).args[1] == xt.dtype:
            out = next(iter(add.users))
        else:
            return None, f"{desc}: output dtype {dtype_str(tensor_val(add).dtype)} differs from the input's"
    return RopeMatch(x0, cos, sin, style, layout, out, order), None


def find(graph: torch.fx.Graph) -> tuple[list[RopeMatch], list[str]]:
    return _graph.split_matches(match_at(node, i) for i, node in enumerate(graph.nodes)
                         if is_call(node, aten.add.Tensor))


def pair(matches: list[RopeMatch]) -> tuple[list[tuple[RopeMatch, RopeMatch]], list[str]]:
    """Group by (cos, sin, style, layout) and pair in graph order: (q, k), (q, k), ..."""
    groups: dict[tuple, list[RopeMatch]] = {}
    for m in sorted(matches, key=lambda m: m.order):
        (cos_src, sin_src) = m.tables()
        groups.setdefault((cos_src, sin_src, m.style, m.layout), []).append(m)
    pairs, skips = [], []
    for members in groups.values():
        while len(members) >= 2:
            q, k = members.pop(0), members.pop(0)
            qt, kt = tensor_val(q.x), tensor_val(k.x)
            b = 0
            s = 2 if q.layout == "bhsd" else 1
            if qt.dtype != kt.dtype or not same(qt.shape[b], kt.shape[b]) or not same(qt.shape[s], kt.shape[s]):
                skips.append(f"{NAME} at {shape_str(qt)}/{shape_str(kt)}: q and k differ in dtype, batch or seq len")
                continue
            pairs.append((q, k))
        for m in members:
            skips.append(f"{NAME} at {shape_str(tensor_val(m.x))} {dtype_str(tensor_val(m.x).dtype)}: "
                         "rotation applied to a single tensor (the kernel rotates q and k together)")
    return pairs, skips


def _table_node(graph, before, source):
    node, squeeze = source
    if squeeze is None:
        return node
    return insert_call(graph, before, aten.squeeze.dim, (node, squeeze))


def rewrite(graph: torch.fx.Graph, q: RopeMatch, k: RopeMatch) -> None:
    before = q.out if q.order < k.order else k.out
    cos_src, sin_src = q.tables()
    cos = _table_node(graph, before, cos_src)
    sin = _table_node(graph, before, sin_src)
    node = insert_call(graph, before, torch.ops.regionc.rope.default, (q.x, k.x, cos, sin, q.style, q.layout))
    q_out = insert_call(graph, before, operator.getitem, (node, 0))
    k_out = insert_call(graph, before, operator.getitem, (node, 1))
    q.out.replace_all_uses_with(q_out)
    k.out.replace_all_uses_with(k_out)


def run(graph: torch.fx.Graph, ctx, matches: list[RopeMatch]) -> None:
    pairs, skips = pair(matches)
    for s in skips:
        ctx.skip(NAME, s)
    for q, k in pairs:
        qt = tensor_val(q.x)
        tokens = None
        b, s = _graph.hint(qt.shape[0]), _graph.hint(qt.shape[2] if q.layout == "bhsd" else qt.shape[1])
        if b is not None and s is not None:
            tokens = b * s
        desc = f"{NAME} at q{shape_str(qt)} k{shape_str(tensor_val(k.x))} {dtype_str(qt.dtype)} {q.layout} {q.style}"
        if ctx.allow(NAME, desc, device=qt.device, rows=tokens):
            rewrite(graph, q, k)
