"""Canonical structural fingerprint of a piece: what decides the code Inductor emits.

Two pieces with equal fingerprints can share one compiled artifact: the artifact is
called with each piece's own inputs (its weights among them). The fingerprint covers
ops and targets, constant arguments, graph wiring (by position, never by node name),
input metadata (dtype, shape, stride, offset, device, requires_grad, symbolic dims),
the grad mode and autocast state it is compiled under, tensor constant values, and the
code of higher-order ops' subgraphs (a checkpointed layer's body), written as the piece's
own; it never includes node or parameter names, which differ per layer. What it cannot
read (a module Dynamo did not inline, an opaque constant) it writes by identity, so such a
piece is never shared, nor found in the disk cache by another process. A per-layer Python
constant (``layer_idx``, a scale) changes the fingerprint, and :func:`first_difference`
names it for the report.

Symbolic sizes are named by where they first appear, not by Dynamo's names: a per-layer
int that Dynamo made symbolic (the position counter of each layer of an HF sliding-window
cache) is ``s27`` in one layer and ``s75`` in the next, yet both layers are the same code.
What the ShapeEnv knows of each symbol (its value range, its guards) is part of the
fingerprint, so renamed pieces share code only where their sizes obey the same facts.
Where one piece reads one symbol in two places that its siblings read as two symbols
(layer 0's counter doubles as the position every layer reads), :func:`share` lets it run
the siblings' code: code compiled for two sizes is right when they happen to be equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import sympy
import torch
import torch.fx
from torch.fx.node import _get_qualified_name

_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    digest: str
    items: tuple[str, ...]  # one canonical line per placeholder/node, for diffs
    node_names: tuple[str, ...]  # the piece's node names, aligned with items (diagnostics only)
    # Symbols, one entry per place a size reads one (in a fixed order): Dynamo's name for it, and the
    # index of its first place. ``general`` digests the piece with every place named apart.
    symbols: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    general: str = ""

    @property
    def short(self) -> str:
        return self.digest[:12]


class _Names:
    """Canonical names for the symbols a piece reads, and the facts the ShapeEnv holds about them.

    ``apart=False``: one name per symbol, in order of first appearance (equal sizes stay equal).
    ``apart=True``: one name per place, so pieces that differ only in which places read the same
    symbol get the same text (:func:`share` then compares the places). A fact that relates two
    symbols cannot be written per place, so a piece whose symbols have one (``related``) is only
    ever shared by its exact fingerprint. ``known`` (symbol -> its facts) is shared by the two
    namings of one piece, so the ShapeEnv is read once."""

    def __init__(self, apart: bool, known: dict[sympy.Symbol, tuple[Any, list[sympy.Basic]]]):
        self.apart = apart
        self.known = known
        self.places: list[sympy.Symbol] = []
        self.names: list[tuple[sympy.Symbol, str]] = []  # (symbol, its name), one per name given
        self.named: dict[sympy.Symbol, str] = {}  # each symbol's latest name

    def __call__(self, value: Any) -> str:
        expr = value.node.expr if isinstance(value, _SYMBOLIC) else value
        if not isinstance(expr, sympy.Basic) or not expr.free_symbols:
            return str(expr)
        mapping = {}
        for symbol in sorted(expr.free_symbols, key=str):
            self.places.append(symbol)
            if symbol not in self.known:
                self.known[symbol] = _facts_on(symbol, value.node.shape_env if isinstance(value, _SYMBOLIC) else None)
            if self.apart or symbol not in self.named:
                self.named[symbol] = f"${len(self.names)}"
                self.names.append((symbol, self.named[symbol]))
            mapping[symbol] = sympy.Symbol(self.named[symbol])
        return str(expr.xreplace(mapping))

    @property
    def related(self) -> bool:
        return any(len(fact.free_symbols) > 1 for symbol in self.places for fact in self.known[symbol][1])

    def facts(self) -> list[str]:
        """Each name's value range and facts (other symbols of the piece under their own names)."""
        everywhere = {symbol: sympy.Symbol(name) for symbol, name in reversed(self.names)}
        lines = []
        for symbol, name in self.names:
            value_range, facts = self.known[symbol]
            mapping = {**everywhere, symbol: sympy.Symbol(name)}
            lines.append(f"{name} in {value_range} {sorted(str(fact.xreplace(mapping)) for fact in facts)}")
        return lines


def _facts_on(symbol: sympy.Symbol, env: Any) -> tuple[Any, list[sympy.Basic]]:
    """What ``env`` knows of ``symbol``: its value range, and its guards, runtime asserts and divisibilities."""
    if env is None:
        return None, []
    facts = [guard.expr for guard in env.guards]
    facts += [a.expr for asserts in env.deferred_runtime_asserts.values() for a in asserts]
    facts += [sympy.Eq(expr, 0) for expr in env.divisible]
    return env.var_to_range.get(symbol), [fact for fact in facts if symbol in fact.free_symbols]


def describe_value(value: Any, name=str) -> str:
    """Canonical text for an input value: metadata only, never data (except Python scalars).
    ``name`` writes a symbolic size (:class:`_Names` in a fingerprint)."""
    if isinstance(value, torch.Tensor):
        return (f"tensor({value.dtype}, shape={_dims(value.shape, name)}, stride={_dims(value.stride(), name)}, "
                f"offset={name(value.storage_offset())}, device={value.device.type}, grad={value.requires_grad})")
    if isinstance(value, _SYMBOLIC):
        return f"{type(value).__name__.lower()}({name(value)})"
    return f"{type(value).__name__}({value!r})"


def fingerprint_piece(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Fingerprint:
    known: dict[sympy.Symbol, tuple[Any, list[sympy.Basic]]] = {}
    items, names, exact = _lines(gm, example_inputs, _Names(apart=False, known=known))
    general_items, _, apart = _lines(gm, example_inputs, _Names(apart=True, known=known))
    digest = hashlib.sha256("\n".join(items).encode()).hexdigest()
    general = digest if apart.related else hashlib.sha256("\n".join(general_items).encode()).hexdigest()
    return Fingerprint(digest, tuple(items), tuple(names), tuple(str(s) for s in exact.places),
                       tuple(exact.places.index(s) for s in exact.places), general)


def share(prints: Sequence[Fingerprint]) -> list[int]:
    """For each piece, the index of the piece whose compiled code it runs (its own index: it compiles).

    Pieces with equal fingerprints share. So does a piece whose text, with each symbolic place named
    apart, equals a compiling piece's, where every two places that read one symbol in the compiling
    piece read one symbol in it too: the compiled code assumes no more of its sizes than the piece
    guarantees. The pieces that read the most distinct symbols compile first, so they serve the rest."""
    owners = [-1] * len(prints)
    compiling: dict[str, list[int]] = {}
    for i in sorted(range(len(prints)), key=lambda i: -len(set(prints[i].classes))):
        candidates = compiling.setdefault(prints[i].general, [])
        owners[i] = next((r for r in candidates if _covers(prints[r], prints[i])), i)
        if owners[i] == i:
            candidates.append(i)
    return owners


def _covers(code: Fingerprint, piece: Fingerprint) -> bool:
    if code.digest == piece.digest:
        return True
    if len(code.classes) != len(piece.classes):
        return False
    seen: dict[int, int] = {}
    return all(seen.setdefault(mine, theirs) == theirs for mine, theirs in zip(code.classes, piece.classes))


def _lines(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], symbols: _Names):
    items, names = _graph_lines(gm, example_inputs, symbols)
    items = [f"grad_mode={torch.is_grad_enabled()}", f"autocast={autocast_state()}", *items,
             f"symbols {symbols.facts()}"]
    return items, ["<context>", "<context>", *names, "<symbols>"], symbols


#: the device types whose autocast state a piece's code depends on
AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_state() -> str:
    """Where autocast is on, and to which dtype. AOTAutograd traces a piece under the caller's autocast,
    so the casts it implies are in the compiled code, though not in Dynamo's graph: the same graph
    compiled under ``torch.autocast("cuda", torch.bfloat16)`` multiplies in bf16, and without it in fp32."""
    on = [f"{device}:{torch.get_autocast_dtype(device)}" for device in AUTOCAST_DEVICES
          if torch.is_autocast_enabled(device)]
    return ",".join(on) or "off"


def _graph_lines(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], symbols: _Names):
    index: dict[torch.fx.Node, int] = {}
    items: list[str] = []
    names: list[str] = []
    placeholders = iter(example_inputs)
    for position, node in enumerate(gm.graph.nodes):
        index[node] = position
        if node.op == "placeholder":
            line = f"input {describe_value(next(placeholders, None), symbols)}"
        elif node.op == "get_attr":
            line = f"constant {_constant(gm, node.target, symbols)}"
        elif node.op == "call_module":
            # Not inlined by Dynamo: it carries its own state, so it must never be shared.
            module = gm.get_submodule(node.target)
            line = (f"module {type(module).__qualname__}@{id(module)} {_canon(node.args, index, symbols)} "
                    f"{_canon(node.kwargs, index, symbols)}")
        else:
            line = f"{node.op} {_target(node.target)} {_canon(node.args, index, symbols)} {_canon(node.kwargs, index, symbols)}"
        items.append(line)
        names.append(node.name)
    return items, names


def first_difference(reference: Fingerprint, other: Fingerprint) -> str:
    """Describe where ``other`` first departs from ``reference`` (for the reuse-breaker log)."""
    for ref_item, item, name in zip(reference.items, other.items, other.node_names):
        if ref_item != item:
            return f"node {name!r}: {item!r} where the first instance has {ref_item!r}"
    return f"graphs differ in length ({len(other.items)} vs {len(reference.items)} nodes)"


def only_constants_differ(reference: Fingerprint, other: Fingerprint) -> bool:
    """Whether ``other`` runs the same operations on inputs like ``reference``'s, with other constants: a
    per-layer value read in the block (what the reuse-breaker warning is for). Blocks that take other
    inputs (another width, another layout) or run other code differ otherwise, as a model's stages do."""
    if len(reference.items) != len(other.items):
        return False
    for ref_item, item in zip(reference.items, other.items):
        if ref_item == item:
            continue
        head, ref_head = item.split(" ", 2)[:2], ref_item.split(" ", 2)[:2]
        if head != ref_head or head[0] not in ("call_function", "call_method", "constant"):
            return False
    return True


def _dims(dims, name=str) -> str:
    return "[" + ",".join(name(d) for d in dims) + "]"


def _target(target: Any) -> str:
    if isinstance(target, str):
        return target
    try:
        return _get_qualified_name(target)
    except Exception:  # some builtins/callables have no importable qualified name
        return getattr(target, "__qualname__", repr(target))


def _canon(arg: Any, index: dict[torch.fx.Node, int], symbols: _Names) -> str:
    if isinstance(arg, torch.fx.Node):
        return f"%{index[arg]}"
    if isinstance(arg, (list, tuple)):
        inner = ",".join(_canon(a, index, symbols) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner})"
    if isinstance(arg, dict):
        return "{" + ",".join(f"{k}:{_canon(v, index, symbols)}" for k, v in sorted(arg.items())) + "}"
    if isinstance(arg, slice):
        return (f"slice({_canon(arg.start, index, symbols)},{_canon(arg.stop, index, symbols)},"
                f"{_canon(arg.step, index, symbols)})")
    if isinstance(arg, torch.Tensor):
        return _tensor_value(arg)
    if isinstance(arg, _SYMBOLIC):
        return describe_value(arg, symbols)
    if callable(arg) and not isinstance(arg, type):
        return _target(arg)
    return repr(arg)


def _constant(gm: torch.fx.GraphModule, target: str, symbols: _Names) -> str:
    value = gm
    for atom in target.split("."):
        value = getattr(value, atom)
    if isinstance(value, torch.Tensor):
        return _tensor_value(value)
    if isinstance(value, torch.fx.GraphModule):
        # A higher-order op's body (activation checkpointing's, flex attention's score_mod, cond's
        # branches): each layer's trace holds its own GraphModule object, so it is written by what
        # it computes, as the piece itself, with its inputs' metadata from the trace.
        inputs = [node.meta.get("example_value", node.meta.get("val")) for node in value.graph.find_nodes(op="placeholder")]
        lines, _ = _graph_lines(value, inputs, symbols)
        return "graph#" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return f"{type(value).__qualname__}@{id(value)}"  # opaque objects are never shared


def _tensor_value(tensor: torch.Tensor) -> str:
    meta = describe_value(tensor)
    if tensor.device.type == "meta" or isinstance(tensor, torch._subclasses.FakeTensor):
        return meta
    data = tensor.detach().contiguous().cpu()
    raw = data.view(torch.uint8) if data.numel() and data.dtype != torch.bool else data.to(torch.uint8)
    return f"{meta}#{hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]}"
