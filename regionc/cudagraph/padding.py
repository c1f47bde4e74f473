"""Decide whether a graph's dynamic batch dim may be padded to a capture size, and where it appears.

Padding is what lets one CUDA graph per capture size serve every batch size up to it. It changes
results unless the padded rows are independent of the real ones, so regionc pads only when the
Dynamo graph shows that they are:

- the padded size is a lone symbol ``s`` at dim 0 of an activation input (a batch of sequences,
  or of tokens); a symbol elsewhere (a sequence dim: non-causal attention would mix padded
  positions into real ones) is never padded;
- every tensor the graph computes from a tensor carrying ``s`` carries ``s`` at dim 0 and
  nowhere else: an op that drops it (a reduction over the batch), moves it (a transpose of the
  batch dim) or folds it into another dim (``view(B * S, D)``) could mix rows, so padding is off;
- no static input (weight, buffer) has ``s`` in its shape, and the graph writes no static input in
  place: padded rows would write into memory the user owns (a KV cache slot of another sequence);
- every value passed between pieces carries ``s`` only as dim 0 of a tensor or as the int ``s``.

When a rule fails the graph is captured per exact shape instead (one log line says why).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.fx

from regionc.blocks.split import Piece
from regionc.blocks.writes import mutated_placeholders, target_name
from regionc.cudagraph.sizes import DynamicSpec


@dataclasses.dataclass(frozen=True)
class PaddingPlan:
    """``size_arg``: the graph input whose dim 0 is the runtime size; ``specs``: per piece name;
    ``graph_spec``: the whole graph's (for one graph over all pieces)."""

    symbol: Any
    size_arg: int
    specs: dict[str, DynamicSpec]
    graph_spec: DynamicSpec

    def runtime_size(self, args: Sequence[Any]) -> int:
        return int(args[self.size_arg].shape[0])


class NotPaddable(Exception):
    """Why a graph's batch dim must not be padded (the message is logged)."""


def plan_padding(gm: torch.fx.GraphModule, split: torch.fx.GraphModule, pieces: Sequence[Piece],
                 static_inputs: Collection[int]) -> PaddingPlan | None:
    """The padding plan, None if no input has a dynamic dim 0; raises :class:`NotPaddable` when unsafe."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    symbol, size_arg = _batch_symbol(placeholders, static_inputs)
    if symbol is None:
        return None
    for i, node in enumerate(placeholders):
        value = _value(node)
        if i in static_inputs and isinstance(value, torch.Tensor) and _mentions(value, symbol):
            raise NotPaddable(f"static input {node.name} has the batch size {symbol} in its shape")
    written = sorted(set(mutated_placeholders(gm)) & set(static_inputs))
    if written:
        raise NotPaddable(f"the graph writes static input(s) {[placeholders[i].name for i in written]} in place")
    for node in gm.graph.nodes:
        _check_rows_stay_independent(node, symbol)
    specs = {piece.name: _spec(split._modules[piece.name], symbol, f"{piece.name} ({piece.label})")
             for piece in pieces}
    return PaddingPlan(symbol, size_arg, specs, _spec(gm, symbol, "the graph"))


def _batch_symbol(placeholders: list[torch.fx.Node], static_inputs: Collection[int]) -> tuple[Any, int]:
    for i, node in enumerate(placeholders):
        value = _value(node)
        if i in static_inputs or not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        expr = _expr(value.shape[0])
        if expr is not None and expr.is_Symbol:
            return expr, i
    return None, -1


def _check_rows_stay_independent(node: torch.fx.Node, symbol) -> None:
    if node.op in ("output", "get_attr"):
        return
    outputs = [v for v in flatten(_value(node)) if isinstance(v, torch.Tensor)]
    for value in outputs:
        if not _only_at_dim0(value, symbol):
            raise NotPaddable(f"{node.name} ({target_name(node)}) has shape {tuple(value.shape)}: the batch size "
                              f"{symbol} is not only its dim 0, so padded rows could mix with real ones")
    if node.op == "placeholder":
        return
    feeds_batch = any(isinstance(v, torch.Tensor) and _mentions(v, symbol)
                      for arg in node.all_input_nodes for v in flatten(_value(arg)))
    if feeds_batch and outputs and not all(_mentions(v, symbol) for v in outputs):
        raise NotPaddable(f"{node.name} ({target_name(node)}) reduces over or drops the batch dim")


def _spec(module: torch.fx.GraphModule, symbol, name: str) -> DynamicSpec:
    inputs, int_args, outputs = [], [], []
    for i, node in enumerate(module.graph.find_nodes(op="placeholder")):
        kind = _kind(_value(node), symbol, f"input {node.name} of {name}")
        if kind == "tensor":
            inputs.append((i, 0))
        elif kind == "int":
            int_args.append(i)
    output = next(iter(module.graph.find_nodes(op="output")))
    for j, node in enumerate(flatten(output.args[0])):
        value = _value(node) if isinstance(node, torch.fx.Node) else node
        kind = _kind(value, symbol, f"output {j} of {name}")
        if kind == "tensor":
            outputs.append((j, 0))
        elif kind == "int":
            outputs.append((j, None))
    return DynamicSpec.make(inputs=inputs, int_args=int_args, outputs=outputs)


def _kind(value: Any, symbol, what: str) -> str | None:
    """"tensor" (``s`` at dim 0), "int" (the int ``s``) or None (no ``s``); NotPaddable otherwise."""
    if isinstance(value, torch.Tensor):
        return "tensor" if _mentions(value, symbol) else None  # _only_at_dim0 was checked graph-wide
    expr = _expr(value)
    if expr is None or symbol not in expr.free_symbols:
        return None
    if expr == symbol:
        return "int"
    raise NotPaddable(f"{what} is the size expression {expr}, which padding cannot adjust")


def _only_at_dim0(value: torch.Tensor, symbol) -> bool:
    for d, size in enumerate(value.shape):
        expr = _expr(size)
        if expr is None or symbol not in expr.free_symbols:
            continue
        if d != 0 or expr != symbol:
            return False
    return True


def _mentions(value: torch.Tensor, symbol) -> bool:
    return any((expr := _expr(size)) is not None and symbol in expr.free_symbols for size in value.shape)


def _expr(size: Any):
    return size.node.expr if isinstance(size, torch.SymInt) else None


def _value(node: torch.fx.Node) -> Any:
    return node.meta.get("example_value", node.meta.get("val"))



def flatten(value: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts (FX node args, example values)."""
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in flatten(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in flatten(v)]
    return [value]
