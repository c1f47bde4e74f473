"""Decode attention over a KV cache → ``regionc.decode_attention`` on the un-expanded cache.

What it looks for in the post-grad graph, as torch 2.13 (CPU) and 2.11 (CUDA) leave it for HF
``LlamaModel`` on a ``StaticCache`` and for regionc's gpt-fast style demo decoder::

    cache  = index_put_(cache_placeholder, [None, None, pos], new)       # the in-place cache write
    k_rep  = reshape(clone(expand(unsqueeze(cache, 2), [B, Hkv, n, S, D])), [B, Hkv*n, S, D])
    mask   = where(bool_mask, 0.0, -inf)                                  # SDPA's bool -> additive
    out, * = _scaled_dot_product_<backend>_attention(q, k_rep, v_rep, mask, scale=...)

(HF ``repeat_kv`` and ``repeat_interleave(n, dim=1)`` both become the expand/clone/reshape chain;
a kept ``aten.repeat_interleave`` is read too: ``attention.strip_gqa_expansion``.) Every SDPA
overload of ``attention.SDPA_TARGETS`` is recognised; SDPA's math decomposition does not appear
on these models (the CPU flash kernel and the CUDA efficient/cuDNN kernels all take masks).

Matched when:

* k and v are a cache: after the GQA expansion they are (a slice of) a write into a graph input
  (``index_put(_)``, ``index_copy(_)``, ``slice_scatter``: the cache update of this step);
  attention over anything else is not a decode over a cache and is left to the other passes,
  without a report line;
* q has at most ``MAX_QUERY_ROWS`` rows (decode, or a few speculative tokens), and the tile of
  one KV head's query rows (``Hq/Hkv * Lq``) at most ``MAX_TILE_ROWS``;
* the mask is readable: none, or one mask for all heads, broadcastable to ``[B, 1, Lq, S]``,
  boolean or additive. ``where(m, 0, -inf)`` / ``where(~m, -inf, 0)`` of a bool ``m``, and the
  cuDNN backend's ``where(~m, -65504, 0)``, are read as ``m``; a broadcast ``expand`` over heads
  of a head-less mask and the memory-efficient backend's ``slice(pad(mask))`` alignment are
  looked through. The kernel reads the mask itself, so any pattern in it (padding, a sliding
  window, a causal tail) keeps its meaning;
* no dropout, no ``is_causal`` (SDPA's top-left causal over a cache is not decode), q/k/v of one
  float dtype, head dim 64 or 128, v's head dim equal to q's.

Not matched, with the reason in the report: a per-head mask or bias (ALiBi and other biases
that differ per head), a mask of another shape, dropout, causal, a head dim or dtype the
kernel lacks, a tiled ``repeat`` (head h would read kv head h % Hkv). Softcapping has no SDPA
form (models that softcap compute attention from matmuls), so it never reaches this pass.
"""

from __future__ import annotations

import math

import torch
import torch.fx
from torch.fx.operator_schemas import normalize_function

from regionc.ops.decode_attention import TRITON_HEAD_DIMS
from regionc.passes import _graph
from regionc.passes._graph import aten, is_call, same, shape_str, tensor_val
from regionc.passes.attention import SDPA_TARGETS, sdpa_output, strip_gqa_expansion

NAME = "decode_attention"
#: most query rows per sequence that count as decode
MAX_QUERY_ROWS = 16
#: most query rows of one KV head (Hq/Hkv * Lq): the rows of the kernel's tile
MAX_TILE_ROWS = 128


def _cache_write_targets() -> tuple:
    names = ("index_put_", "index_put", "index_copy_", "index_copy", "slice_scatter")
    return tuple(getattr(aten, n).default for n in names if hasattr(aten, n))


CACHE_WRITES = _cache_write_targets()


def is_cache(node) -> bool:
    """True when ``node`` is (a slice or view of) a write into a graph input — ``index_put_``,
    ``index_copy_``, ``slice_scatter`` and their functional forms: a KV cache updated inside the
    block, as HF ``StaticCache`` and gpt-fast caches are. Attention over plain inputs or over
    freshly computed k/v (prefill, cross-attention) is not a decode over a cache."""
    written = False
    while isinstance(node, torch.fx.Node):
        if node.op == "placeholder":
            return written
        if is_call(node, *CACHE_WRITES):
            written = True
        elif not is_call(node, aten.slice.Tensor, *_graph.VIEW_TARGETS):
            return False
        node = node.args[0]
    return False


def _scalar(node):
    """The value of a python number or a 0-d ``aten.full``/``scalar_tensor`` node, else None."""
    if isinstance(node, (int, float)):
        return float(node)
    if is_call(node, aten.full.default) and list(node.args[0]) == []:
        return float(node.args[1])
    if is_call(node, aten.scalar_tensor.default):
        return float(node.args[0])
    return None


#: What SDPA writes for an excluded key when it converts a bool mask: -inf, or on the cuDNN backend
#: the finite -65504 (torch's ``convert_boolean_attn_mask_cudnn``, a work-around for cuDNN's -inf),
#: which a bf16 constant in the graph holds as -65536.
_EXCLUDED = (-math.inf, -65504.0, -65536.0)


def _bool_of_additive(node):
    """``m`` when ``node`` is SDPA's conversion of a bool mask ``m`` to an additive one
    (``where(m, 0, -inf)``, ``where(logical_not(m), -inf, 0)``, or the cuDNN backend's -65504 in
    place of -inf: ``_EXCLUDED``), else None. Reading ``m`` itself is what lets the kernel
    skip the excluded keys: a finite -65504 is a weight, not an exclusion, to a reader of the
    additive mask (the two differ only on a row with no key allowed, which SDPA leaves undefined)."""
    if not is_call(node, aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar):
        return None
    cond, a, b = node.args[:3]
    ct = tensor_val(cond)
    if ct is None or ct.dtype != torch.bool:
        return None
    a, b = _scalar(a), _scalar(b)
    if a == 0.0 and b in _EXCLUDED:  # Inductor turns where(~m, x, 0) into this
        return cond
    if a in _EXCLUDED and b == 0.0 and is_call(cond, aten.logical_not.default):
        return cond.args[0]
    return None


def _unpadded(node):
    """``x`` for the memory-efficient backend's alignment ``slice(constant_pad_nd(x, [0, p]), -1, 0, S)``."""
    if not is_call(node, aten.slice.Tensor):
        return None
    src, dim, start, end, step = _graph.slice_args(node)
    if not is_call(src, aten.constant_pad_nd.default):
        return None
    inner, pad = src.args[0], list(src.args[1])
    it = tensor_val(inner)
    if it is None or dim not in (-1, it.dim() - 1) or start != 0 or step != 1 or len(pad) != 2 or pad[0] != 0:
        return None
    return inner if same(end, it.shape[-1]) else None


def _head_broadcast_source(node):
    """``x`` when ``node`` is ``expand(x, ...)`` and x has one head (or no head dim): the expand
    only repeats one mask over the heads (and maybe the batch/query rows)."""
    if not is_call(node, aten.expand.default):
        return None
    xt = tensor_val(node.args[0])
    if xt is None or xt.dim() > 4 or (xt.dim() >= 3 and not same(xt.shape[-3], 1)):
        return None
    return node.args[0]


def read_mask(mask, B, Lq, S):
    """(mask node for the op, None) or (None, why it cannot be read). Looks through the forms in
    the module docstring, then checks the result broadcasts to [B, 1, Lq, S]."""
    while True:
        inner = _bool_of_additive(mask) or _unpadded(mask) or _head_broadcast_source(mask)
        if inner is None:
            break
        mask = inner
    mt = tensor_val(mask)
    if mt is None:
        return None, "mask without a known shape"
    if mt.dtype != torch.bool and mt.dtype not in _graph.FLOAT_DTYPES:
        return None, f"mask dtype {mt.dtype}"
    if mt.dim() > 4:
        return None, f"mask shape {shape_str(mt)} has more than 4 dims"
    if mt.dim() >= 3 and not same(mt.shape[-3], 1):
        return None, f"mask {shape_str(mt)} differs per head (a per-head bias such as ALiBi)"
    for got, want in zip(reversed(mt.shape), reversed((B, 1, Lq, S))):
        if not (same(got, 1) or same(got, want)):
            return None, f"mask {shape_str(mt)} does not broadcast to [B, 1, Lq, S]"
    return mask, None


def _describe(q, k, v, extra="") -> str:
    qt = tensor_val(q)
    return (f"{NAME} at q{shape_str(qt)} cache{shape_str(tensor_val(k))} {_graph.dtype_str(qt.dtype)}"
            + (f" {extra}" if extra else ""))


def match_at(node: torch.fx.Node):
    """(replacement spec, None) | (None, skip reason) | (None, None) when ``node`` is not an SDPA
    over a KV cache."""
    if not (node.op == "call_function" and node.target in SDPA_TARGETS):
        return None, None
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normalized is None:
        return None, None
    kw = normalized.kwargs
    q, k, v = kw["query"], kw["key"], kw["value"]
    qt, kt, vt = tensor_val(q), tensor_val(k), tensor_val(v)
    if qt is None or kt is None or vt is None or qt.dim() != 4 or kt.dim() != 4 or vt.dim() != 4:
        return None, None
    k0, nk = strip_gqa_expansion(k)
    v0, nv = strip_gqa_expansion(v)
    if not (is_cache(k0) and is_cache(v0)):
        return None, None
    desc = _describe(q, k0, v0)
    if nk != nv:
        return None, f"{desc}: k and v are expanded differently"
    k0t, v0t = tensor_val(k0), tensor_val(v0)
    B, Hq, Lq, D = qt.shape
    Hkv, S = k0t.shape[1], k0t.shape[2]
    if not isinstance(Lq, int) or Lq > MAX_QUERY_ROWS:
        return None, f"{desc}: {Lq} query rows (decode: at most {MAX_QUERY_ROWS})"
    if kw.get("dropout_p", 0.0):
        return None, f"{desc}: dropout_p={kw['dropout_p']}"
    if kw.get("is_causal", False):
        return None, f"{desc}: is_causal (top-left causal over a cache)"
    if node.target is aten.scaled_dot_product_attention.default and not kw.get("enable_gqa", False) \
            and not same(Hq, kt.shape[1]):
        return None, f"{desc}: head counts differ without enable_gqa"
    if not (qt.dtype == k0t.dtype == v0t.dtype) or qt.dtype not in _graph.FLOAT_DTYPES:
        return None, f"{desc}: q/k/v dtypes differ or are not float"
    if not any(same(D, d) for d in TRITON_HEAD_DIMS):
        return None, f"{desc}: head_dim {D} unsupported (kernel has {', '.join(map(str, TRITON_HEAD_DIMS))})"
    if not (same(k0t.shape[3], D) and same(v0t.shape[3], D) and same(v0t.shape[2], S) and same(v0t.shape[1], Hkv)
            and same(k0t.shape[0], B) and same(v0t.shape[0], B)):
        return None, f"{desc}: k/v cache shapes {shape_str(k0t)} / {shape_str(v0t)} do not fit q"
    if not isinstance(Hq, int) or not isinstance(Hkv, int) or Hq % Hkv:
        return None, f"{desc}: q heads {Hq} not a multiple of cache heads {Hkv}"
    if Hq // Hkv * Lq > MAX_TILE_ROWS:
        return None, f"{desc}: {Hq // Hkv * Lq} query rows per kv head (at most {MAX_TILE_ROWS})"
    mask = kw.get("attn_mask", kw.get("attn_bias"))
    if mask is not None:
        mask, why = read_mask(mask, B, Lq, S)
        if mask is None:
            return None, f"{desc}: {why}"
    out, why = sdpa_output(node, desc)
    if out is None:
        return None, why
    scale = kw.get("scale")
    mt = tensor_val(mask)
    spec = {
        "out": out, "q": q, "k": k0, "v": v0, "mask": mask, "scale": None if scale is None else float(scale),
        "expanded": nk > 1,
        "desc": _describe(q, k0, v0, f"group {Hq // Hkv}"
                          + ("" if mt is None else f" mask{shape_str(mt)} {_graph.dtype_str(mt.dtype)}")
                          + (" (expansion removed)" if nk > 1 else "")),
    }
    return spec, None


def find(graph: torch.fx.Graph):
    return _graph.split_matches(match_at(node) for node in list(graph.nodes))


def rewrite(graph: torch.fx.Graph, spec) -> None:
    new = _graph.insert_call(graph, spec["out"], torch.ops.regionc.decode_attention.default,
                      (spec["q"], spec["k"], spec["v"], spec["mask"], None, spec["scale"]))
    spec["out"].replace_all_uses_with(new)


def run(graph: torch.fx.Graph, ctx, matches) -> None:
    for spec in matches:
        if ctx.allow(NAME, spec["desc"], device=tensor_val(spec["q"]).device, gqa_expanded=spec["expanded"]):
            rewrite(graph, spec)
