"""Real architectures through both entry points: output equal to eager, one compile per unique block.

Each case compiles the model at depth 2 and at depth 3 and asserts that the output equals eager, that
the number of unique pieces does not grow with depth, and that every stack of identical blocks
is found and its instances reuse one compile. The cache is the session's, so depth 3 mostly loads
what depth 2 compiled: the count asserted is of unique pieces (compiled or loaded), not of compiles.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import regionc
from regionc.tracing.compile import CompiledForward
from tests.zoo.architectures import ARCHITECTURES

ENTRY_POINTS = {
    "backend": lambda model: torch.compile(model, backend="regionc"),
    "regionc.compile": lambda model: regionc.compile(model),
}


@dataclasses.dataclass
class Result:
    expected: object  # eager output
    actual: object  # compiled output
    reports: list  # the reports of the compile (regionc.compile: of the block tracing in use)
    fallbacks: list[str]  # block tracings regionc.compile gave up, with the error
    per_block: dict[str, int]  # regionc.compile per block: stack -> blocks (Dynamo reuses the frame)
    strategy: str  # the block tracing in use ("full" for the plain backend)


def run(name: str, entry: str, depth: int) -> Result:
    torch.manual_seed(0)
    model, kwargs = ARCHITECTURES[name].build(depth)
    with torch.no_grad():
        expected = model(**kwargs)
        before = len(regionc.reports())
        compiled = ENTRY_POINTS[entry](model)
        first = compiled(**kwargs)
        assert relative_error(first, expected) <= 1e-5
        actual = compiled(**kwargs)  # regionc.compile may have changed block tracing after the first call
    forward = compiled.forward
    if not isinstance(forward, CompiledForward):
        return Result(expected, actual, regionc.reports()[before:], [], {}, "full")
    per_block = {}  # a stack of several kinds of blocks is several Stacks of one path
    if forward.strategy == "per_block":
        for stack in forward.stacks:
            per_block[stack.path] = per_block.get(stack.path, 0) + len(stack.instances)
    return Result(expected, actual, forward.reports, forward.fallbacks, per_block, forward.strategy)


def relative_error(actual, expected) -> float:
    """Largest relative error (norm of the difference over the norm of eager) over the tensors of an output."""
    actual, expected = _leaves(actual), _leaves(expected)
    assert len(actual) == len(expected)
    return max(((a - e).norm() / e.norm().clamp_min(1e-12)).item() for a, e in zip(actual, expected))


def _leaves(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture(name, entry, zoo_rows):
    unique, strategies = {}, {}
    for depth in (2, 3):
        result = run(name, entry, depth)
        assert relative_error(result.actual, result.expected) <= 1e-5
        assert result.reports, "regionc compiled nothing"
        pieces = [p for r in result.reports for p in r.pieces]
        # a loaded piece has its key only; glue run as traced compiles nothing
        unique[depth] = len({p.key or p.fingerprint for p in pieces if p.source != "traced"})
        strategies[depth] = result.strategy
        stacks = {path: n for r in result.reports for path, n in r.stacks.items()} or result.per_block
        if result.per_block:  # one Dynamo frame per block class, reused by every instance
            reused = sum(result.per_block.values()) - unique[depth]
        else:
            reused = sum(p.source == "reused" and p.kind == "block" for p in pieces)
    for depth, strategy in strategies.items():  # Dynamo compiles a block frame per input layout: first, middle, last
        assert strategy != "per_block" or unique[depth] <= 3 * len(stacks), f"per-layer compiles: {unique}"
    if "per_block" not in strategies.values():
        assert unique[2] == unique[3], f"unique pieces grow with depth: {unique}"
    assert stacks, "no repeated blocks found"
    assert all(n >= 3 for n in stacks.values()), stacks
    assert reused > 0
    warm = ""
    if entry == "regionc.compile":  # a second compile of the same model finds the traces the first saved
        again = run(name, entry, 3)
        assert relative_error(again.actual, again.expected) <= 1e-5
        loaded = [r for r in again.reports if r.trace_source.startswith("saved trace")]
        warm = f"{len(loaded)}/{len(again.reports)} traces loaded"
        assert len(loaded) == len(again.reports), f"a warm start traced again: {warm}"
    zoo_rows.append({"name": name, "entry": entry, "library": ARCHITECTURES[name].library,
                     "blocks": ", ".join(f"{path}×{n}" for path, n in stacks.items()),
                     "unique": unique[3], "reused": reused, "warm": warm, "strategy": result.strategy,
                     "fallbacks": sorted({*result.fallbacks, *(f for r in result.reports for f in r.fallbacks)})})
