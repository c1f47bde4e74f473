"""Small FX helpers shared by the fusion passes (post-grad aten graphs, fake-tensor metadata).

The passes match by walking the post-grad graph by hand rather than through Inductor's
``register_replacement``: the forms they look for (dtype casts that may or may not be there,
the weight before or after the cast, device-specific SDPA ops with tuple outputs, the GQA
expansion in front of them) are easier to accept or refuse precisely, with a reason, by
looking at nodes and their fake values than by tracing one search pattern per spelling and
dtype. Every size comparison is ``statically_known_true`` so nothing here adds a guard.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten
prims = torch.ops.prims

#: The dtypes regionc's kernels take (a pattern in another dtype is left to Inductor).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

CONVERT = prims.convert_element_type.default
MUL = aten.mul.Tensor
ADD_TARGETS = (aten.add.Tensor, aten.add.Scalar)
VIEW_TARGETS = tuple(
    op for op in (aten.view.default, aten.reshape.default, getattr(aten, "_unsafe_view").default) if op is not None)

#: slice ``end`` values meaning "to the end"
_BIG = 2**62


def is_call(node: Any, *targets) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def val(node: Any):
    """The fake value of a node (None for non-nodes or nodes without one)."""
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def tensor_val(node: Any) -> torch.Tensor | None:
    v = val(node)
    return v if isinstance(v, torch.Tensor) else None


def same(a, b) -> bool:
    """``a == b`` known without adding a guard (ints or SymInts)."""
    try:
        return bool(statically_known_true(a == b))
    except Exception:  # noqa: BLE001 - unusual symbolic values: treat as unknown
        return False


def same_shape(a: Sequence, b: Sequence) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def hint(size) -> int | None:
    """A concrete value for a size (its hint when symbolic), None when unknown."""
    if isinstance(size, int):
        return size
    try:
        h = size.node.hint
        return int(h) if h is not None else None
    except Exception:  # noqa: BLE001
        return None


def shape_str(t: torch.Tensor | None) -> str:
    """``[2,8,64]`` (symbolic sizes shown by their hint, or their name when there is none)."""
    if t is None:
        return "?"
    return "[" + ",".join(str(hint(s)) if hint(s) is not None else str(s) for s in t.shape) + "]"


def dtype_str(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def single_user(node: torch.fx.Node) -> bool:
    return len(node.users) == 1


def other_operand(node: torch.fx.Node, one: torch.fx.Node):
    """For a binary node with ``one`` as an operand, the other operand (None if ``one`` is not there)."""
    a, b = node.args[0], node.args[1]
    if a is one:
        return b
    if b is one:
        return a
    return None


def strip_converts(node: Any) -> Any:
    while is_call(node, CONVERT):
        node = node.args[0]
    return node


def strip_views(node: Any) -> Any:
    """The node behind a chain of reshapes/views."""
    while is_call(node, *VIEW_TARGETS):
        node = node.args[0]
    return node


def is_full_slice(node: torch.fx.Node) -> bool:
    """``aten.slice`` that keeps every element (a no-op ``x[:, :]`` left in the graph)."""
    if not is_call(node, aten.slice.Tensor):
        return False
    src, dim, start, end, step = slice_args(node)
    t = tensor_val(src)
    if t is None or start != 0 or step != 1:
        return False
    return end is None or (isinstance(end, int) and end >= _BIG) or same(end, t.shape[dim])


def slice_args(node: torch.fx.Node):
    """(source, dim, start, end, step) of an ``aten.slice.Tensor`` node."""
    args = list(node.args) + [None] * (5 - len(node.args))
    src, dim, start, end, step = args[:5]
    dim = node.kwargs.get("dim", dim if dim is not None else 0)
    start = node.kwargs.get("start", start) or 0
    end = node.kwargs.get("end", end)
    step = node.kwargs.get("step", step) or 1
    return src, dim, start, end, step


def split_matches(results: Iterable[tuple[Any, str | None]]) -> tuple[list, list[str]]:
    """Splits ``(match, skip)`` pairs from a pass's ``match_at`` into matches and skip reasons."""
    matches, skips = [], []
    for match, skip in results:
        if match is not None:
            matches.append(match)
        elif skip is not None:
            skips.append(skip)
    return matches, skips


def fake_mode_of(nodes: Sequence[torch.fx.Node]):
    from torch._guards import detect_fake_mode

    return detect_fake_mode([val(n) for n in nodes if val(n) is not None])


def insert_call(graph: torch.fx.Graph, before: torch.fx.Node, target: Callable, args: tuple,
                kwargs: dict | None = None) -> torch.fx.Node:
    """Insert ``target(*args)`` before ``before`` and fill ``meta['val']`` by running it on fake values."""
    with graph.inserting_before(before):
        node = graph.call_function(target, args, kwargs or {})
    fake_args = torch.fx.node.map_arg(args, val)
    fake_kwargs = torch.fx.node.map_arg(kwargs or {}, val)
    inputs = [a for a in node.all_input_nodes]
    mode = fake_mode_of(inputs)
    if target is operator.getitem:
        node.meta["val"] = fake_args[0][fake_args[1]]
    else:
        import contextlib

        with mode if mode is not None else contextlib.nullcontext():
            node.meta["val"] = target(*fake_args, **fake_kwargs)
    for key in ("stack_trace", "nn_module_stack"):
        if key in before.meta:
            node.meta[key] = before.meta[key]
    return node


def finish(graph: torch.fx.Graph) -> None:
    """After rewrites: put every node after its inputs again, drop what became dead, check."""
    from torch._inductor.pattern_matcher import stable_topological_sort

    stable_topological_sort(graph)
    graph.eliminate_dead_code()
    graph.lint()
