"""Canonical structural fingerprint of a piece: what decides the code Inductor emits.

Two pieces with equal fingerprints can share one compiled artifact: the artifact is
called with each piece's own inputs (its weights among them). The fingerprint covers
ops and targets, constant arguments, graph wiring (by position, never by node name),
input metadata (dtype, shape, stride, offset, device, requires_grad, symbolic dims)
and tensor constant values; it never includes node or parameter names, which differ
per layer. A per-layer Python constant (``layer_idx``, a scale) therefore changes the
fingerprint, and :func:`first_difference` names it for the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.node import _get_qualified_name


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    digest: str
    items: tuple[str, ...]  # one canonical line per placeholder/node, for diffs
    node_names: tuple[str, ...]  # the piece's node names, aligned with items (diagnostics only)

    @property
    def short(self) -> str:
        return self.digest[:12]


def describe_value(value: Any) -> str:
    """Canonical text for an input value: metadata only, never data (except Python scalars)."""
    if isinstance(value, torch.Tensor):
        return (f"tensor({value.dtype}, shape={_dims(value.shape)}, stride={_dims(value.stride())}, "
                f"offset={value.storage_offset()}, device={value.device.type}, grad={value.requires_grad})")
    if isinstance(value, torch.SymInt):
        return f"symint({value.node.expr})"
    if isinstance(value, (torch.SymFloat, torch.SymBool)):
        return f"{type(value).__name__.lower()}({value.node.expr})"
    return f"{type(value).__name__}({value!r})"


def fingerprint_piece(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Fingerprint:
    index: dict[torch.fx.Node, int] = {}
    items: list[str] = [f"grad_mode={torch.is_grad_enabled()}"]
    names: list[str] = ["<context>"]
    placeholders = iter(example_inputs)
    for position, node in enumerate(gm.graph.nodes):
        index[node] = position
        if node.op == "placeholder":
            line = f"input {describe_value(next(placeholders, None))}"
        elif node.op == "get_attr":
            line = f"constant {_constant(gm, node.target)}"
        elif node.op == "call_module":
            # Not inlined by Dynamo: it carries its own state, so it must never be shared.
            module = gm.get_submodule(node.target)
            line = f"module {type(module).__qualname__}@{id(module)} {_canon(node.args, index)} {_canon(node.kwargs, index)}"
        else:
            line = f"{node.op} {_target(node.target)} {_canon(node.args, index)} {_canon(node.kwargs, index)}"
        items.append(line)
        names.append(node.name)
    digest = hashlib.sha256("\n".join(items).encode()).hexdigest()
    return Fingerprint(digest, tuple(items), tuple(names))


def first_difference(reference: Fingerprint, other: Fingerprint) -> str:
    """Describe where ``other`` first departs from ``reference`` (for the reuse-breaker log)."""
    for ref_item, item, name in zip(reference.items, other.items, other.node_names):
        if ref_item != item:
            return f"node {name!r}: {item!r} where the first instance has {ref_item!r}"
    return f"graphs differ in length ({len(other.items)} vs {len(reference.items)} nodes)"


def _dims(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _target(target: Any) -> str:
    if isinstance(target, str):
        return target
    try:
        return _get_qualified_name(target)
    except Exception:  # some builtins/callables have no importable qualified name
        return getattr(target, "__qualname__", repr(target))


def _canon(arg: Any, index: dict[torch.fx.Node, int]) -> str:
    if isinstance(arg, torch.fx.Node):
        return f"%{index[arg]}"
    if isinstance(arg, (list, tuple)):
        inner = ",".join(_canon(a, index) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner})"
    if isinstance(arg, dict):
        return "{" + ",".join(f"{k}:{_canon(v, index)}" for k, v in sorted(arg.items())) + "}"
    if isinstance(arg, slice):
        return f"slice({_canon(arg.start, index)},{_canon(arg.stop, index)},{_canon(arg.step, index)})"
    if isinstance(arg, torch.Tensor):
        return _tensor_value(arg)
    if isinstance(arg, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return describe_value(arg)
    if callable(arg) and not isinstance(arg, type):
        return _target(arg)
    return repr(arg)


def _constant(gm: torch.fx.GraphModule, target: str) -> str:
    value = gm
    for atom in target.split("."):
        value = getattr(value, atom)
    if isinstance(value, torch.Tensor):
        return _tensor_value(value)
    return f"{type(value).__qualname__}@{id(value)}"  # opaque objects are never shared


def _tensor_value(tensor: torch.Tensor) -> str:
    meta = describe_value(tensor)
    if tensor.device.type == "meta" or isinstance(tensor, torch._subclasses.FakeTensor):
        return meta
    data = tensor.detach().contiguous().cpu()
    raw = data.view(torch.uint8) if data.numel() and data.dtype != torch.bool else data.to(torch.uint8)
    return f"{meta}#{hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]}"
