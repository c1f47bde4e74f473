"""SDPA (with the GQA expansion in front of it) → ``regionc.attention`` with native GQA.

In the post-grad graph SDPA is already a device-specific aten op; all of these are recognised
(feature-detected, so a torch without one still works)::

    aten.scaled_dot_product_attention                     (if Inductor kept it)
    aten._scaled_dot_product_flash_attention_for_cpu      (CPU)
    aten._scaled_dot_product_flash_attention              (CUDA)
    aten._scaled_dot_product_efficient_attention          (CUDA)
    aten._scaled_dot_product_cudnn_attention              (CUDA)
    aten._scaled_dot_product_fused_attention_overrideable (other backends)

with ``dropout_p == 0``, no mask/bias, only output 0 used, ``is_causal`` (only with Sq == Skv)
and ``scale`` carried over. In front of k and v the GQA expansion is removed so the kernel
reads each kv head once: ``repeat_interleave(n, dim=1)`` (kept as ``aten.repeat_interleave`` or
decomposed) and HF's ``repeat_kv`` both appear as
``reshape(clone(expand(unsqueeze(x, 2), [b, h, n, s, d])), [b, h*n, s, d])`` (clone optional,
no-op slices of ``x[:, :, None]`` skipped). SDPA on k/v with fewer heads (``enable_gqa=True``,
as transformers 5 emits) and plain MHA SDPA are matched too (shape class "native").
Not matched: an attention mask or bias (the kernel has none), dropout, a head dim the kernel
does not have (only 64 and 128), q/k/v in different dtypes, causal with Sq != Skv, a tiled
``repeat`` (``unsqueeze(x, 1)``: head h would read kv head h % Hkv, not h // n).
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch.fx.operator_schemas import normalize_function

from regionc.ops.attention import TRITON_HEAD_DIMS
from regionc.passes import _graph
from regionc.passes._graph import aten, is_call, same, tensor_val

NAME = "attention"


def _sdpa_targets() -> dict:
    """aten SDPA overloads present in this torch → whether they return a tuple."""
    names = {
        "scaled_dot_product_attention": False,
        "_scaled_dot_product_flash_attention_for_cpu": True,
        "_scaled_dot_product_flash_attention": True,
        "_scaled_dot_product_efficient_attention": True,
        "_scaled_dot_product_cudnn_attention": True,
        "_scaled_dot_product_fused_attention_overrideable": True,
    }
    found = {}
    for name, is_tuple in names.items():
        packet = getattr(aten, name, None)
        if packet is not None and hasattr(packet, "default"):
            found[packet.default] = is_tuple
    return found


SDPA_TARGETS = _sdpa_targets()


def strip_gqa_expansion(node):
    """(kv source with Hkv heads, group n) when ``node`` is an interleaving repeat of it, else (node, 1)."""
    if is_call(node, aten.repeat_interleave.self_int):
        src = node.args[0]
        repeats = node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        st = tensor_val(src)
        if st is not None and st.dim() == 4 and dim is not None and _graph.normalize_dim(dim, 4) == 1 \
                and isinstance(repeats, int) and repeats >= 1:
            return src, repeats
        return node, 1
    view = node
    if not is_call(view, *_graph.VIEW_TARGETS):
        return node, 1
    inner = view.args[0]
    if is_call(inner, aten.clone.default):
        inner = inner.args[0]
    if not is_call(inner, aten.expand.default):
        return node, 1
    unsq = inner.args[0]
    if not is_call(unsq, aten.unsqueeze.default) or _graph.normalize_dim(unsq.args[1], 5) != 2:
        return node, 1
    src = unsq.args[0]
    while _graph.is_full_slice(src):
        src = src.args[0]
    st, et, vt = tensor_val(src), tensor_val(inner), tensor_val(view)
    if st is None or st.dim() != 4 or et is None or et.dim() != 5 or vt is None or vt.dim() != 4:
        return node, 1
    b, h, s, d = st.shape
    n = et.shape[2]
    if not (same(et.shape[0], b) and same(et.shape[1], h) and same(et.shape[3], s) and same(et.shape[4], d)):
        return node, 1
    if not (same(vt.shape[0], b) and same(vt.shape[1], h * n) and same(vt.shape[2], s) and same(vt.shape[3], d)):
        return node, 1
    if not isinstance(n, int):
        return node, 1
    return src, n


def _describe(q, k, v, extra="") -> str:
    qt = tensor_val(q)
    return (f"{NAME} at q{_graph.shape_str(qt)} k{_graph.shape_str(tensor_val(k))} {_graph.dtype_str(qt.dtype)}"
            + (f" {extra}" if extra else ""))


def sdpa_output(node: torch.fx.Node, desc: str):
    """(the node carrying an SDPA node's attention output, None), or (None, why not) when other
    outputs are used or the tuple is used whole, or (None, None) when the output is unused."""
    if not SDPA_TARGETS[node.target]:
        return node, None
    users = list(node.users)
    if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
        return None, f"{desc}: the op's tuple is used whole"
    outs = [u for u in users if u.args[1] == 0]
    if any(u.args[1] != 0 and len(u.users) for u in users):
        return None, f"{desc}: logsumexp or other outputs are used (training graph)"
    if len(outs) != 1:
        return None, None
    return outs[0], None


def match_at(node: torch.fx.Node):
    """(replacement spec, None) | (None, skip reason) | (None, None) for a non-SDPA node."""
    if not (node.op == "call_function" and node.target in SDPA_TARGETS):
        return None, None
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normalized is None:
        return None, f"{NAME}: cannot read the arguments of {node.target}"
    kw = normalized.kwargs
    q, k, v = kw["query"], kw["key"], kw["value"]
    desc = _describe(q, k, v)
    qt, kt, vt = tensor_val(q), tensor_val(k), tensor_val(v)
    if qt is None or kt is None or vt is None or qt.dim() != 4 or kt.dim() != 4 or vt.dim() != 4:
        return None, f"{desc}: q/k/v must be 4-D [B, H, S, D]"
    mask = kw.get("attn_mask", kw.get("attn_bias"))
    if mask is not None:
        return None, f"{desc}: attn_mask given (the kernel has no mask)"
    if kw.get("dropout_p", 0.0):
        return None, f"{desc}: dropout_p={kw['dropout_p']}"
    if kw.get("enable_gqa", False) is not True and not same(qt.shape[1], kt.shape[1]) \
            and node.target is getattr(aten, "scaled_dot_product_attention").default:
        return None, f"{desc}: head counts differ without enable_gqa"
    d = qt.shape[-1]
    if not any(same(d, s) for s in TRITON_HEAD_DIMS):
        return None, f"{desc}: head_dim {d} unsupported (kernel has {', '.join(map(str, TRITON_HEAD_DIMS))})"
    if not (qt.dtype == kt.dtype == vt.dtype) or qt.dtype not in _graph.FLOAT_DTYPES:
        return None, f"{desc}: q/k/v dtypes differ or are not float"
    causal = bool(kw.get("is_causal", False))
    if causal and not same(qt.shape[2], kt.shape[2]):
        return None, f"{desc}: causal with Sq != Skv (alignment differs between backends)"
    out, why = sdpa_output(node, desc)
    if out is None:
        return None, why
    k0, nk = strip_gqa_expansion(k)
    v0, nv = strip_gqa_expansion(v)
    if nk != nv or not same(tensor_val(k0).shape[1], tensor_val(v0).shape[1]):
        k0, v0, nk = k, v, 1  # expansions disagree: keep both as they are
    expanded = nk > 1
    heads_q, heads_kv = qt.shape[1], tensor_val(k0).shape[1]
    if not isinstance(heads_q, int) or not isinstance(heads_kv, int) or heads_q % heads_kv:
        return None, f"{desc}: q heads {heads_q} not a multiple of kv heads {heads_kv}"
    scale = kw.get("scale")
    spec = {
        "out": out, "q": q, "k": k0, "v": v0, "causal": causal,
        "scale": None if scale is None else float(scale), "expanded": expanded,
        "desc": _describe(q, k0, v0, f"group {heads_q // heads_kv}" + (" (expansion removed)" if expanded else "")),
    }
    return spec, None


def find(graph: torch.fx.Graph):
    return _graph.split_matches(match_at(node) for node in list(graph.nodes))


def rewrite(graph: torch.fx.Graph, spec) -> None:
    new = _graph.insert_call(graph, spec["out"], torch.ops.regionc.attention.default,
                      (spec["q"], spec["k"], spec["v"], spec["causal"], spec["scale"]))
    spec["out"].replace_all_uses_with(new)


def run(graph: torch.fx.Graph, ctx, matches) -> None:
    for spec in matches:
        if ctx.allow(NAME, spec["desc"], device=tensor_val(spec["q"]).device, gqa_expanded=spec["expanded"]):
            rewrite(graph, spec)
