"""What code a block instance runs, beyond its class: the classes of the modules it holds, the forwards
set on them, their hooks, the functions they hold as attributes, and the values held by modules of
function-local classes.

Blocks of one class are traced once and that trace is run for all of them, which is right only if
they run the same code. Three things make one instance run other code than its siblings while its
class is the same, and torch's ways of tracing a block once miss them: its nested regions (torch >= 2.12)
reuse one block's trace over a submodule of another class, a forward set on an instance and a forward
hook, and a per-block frame's guards do not cover hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``).
Each happens in practice: PEFT's LoRA on some layers only (``layers_to_transform``) swaps those layers'
linears for LoRA modules, accelerate's hooks set ``forward`` on the modules they wrap, and
``kernels.kernelize`` sets it on the function modules that transformers keeps in dicts. A function held
as an attribute (``self.act = F.gelu`` in one layer, ``F.silu`` in the next) is a fourth, and so are a
class and an enum member: Dynamo checks them by identity, a check a saved trace cannot keep
(``regionc/tracing/saved.py``), so they are named here, a function by its qualified name and its code (two
lambdas of one line differ in their constants). And a saved trace
checks nothing below a module of a function-local class (torch cannot save such a guard), so the plain
values those modules hold are named too.

A module's held modules are its submodules and the modules in its attributes' dicts, lists and
tuples (how the ``kernels`` package keeps them, unregistered).
"""

from __future__ import annotations

import enum
import hashlib
import types
from collections.abc import Iterator
from typing import Any

from torch import nn


def held_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, module)`` for ``module``, its submodules and the modules in their dict, list and tuple attributes."""
    for path, sub in module.named_modules():
        yield path, sub
        for name, item in _attributes(sub):
            if isinstance(item, nn.Module) and "[" in name:
                yield f"{path}.{name}".lstrip("."), item


#: values compared by what they are, the same in every process (numbers, strings, flags, None)
PLAIN_VALUES = (type(None), bool, int, float, complex, str, bytes)

#: torch's own bookkeeping in every module's ``__dict__`` (its submodules, parameters, hooks keyed by a
#: process-wide counter): read apart, or not at all
_MODULE_STATE = frozenset(vars(nn.Module())) | {"forward", "_compiled_call_impl"}


def _attributes(module: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` for a module's own attributes and the items of its dict, list and tuple
    attributes (``name[key]``), torch's bookkeeping and a ``forward`` set on it aside."""
    for name, value in vars(module).items():
        if name in _MODULE_STATE:
            continue
        yield name, value
        items = value.items() if isinstance(value, dict) else enumerate(value) \
            if isinstance(value, (list, tuple)) else ()
        for key, item in items:
            yield f"{name}[{key!r}]", item


def signature(block: nn.Module) -> tuple:
    """What decides the code ``block`` runs besides its class: each held module's path and class, the
    forward set on it (by name), its forward hooks (by name), the functions, classes and enum members it
    holds as attributes or in their dicts, lists and tuples (:func:`_identity`), and the plain values of a
    function-local class (:func:`_local_values`). Equal for instances that run the same code."""
    return tuple((path, name_of(type(sub)), name_of(vars(sub).get("forward")),
                  tuple(name_of(hook) for hook in sub._forward_pre_hooks.values()),
                  tuple(name_of(hook) for hook in sub._forward_hooks.values()),
                  tuple((name, ident) for name, value in _attributes(sub) if (ident := _identity(value)) is not None),
                  _local_values(sub))
                 for path, sub in held_modules(block))


def _local_values(module: nn.Module) -> tuple:
    """The plain values (numbers, strings, flags) a module of a function-local class holds. torch cannot
    save a guard on such a module, so a saved trace checks nothing below it (``regionc/tracing/saved.py``):
    its values must be the same for every block that runs one trace. Other modules' values are Dynamo's
    guards' to check (a per-layer ``layer_idx`` among them), not the signature's."""
    if "<locals>" not in type(module).__qualname__:
        return ()
    return tuple((name, value) for name, value in _attributes(module) if isinstance(value, PLAIN_VALUES))


def difference(first: nn.Module, other: nn.Module) -> str | None:
    """Where ``other`` runs other code than ``first`` (its class aside), in words; ``None`` where it does not."""
    mine, theirs = dict((row[0], row[1:]) for row in signature(first)), dict((row[0], row[1:]) for row in signature(other))
    for path in [*mine, *(p for p in theirs if p not in mine)]:
        a, b = mine.get(path), theirs.get(path)
        if a == b:
            continue
        where = path or "the block"
        if a is None or b is None:
            return f"{where} is held by one of them only"
        for what, x, y in zip(("class", "forward set on it", "forward pre-hooks", "forward hooks",
                               "functions, classes or enum members held", "values held by a function-local class"), a, b):
            if x != y:
                return f"{where}: {what} {x or 'none'} against {y or 'none'}"
    return None


def _identity(value: Any) -> str | None:
    """What Dynamo checks by identity in a value a module holds, in words that hold across processes: a
    function (by name and code), a class (by name), an enum member (by class and name). None for anything
    else: modules are held modules, and other values are Dynamo's guards' to check."""
    if isinstance(value, enum.Enum):
        return f"{name_of(type(value))}.{value.name}"
    if isinstance(value, type):
        return name_of(value)
    if callable(value) and not isinstance(value, nn.Module):
        return _code(value)
    return None


def _code(value: Any) -> str | None:
    """A callable's qualified name and, for a Python function, a digest of its code and constants."""
    function = getattr(value, "func", None) or getattr(value, "__func__", None) or value
    code = getattr(function, "__code__", None)
    return name_of(value) if code is None else f"{name_of(value)}#{_code_digest(code)}"


def _code_digest(code: types.CodeType) -> str:
    digest = hashlib.sha256(code.co_code + repr(code.co_names).encode())
    for const in code.co_consts:  # a nested function's code by its own digest, never by its address
        digest.update((_code_digest(const) if isinstance(const, types.CodeType) else repr(const)).encode())
    return digest.hexdigest()[:12]


def name_of(value: Any) -> str | None:
    """A class's or a callable's qualified name (a partial's or a bound method's function's)."""
    if value is None:
        return None
    if not isinstance(value, type):
        value = getattr(value, "func", None) or getattr(value, "__func__", None) or value
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
