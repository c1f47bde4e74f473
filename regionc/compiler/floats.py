"""Python floats that Dynamo traces as tensors, compiled one piece at a time.

Dynamo traces a float that may change between calls (a LoRA scale set with ``set_adapters``, a
guidance scale) as a 0-d tensor input read by ``.item()``; its fake remembers the symbol ``.item()``
returns (``item_memo``). Inductor's tensorify pass, inside AOTAutograd, turns the float math back
into tensor math, so a new value needs no recompile. It was written for one compile per Dynamo
graph, and regionc compiles a graph's pieces one by one:

- a backend runs under a fresh fake mode on Dynamo's ShapeEnv, so AOTAutograd copies a piece's
  example values (fakes of the trace's mode) into it, without the memo: ``.item()`` becomes
  data-dependent and the compile fails (:func:`in_backend_fake_mode` copies them with it);
- the pass marks every float symbol of the ShapeEnv that it did not tensorify for specialization
  and asks Dynamo to trace again: compiling one piece, it would make every float that piece does not
  read constants (:func:`tensorify_own_floats` keeps it to the ones the piece reads);
- where a piece's own float cannot be tensorified, the pieces that run the same code read the same
  floats at the same places, and are specialized with it, so one trace again serves the whole stack
  rather than one per layer (:func:`specialize_like`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor


def in_backend_fake_mode(example_inputs: Sequence[Any]) -> list[Any]:
    """The example inputs, each tensorified float copied into the tracing context's fake mode with its memo."""
    context = torch._guards.TracingContext.try_get()
    mode = context.fake_mode if context is not None else None
    inputs = list(example_inputs)
    for i, value in enumerate(inputs):
        if mode is None or not isinstance(value, FakeTensor) or value.fake_mode is mode:
            continue
        memo = value.item_memo
        if memo is not None:
            inputs[i] = mode.from_tensor(value)
            inputs[i].item_memo = memo
    return inputs


@contextlib.contextmanager
def tensorify_own_floats(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Iterator[None]:
    """While ``gm`` compiles, the ShapeEnv's float symbols other than the ones it reads count as specialized
    already, which the tensorify pass leaves alone; they are taken off the list again after. A float input
    the piece only computes with as a tensor is not its own: nothing in it can need the float a constant."""
    state = _tensorify_state()
    mode = torch._guards.detect_fake_mode(example_inputs)
    env = mode.shape_env if mode is not None else None
    if state is None or env is None:
        yield
        return
    from torch.utils._sympy.symbol import SymT, symbol_is_type

    own = _floats_read(gm)
    values = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
    others = {str(s) for s in values if symbol_is_type(s, SymT.FLOAT)} - own - state.force_specializations
    state.force_specializations |= others
    try:
        yield
    finally:
        state.force_specializations -= others


def specialize_like(inputs: list[Any], siblings: Sequence[list[Any]]) -> None:
    """The floats the tensorify pass just marked for specialization in one piece's ``inputs``: mark the ones
    at the same places of each sibling's inputs too (they run the same code)."""
    state = _tensorify_state()
    if state is None:
        return
    places = [i for i, value in enumerate(inputs)
              if any(state.should_specialize(str(s)) for s in _float_symbols(value))]
    for other in siblings:
        for i in places:
            for symbol in _float_symbols(other[i]) if i < len(other) else ():
                state.specialize(str(symbol))


def _float_symbols(value: Any) -> set:
    """The float symbols an input carries: a tensorified float's ``.item()`` symbol, or a SymFloat's."""
    if isinstance(value, FakeTensor):
        memo = value.item_memo
        return {memo.node._expr} if memo is not None and memo.node._expr.is_symbol else set()
    if isinstance(value, torch.SymFloat):
        return set(value.node.expr.free_symbols)
    return set()


def _floats_read(gm: torch.fx.GraphModule) -> set[str]:
    """The symbols a scalar of ``gm``'s graphs (its subgraphs' too) is computed from: among them the floats
    it reads (a float input's ``.item()``, a SymFloat input, and the math on them)."""
    return {str(s) for module in gm.modules() if isinstance(module, torch.fx.GraphModule)
            for node in module.graph.nodes
            if isinstance(value := node.meta.get("example_value", node.meta.get("val")),
                          (torch.SymFloat, torch.SymInt, torch.SymBool))
            for s in value.node.expr.free_symbols}


def _tensorify_state():
    """Dynamo's record of the floats to specialize when it traces again (None on a torch without it)."""
    try:
        from torch._dynamo.symbolic_convert import TensorifyState
    except ImportError:
        return None
    return TensorifyState if isinstance(getattr(TensorifyState, "force_specializations", None), set) else None
