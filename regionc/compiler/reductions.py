"""Reductions over a few wide rows in one pass (Inductor's persistent reductions).

Inductor keeps a reduction's row in registers ("persistent") only up to 1024 elements on the
reduced dim; a longer row is reduced in a loop, and a kernel that needs the reduced value for every
element again (an RMSNorm: the mean of squares, then each element scaled by it) runs a second loop
that loads the row again. A decode step's rows are few (one per sequence) and as wide as the model
(2048 to 4096), so each of a decoder layer's two norms is a kernel of a handful of programs whose
time is mostly those two dependent passes over memory. Under :func:`persistent_rows`, a reduction of
at most ``SMALL_ROWS`` rows (the decision table's decode sizes) up to :data:`MAX_ROW` wide is done in
one pass; anything with more rows is left as Inductor decides, so prefill kernels do not change. HF
Llama 32 × 2048 decoding 8 rows on an H200: the two norms of a layer take 2.0 and 1.6 µs instead of
2.6 and 2.0, the step's GPU span 1957 µs instead of 1990
(benchmarks/results/decode_profile/h200-2026-12-04-hf-llama-b8-persistent-rows.json against
``...-forward-graph.json``). Inductor's choices are per thread, so only the compiles inside the
context (in the thread that runs them) see the change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from regionc.passes.decisions import SMALL_ROWS

#: widest row reduced in one pass (Inductor's own limit is 1024): the hidden sizes of 1B-8B decoders,
#: two to four fp32 values a thread at 8 warps
MAX_ROW = 4096


class _PersistentRows:
    """Inductor's choices (``V.choices``) with inner reductions of few rows up to ``MAX_ROW`` wide
    made persistent; everything else is asked of the choices it wraps."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def should_use_persistent_reduction(self, features, cooperative_reduction: bool) -> bool:
        from torch._inductor import config
        from torch._inductor.runtime.hints import ReductionHint
        from torch._inductor.virtualized import V

        if self._inner.should_use_persistent_reduction(features, cooperative_reduction):
            return True
        sizes = V.graph.sizevars
        return (config.triton.persistent_reductions and not cooperative_reduction
                and features.get_reduction_hint() == ReductionHint.INNER
                and sizes.statically_known_leq(features.numel, SMALL_ROWS)
                and sizes.statically_known_leq(features.reduction_numel, MAX_ROW))


@contextlib.contextmanager
def persistent_rows() -> Iterator[None]:
    """Reduce up to ``SMALL_ROWS`` rows of at most :data:`MAX_ROW` elements in one pass, for the
    compiles inside."""
    from torch._inductor.virtualized import V

    with V.set_choices_handler(_PersistentRows(V.choices)):
        yield
