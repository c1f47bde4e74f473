"""Size guards a piece's compiled code carries: what Inductor assumed of symbolic sizes that Dynamo's
guards may not check.

Inductor can add a guard on a symbolic size while it compiles (a specialization, a divisibility or a
bound). Compiled inside Dynamo's call to the backend, the guard lands in the frame's ShapeEnv before
Dynamo builds the frame's guards, so Dynamo checks it. It is missed in two cases: a piece compiled in
the background (Dynamo installed the guards before the compile ran), and a piece loaded from regionc's
store (the loading process never ran Inductor, so its ShapeEnv never saw the guard). Torch's own
FX graph cache keeps such guards with the entry for the same reason (``guards_expr``).

So each compile takes the guards added since Dynamo handed the graph over (:func:`guard_mark`,
:func:`guards_added`),
the store keeps them with the artifact, and a piece whose code carries any is installed as a
:class:`GuardedPiece`: each call checks the guards on its inputs' sizes and runs the piece's graph
eagerly, logged once, when they do not hold. A compile that adds no guard, the common case, installs the compiled code bare.

The guards are checked in their raw form, over the symbols the piece's inputs were traced with:
ShapeEnv's own guard printer drops a guard whose symbol a specialization has since replaced by a
constant (``s0 == 6`` after ``guard_int(s0)``), which is exactly the guard that matters here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sympy
import torch

log = logging.getLogger("regionc")


class UncheckableGuard(RuntimeError):
    """Inductor added a guard on a symbol none of the piece's inputs carries: it cannot be checked per call."""


@dataclasses.dataclass(frozen=True)
class ShapeGuards:
    """A Python expression over symbol names, and where each symbol's value is read from a call's inputs."""

    code: str
    bindings: tuple[tuple[str, int, str, int], ...]  # (symbol, input index, "int"|"float"|"size"|"stride"|"offset", dim)

    def holds(self, args: Sequence[Any]) -> bool:
        code, interp = self._compiled
        values = {name: _read(args[index], kind, dim) for name, index, kind, dim in self.bindings}
        return bool(eval(code, interp, values))  # noqa: S307 - our own printed sympy expression

    @functools.cached_property
    def _compiled(self):
        """The expression compiled once, and the names it may call (ShapeEnv's, as its own guards use)."""
        from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

        return compile(self.code, "<regionc piece guards>", "eval"), SYMPY_INTERP

    def to_bytes(self) -> bytes:
        return json.dumps({"code": self.code, "bindings": self.bindings}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShapeGuards:
        fields = json.loads(data)
        return cls(fields["code"], tuple(tuple(b) for b in fields["bindings"]))


def _read(value: Any, kind: str, dim: int) -> int | float:
    """The value a binding names; on fake inputs, the size they were traced with (reading it adds no guard)."""
    if kind == "float":
        return value.node.hint if isinstance(value, torch.SymFloat) else float(value)
    if kind == "int":
        read = value
    elif kind == "size":
        read = value.size(dim)
    elif kind == "stride":
        read = value.stride(dim)
    else:
        read = value.storage_offset()
    return read.node.hint if isinstance(read, torch.SymInt) else int(read)


@dataclasses.dataclass(frozen=True)
class GuardMark:
    """The ShapeEnv as Dynamo handed a graph over: how many guards it held, and its renamings then (each
    renamed symbol and what it stood for, resolved).

    The renamings matter because a piece's compile may rename further: a specialization collapses
    ``s67 -> s40`` (two sizes Dynamo found equal: HF's sliding-window ``cumulative_length`` and its cache
    length) into ``s67 -> 6``, and the guard that did it names ``s40`` only. A piece handed the int as
    ``s67`` computed with 6 all the same; what links its input to the guard is the renaming at handover."""

    count: int = 0
    renamings: dict[sympy.Symbol, sympy.Expr] = dataclasses.field(default_factory=dict)

    def renamed(self, expr: sympy.Expr) -> sympy.Expr:
        """``expr`` in the symbols it stood for at handover."""
        return expr.xreplace(self.renamings) if self.renamings else expr


def guard_mark(example_inputs: Sequence[Any]) -> GuardMark:
    """The ShapeEnv of ``example_inputs`` now (an empty mark when they have no symbolic size): what
    :func:`guards_added` counts from."""
    env = _shape_env(example_inputs)
    if env is None:
        return GuardMark()
    return GuardMark(len(env.guards), {symbol: env.replace(symbol) for symbol in env.replacements})


def guards_added(example_inputs: Sequence[Any], since: GuardMark) -> ShapeGuards | None:
    """The guards added to the ShapeEnv of ``example_inputs`` after ``since`` that bear on their symbols
    (None when there are none). Counted from the moment Dynamo handed the graph over, not from this
    piece's compile: a symbol an earlier piece's compile specialized is a constant in this piece's code too.

    A guard that also names a symbol found nowhere in the inputs' sizes, strides and offsets (as traced,
    as renamed at ``since``, as renamed now) came from another piece's compile (every symbol of a piece's
    code comes from its inputs), and is left to that piece: another layer's ``s1 != 16*s94``, where ``s94``
    is that layer's cache length, says nothing this piece's code could have used. Raises
    :class:`UncheckableGuard` when a guard names a symbol no size of the inputs gives alone (one inside a
    larger size, ``s0 + s1``, and nowhere by itself)."""
    env = _shape_env(example_inputs)
    if env is None or len(env.guards) <= since.count:
        return None
    bindings = _bindings(example_inputs, env, since)
    bound = {b[0] for b in bindings}
    carried = _carried(example_inputs, env, since)

    def foreign(symbol: sympy.Symbol) -> bool:
        return str(symbol) not in carried and not {str(s) for s in env.replace(symbol).free_symbols} & carried

    exprs = [g.expr for g in env.guards[since.count:]
             if {str(s) for s in g.expr.free_symbols} & carried and not any(map(foreign, g.expr.free_symbols))]
    if not exprs:
        return None
    unbound = {str(s) for e in exprs for s in e.free_symbols} - bound
    if unbound:
        raise UncheckableGuard(f"Inductor guarded on {', '.join(sorted(unbound))}, which no size, stride or offset "
                               f"of the piece's inputs gives alone ({'; '.join(map(str, exprs))})")
    from torch.utils._sympy.printers import PythonPrinter

    used = {str(s) for e in exprs for s in e.free_symbols}
    return ShapeGuards(PythonPrinter().doprint(sympy.And(*exprs)), tuple(b for b in bindings if b[0] in used))


def _symints(value: Any) -> Iterator[tuple[torch.SymInt | torch.SymFloat, str, int]]:
    """The symbols an input carries: a symbolic int or float (a Python scalar Dynamo made symbolic,
    which Inductor may specialize back to the value it was traced with), and a tensor's sizes."""
    if isinstance(value, torch.SymInt):
        yield value, "int", 0
    elif isinstance(value, torch.SymFloat):
        yield value, "float", 0
    elif isinstance(value, torch.Tensor):
        yield from ((s, "size", d) for d, s in enumerate(value.shape) if isinstance(s, torch.SymInt))
        yield from ((s, "stride", d) for d, s in enumerate(value.stride()) if isinstance(s, torch.SymInt))
        if isinstance(offset := value.storage_offset(), torch.SymInt):
            yield offset, "offset", 0


def _shape_env(example_inputs: Sequence[Any]):
    for value in example_inputs:
        for symint, _, _ in _symints(value):
            return symint.node.shape_env
    return None


def _names(raw: sympy.Expr, env, since: GuardMark) -> tuple[sympy.Expr, ...]:
    """An input's size as traced, as renamed when Dynamo handed the graph over, and as renamed now."""
    return raw, since.renamed(raw), env.replace(raw)


def _carried(example_inputs: Sequence[Any], env, since: GuardMark) -> set[str]:
    """Every symbol in the inputs' sizes, strides and offsets, alone or inside a larger expression, under
    each of its names."""
    carried: set[str] = set()
    for value in example_inputs:
        for symint, _, _ in _symints(value):
            carried.update(str(s) for expr in _names(symint.node._expr, env, since) for s in expr.free_symbols)
    return carried


def _bindings(example_inputs: Sequence[Any], env, since: GuardMark) -> tuple[tuple[str, int, str, int], ...]:
    """Each symbol an input was traced with (and each symbol it was renamed to), bound to the first input
    position that carries it."""
    bound: dict[str, tuple[str, int, str, int]] = {}
    for index, value in enumerate(example_inputs):
        for symint, kind, dim in _symints(value):
            for symbol in _names(symint.node._expr, env, since):
                if isinstance(symbol, sympy.Symbol) and str(symbol) not in bound:
                    bound[str(symbol)] = (str(symbol), index, kind, dim)
    return tuple(bound.values())


class GuardedPiece:
    """A compiled piece that runs only where its size guards hold, and its graph eagerly elsewhere."""

    def __init__(self, compiled: Callable[..., Any], guards: ShapeGuards, eager: Callable[..., Any], name: str):
        self.compiled, self.guards, self.eager, self.name = compiled, guards, eager, name
        self._warned = False

    def __call__(self, *args: Any) -> Any:
        if self.guards.holds(args):
            return self.compiled(*args)
        if not self._warned:
            self._warned = True
            log.warning("regionc: %s runs eagerly for these inputs: its compiled code assumes %s, which they break",
                        self.name, self.guards.code)
        return self.eager(*args)


def guarded(compiled: Callable[..., Any], guards: ShapeGuards | None, eager: Callable[..., Any] | None,
            name: str) -> Callable[..., Any]:
    """``compiled`` itself when it carries no guards, else a :class:`GuardedPiece` over ``eager``."""
    if guards is None:
        return compiled
    if eager is None:
        raise RuntimeError(f"regionc: {name}'s compiled code assumes {guards.code} of its input sizes, and no "
                           f"graph of it is at hand to run eagerly where that fails")
    log.info("regionc: %s checks its input sizes on each call: its compiled code assumes %s", name, guards.code)
    return GuardedPiece(compiled, guards, eager, name)
