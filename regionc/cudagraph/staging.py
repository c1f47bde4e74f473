"""Where a graph's activation inputs live: static buffers it was captured reading, filled before each replay.

A CUDA graph reads the addresses it was captured with, so every tensor argument that is not a
static input (a weight, a buffer: used in place) needs a buffer of its own that each replay's
argument is copied into, padded to the graph's size (:mod:`regionc.cudagraph.sizes` pads). An
argument that is another graph's output in the same pool (the previous piece's) is not copied:
the graph is captured reading that output where it is (*borrowed*), which :class:`GraphOutputs`
makes possible by knowing every captured graph's outputs by address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch

from regionc.cudagraph.sizes import (
    DynamicSpec,
    broadcast_dims,
    copy_padded,
    empty_padded_like,
    fits,
    padded_int_args,
    padded_shape,
    unpadded,
)


@dataclasses.dataclass
class StagedInput:
    """Arg ``index`` of a captured graph and the buffer the graph reads it from."""

    index: int
    buffer: torch.Tensor
    dims: tuple[int, ...]  # the padded dims (empty: copied as it is)
    owned: bool  # False: the buffer is another graph's output, never written by us
    pad_value: float | int
    broadcast: tuple[int, ...] = ()  # the buffer's broadcast dims: an arg must be broadcast there too


class GraphOutputs:
    """The outputs of a pool's captured graphs that live in graph memory, by address.

    Holding them keeps that memory allocated for the pool's lifetime, which is what lets a later
    piece be captured reading one of them in place.
    """

    def __init__(self):
        self._by_address: dict[int, list[torch.Tensor]] = {}  # data_ptr -> graph outputs (full size)

    def keep(self, values: Sequence[Any], static_args: Sequence[torch.Tensor],
             staged: Sequence[StagedInput]) -> list[bool]:
        """Record the tensors among ``values`` (a graph's outputs, just captured) that live in graph
        memory; returns, per value, whether it aliases a static input (the user's own tensor)."""
        static_storages = {a.untyped_storage().data_ptr() for a in static_args}
        input_storages = {s.buffer.untyped_storage().data_ptr() for s in staged}
        aliases_static = []
        for value in values:
            if not isinstance(value, torch.Tensor):
                aliases_static.append(False)
                continue
            storage = value.untyped_storage().data_ptr()
            aliases_static.append(storage in static_storages)
            if storage not in static_storages and storage not in input_storages:
                self._by_address.setdefault(value.data_ptr(), []).append(value)
        return aliases_static

    def find(self, a: torch.Tensor, dims: tuple[int, ...], size: int | None) -> torch.Tensor | None:
        """The graph output ``a`` lives in (same start, dtype, strides, shape once padded), if any."""
        for t in self._by_address.get(a.data_ptr(), ()):
            if t.device == a.device and _occupies(a, t, dims, size):
                return t
        return None


def stage(args: Sequence[Any], spec: DynamicSpec, static: Collection[int], n: int | None, size: int | None,
          outputs: GraphOutputs) -> tuple[list[Any], list[StagedInput]]:
    """The args to capture on (``n`` padded to ``size`` where ``spec`` says; ``n`` None: nothing
    dynamic) and a :class:`StagedInput` per activation: a borrowed graph output, or a new buffer
    holding the arg's value."""
    capture_args = padded_int_args(args, spec, size) if n is not None else list(args)
    staged = []
    for i, a in enumerate(args):
        if i in static or not isinstance(a, torch.Tensor):
            continue
        dims = spec.dims_of(i) if n is not None else ()
        buffer = outputs.find(a, dims, size)
        owned = buffer is None
        pad_value = spec.pad_values.get(i, 0)
        if owned:
            buffer = empty_padded_like(a, dims, size if dims else 0)
            copy_padded(buffer, a, dims, n if dims else 0, pad_value)
        capture_args[i] = buffer
        staged.append(StagedInput(i, buffer, dims, owned, pad_value, broadcast_dims(buffer) if owned else ()))
    return capture_args, staged


def copy_in(staged: Sequence[StagedInput], args: Sequence[Any], n: int | None, size: int | None) -> int | None:
    """Put this call's ``args`` where the graph reads them; None when done, else the index of an
    arg that cannot go there (nothing is copied then): not the borrowed output the graph reads (that
    memory is not ours to write), or not broadcast where the graph's buffer is.

    The args that fill their buffer as they are go in one ``torch._foreach_copy_``: on an H200 host
    two copies of a decode step's token ids and position took 16.7 µs of host time one ``copy_`` at a
    time and 8.3 as one call, and that time is spent before every replay."""
    padded, plain = [], []
    for s in staged:
        a = args[s.index]
        buffer = s.buffer
        if a is buffer:
            continue
        if _occupies(a, buffer, s.dims, size):
            continue  # already in place (the previous graph's output)
        if not s.owned or (s.broadcast and not fits(a, s.broadcast)):
            return s.index
        (plain if not s.broadcast and unpadded(buffer, s.dims, n) else padded).append((s, a))
    for s, a in padded:
        copy_padded(s.buffer, a, s.dims, n if s.dims else 0, s.pad_value)
    if plain:
        torch._foreach_copy_([s.buffer for s, _ in plain], [a for _, a in plain])
    return None


def _occupies(a: torch.Tensor, t: torch.Tensor, dims: tuple[int, ...], size: int | None) -> bool:
    """``a`` is ``t`` up to padding: same start, dtype and strides, and ``a`` padded on ``dims`` to
    ``size`` has ``t``'s shape. Cheapest test first: it runs per activation on every replay."""
    return a.data_ptr() == t.data_ptr() and a.dtype == t.dtype and a.stride() == t.stride() \
        and (padded_shape(a.shape, dims, size) if dims else tuple(a.shape)) == tuple(t.shape)
