"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import torch

import regionc

#: In-memory compiles only: counts in the report are then real Inductor compiles.
NO_CACHE = {"cache": False, "strict": True}


def compile_regionc(model, options=None):
    return torch.compile(model, backend="regionc", options={**NO_CACHE, **(options or {})})


def assert_close(actual, expected, atol=1e-5, rtol=1e-4):
    actual_leaves, expected_leaves = _leaves(actual), _leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


def block_compiles(report: regionc.Report) -> int:
    return report.count("compiled", "block")


def _leaves(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        return _leaves(value.to_tuple())
    return []
