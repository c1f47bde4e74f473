"""Capture-size bucketing, padding and slicing: pure functions on tensors (CPU-testable).

A piece's *dynamic* dim is the token/batch dim Dynamo made symbolic. A runtime size ``n`` is
padded up to the next configured capture size ``N >= n`` so one CUDA graph serves every ``n``
in ``(previous size, N]``. The caller declares, explicitly, where that size appears:

- ``inputs``: ``(arg_index, dim)`` pairs — tensor args whose ``dim`` has size ``n``;
- ``int_args``: indices of int args equal to ``n`` (replaced by ``N``);
- ``outputs``: ``(out_index, dim)`` pairs — output tensors sliced back to ``n`` along ``dim``;
  ``(out_index, None)`` marks an int output equal to ``n`` (returned as ``n``).

Nothing is inferred by matching sizes: a weight with a dim that happens to equal ``N`` must not
be sliced. Padding is only correct when rows along the dynamic dim are independent (per-token
ops, causal attention with pads at the end). Padded rows are filled with ``pad_value`` (0 by
default, or per arg in ``pad_values``); an index tensor that drives a scatter (KV-cache slot
mapping) must be given a pad value its op ignores, or padded rows write to that slot.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

#: bucket_for's answer for a size above the largest capture size (run without graphs).
ABOVE_MAX = -1


@dataclasses.dataclass(frozen=True)
class DynamicSpec:
    """Where the dynamic token/batch size appears in a piece's args and outputs (see module doc)."""

    inputs: tuple[tuple[int, int], ...] = ()
    int_args: tuple[int, ...] = ()
    outputs: tuple[tuple[int, int | None], ...] = ()
    pad_values: Mapping[int, float | int] = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, inputs: Sequence[tuple[int, int]] = (), int_args: Sequence[int] = (),
             outputs: Sequence[tuple[int, int | None]] = (),
             pad_values: Mapping[int, float | int] | None = None) -> DynamicSpec:
        return cls(tuple((int(i), int(d)) for i, d in inputs), tuple(int(i) for i in int_args),
                   tuple((int(i), None if d is None else int(d)) for i, d in outputs), dict(pad_values or {}))

    @property
    def active(self) -> bool:
        return bool(self.inputs or self.int_args)

    def dims_of(self, arg_index: int) -> tuple[int, ...]:
        return tuple(d for i, d in self.inputs if i == arg_index)

    def __hash__(self) -> int:  # pad_values is a dict
        return hash((self.inputs, self.int_args, self.outputs, tuple(sorted(self.pad_values.items()))))


def bucket_for(n: int, capture_sizes: Sequence[int]) -> int:
    """The smallest capture size >= n, or ABOVE_MAX. ``capture_sizes`` must be sorted ascending."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    pos = bisect.bisect_left(capture_sizes, n)
    return capture_sizes[pos] if pos < len(capture_sizes) else ABOVE_MAX


def runtime_size(args: Sequence[Any], spec: DynamicSpec) -> int | None:
    """The dynamic size ``n`` of this call (None without dynamic dims); ValueError if they disagree."""
    sizes = set()
    for i, d in spec.inputs:
        value = args[i]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"arg {i} is declared dynamic (dim {d}) but is {type(value).__name__}")
        sizes.add(int(value.shape[d]))
    for i in spec.int_args:
        value = args[i]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"arg {i} is declared a size int but is {type(value).__name__}")
        sizes.add(int(value))
    if not sizes:
        return None
    if len(sizes) > 1:
        raise ValueError(f"declared dynamic dims disagree: sizes {sorted(sizes)}")
    return sizes.pop()


def padded_shape(shape: Sequence[int], dims: Sequence[int], size: int) -> tuple[int, ...]:
    out = list(shape)
    for d in dims:
        out[d] = size
    return tuple(out)


def empty_padded_like(t: torch.Tensor, dims: Sequence[int], size: int) -> torch.Tensor:
    """A new tensor like ``t`` with ``dims`` resized to ``size``, laid out as ``t`` is.

    Compiled code asserts its input strides, so a buffer it is captured reading must keep them: an
    unpadded buffer takes ``t``'s strides exactly (a broadcast dim stays broadcast, a strided view
    keeps its gaps); a padded one is dense in ``t``'s dim order (a transposed input stays
    transposed), its broadcast dims still broadcast.
    """
    if not dims:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    shape = padded_shape(t.shape, dims, size)
    held = [1 if _broadcast(t, k) and k not in dims else shape[k] for k in range(t.dim())]
    # dims ordered outermost (largest stride) first; ties keep the logical order
    order = sorted(range(t.dim()), key=lambda k: (-t.stride(k), k))
    base = torch.empty([held[k] for k in order], dtype=t.dtype, device=t.device)
    inverse = [0] * t.dim()
    for pos, k in enumerate(order):
        inverse[k] = pos
    return base.permute(inverse).expand(shape)


def broadcast_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The dims along which ``t`` repeats one slice (stride 0, more than one element)."""
    return tuple(k for k in range(t.dim()) if _broadcast(t, k))


def fits(src: torch.Tensor, dims: Sequence[int]) -> bool:
    """Whether ``src`` copied into a buffer broadcast along ``dims`` keeps its values: it is broadcast there too."""
    return all(src.stride(k) == 0 or src.shape[k] == 1 for k in dims)


def unpadded(dst: torch.Tensor, dims: Sequence[int], n: int | None) -> bool:
    """Whether ``n`` rows fill ``dst`` along ``dims``: nothing to pad (no dims, or ``n`` is their size)."""
    return all(dst.shape[d] == n for d in dims)


def copy_padded(dst: torch.Tensor, src: torch.Tensor, dims: Sequence[int], n: int, pad_value: float | int = 0) -> None:
    """dst[..n..] = src along ``dims``; the rest of each padded dim is filled with ``pad_value``. A
    broadcast dim of ``dst`` is written once (``src`` must :func:`fits` them)."""
    if unpadded(dst, dims, n):
        _write(dst, src)
        return
    head = dst
    for d in dims:
        head = head.narrow(d, 0, n)
    _write(head, src)
    for d in dims:
        full = dst.shape[d]
        if full > n:
            _write(dst.narrow(d, n, full - n), pad_value)


def _broadcast(t: torch.Tensor, k: int) -> bool:
    return t.stride(k) == 0 and t.shape[k] > 1


def _write(dst: torch.Tensor, value: torch.Tensor | float | int) -> None:
    """``dst`` = ``value``, each memory location of ``dst`` written once (one slice of its broadcast dims)."""
    for k in range(dst.dim()):
        if _broadcast(dst, k):
            dst = dst.narrow(k, 0, 1)
            value = value.narrow(k, 0, 1) if isinstance(value, torch.Tensor) else value
    if isinstance(value, torch.Tensor):
        dst.copy_(value)
    else:
        dst.fill_(value)


def pad_args(args: Sequence[Any], spec: DynamicSpec, n: int, size: int) -> list[Any]:
    """A copy of ``args`` padded from ``n`` to ``size``: new tensors for dynamic args, ints replaced."""
    out = list(args)
    if n == size:
        return out
    for i in {i for i, _ in spec.inputs}:
        dims = spec.dims_of(i)
        buf = empty_padded_like(args[i], dims, size)
        copy_padded(buf, args[i], dims, n, spec.pad_values.get(i, 0))
        out[i] = buf
    for i in spec.int_args:
        out[i] = size
    return out


def padded_int_args(args: Sequence[Any], spec: DynamicSpec, size: int) -> list[Any]:
    out = list(args)
    for i in spec.int_args:
        out[i] = size
    return out


def as_output_list(out: Any) -> tuple[list[Any], Any]:
    """(outputs in order, structure): what :func:`rebuild_outputs` needs to put them back.

    A piece returns a flat tuple; a model's forward may return anything torch's pytree knows (nested
    tuples, lists, dicts, named tuples, Hugging Face ``ModelOutput``s) or a dataclass, which are
    flattened to their leaves.
    """
    if type(out) in (tuple, list) and not any(_is_container(v) for v in out):
        return list(out), type(out).__name__
    if not _is_container(out):
        return [out], "single"
    leaves: list[Any] = []
    return leaves, _flatten(out, leaves)


def rebuild_outputs(values: list[Any], structure: Any) -> Any:
    if structure == "tuple":
        return tuple(values)
    if structure == "list":
        return values
    if structure == "single":
        return values[0]
    return _unflatten(iter(values), structure)


def _is_container(value: Any) -> bool:
    return _is_dataclass_instance(value) or not pytree.tree_is_leaf(value)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type) and pytree.tree_is_leaf(value)


def _flatten(value: Any, leaves: list[Any]) -> Any:
    """Structure of ``value`` with its leaves appended to ``leaves`` (dataclasses by their fields)."""
    children, spec = pytree.tree_flatten(value, is_leaf=_is_dataclass_instance)
    inner = {}
    for i, child in enumerate(children):
        if _is_dataclass_instance(child):
            fields = {f.name: getattr(child, f.name) for f in dataclasses.fields(child)}
            inner[i] = (child, _flatten(fields, leaves))
        else:
            leaves.append(child)
    return spec, inner


def _unflatten(values, structure: Any) -> Any:
    spec, inner = structure
    children = []
    for i in range(spec.num_leaves):
        if i in inner:
            template, fields_structure = inner[i]
            obj = copy.copy(template)
            for name, field in _unflatten(values, fields_structure).items():
                object.__setattr__(obj, name, field)
            children.append(obj)
        else:
            children.append(next(values))
    return pytree.tree_unflatten(children, spec)


def slice_outputs(outs: list[Any], spec: DynamicSpec, n: int, size: int) -> list[Any]:
    """Outputs of a padded run, cut back to ``n`` on the declared output dims (ints → n)."""
    if n == size:
        return list(outs)
    result = list(outs)
    for i, d in spec.outputs:
        value = result[i]
        if d is None:
            if value != size:
                raise ValueError(f"output {i} is declared the size int but is {value!r}, not {size}")
            result[i] = n
        else:
            if not isinstance(value, torch.Tensor) or value.shape[d] != size:
                raise ValueError(f"output {i} dim {d} is declared dynamic but has size "
                                 f"{getattr(value, 'shape', None)}, not the padded size {size}")
            result[i] = value.narrow(d, 0, n)
    return result


def keyed_shape(args: Sequence[Any], spec: DynamicSpec, size: int | None, positions: Sequence[int],
                bucket: Any = None) -> tuple:
    """Hashable key of a call's concrete shapes after padding to ``size``: one graph per key.

    Only the args at ``positions`` (the non-static ones) contribute: static inputs (weights) have
    shapes and addresses fixed per piece instance and checked separately, and a caller on the
    replay path computes the positions once (a whole graph has hundreds of weights to skip).
    Activations contribute (padded shape, dtype, device); ints are replaced by ``size`` where
    declared; other scalars contribute their value. ``bucket`` is the forward's bucket (so pieces
    without dynamic dims still get one graph per bucket).
    """
    parts: list[Any] = [bucket]
    size_ints = spec.int_args
    for i in positions:
        value = args[i]
        if isinstance(value, torch.Tensor):
            dims = spec.dims_of(i) if size is not None else ()
            shape = padded_shape(value.shape, dims, size) if dims else tuple(value.shape)
            parts.append((shape, value.dtype, value.device))
        elif i in size_ints and size is not None:
            parts.append(("n", size))
        elif isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device)):
            parts.append((type(value).__name__, value))
        else:
            hash(value)  # raises TypeError for values that cannot key a graph
            parts.append((type(value).__name__, value))
    return tuple(parts)
