"""Inductor's combo kernels, with the graph's sinks launched in its last combo kernel.

Inductor groups kernels into combo kernels (one launch for several independent kernels) level by
level of the dependency graph: kernels whose inputs are ready at the same time. A kernel nothing
depends on (a sink) is grouped at the level where its inputs are ready, though it could run at any
later one. In a decode step's piece that splits launches needlessly: HF's ``StaticCache`` layer
counts tokens in a one-element tensor, ``cumulative_length.add_(1)``, written after the cache write
reads it, so it sits alone one level after the cache writes while the piece's last kernel (the sum of
the down projection's partials) sits alone at the last level. That is one launch per layer more
than needed.

:func:`sinks_last` moves every sink to the last level before Inductor groups the levels. Moving a
kernel later never breaks its own dependencies, and nothing depends on a sink; its inputs stay alive
until the end of the piece, which is why only the pieces compiled with combo kernels (decode steps,
whose tensors are small) get it. Every compile runs under Dynamo's compile lock, so the grouping
installed here is seen by no other compile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def sinks_last() -> Iterator[None]:
    """Group combo kernels with the sinks moved to the last level, for the compiles inside."""
    from torch._inductor.scheduler import ForeachKernelSchedulerNode

    group = ForeachKernelSchedulerNode.group_algorithm_for_combo_kernels

    def grouped(scheduler):
        levels = _sinks_moved_last(scheduler)
        scheduler._topological_sort_nodes = lambda: levels  # what the grouping reads, for this call
        try:
            return group(scheduler)
        finally:
            del scheduler._topological_sort_nodes

    ForeachKernelSchedulerNode.set_group_algorithm_for_combo_kernels(grouped)
    try:
        yield
    finally:
        ForeachKernelSchedulerNode.set_group_algorithm_for_combo_kernels(group)


def _sinks_moved_last(scheduler) -> list[list]:
    """The scheduler's nodes by dependency level, with the nodes no other node depends on in the last."""
    levels = scheduler._topological_sort_nodes()
    if len(levels) < 2:
        return levels
    depended_on = {dep for node in scheduler.nodes for dep in scheduler._get_unmet_dep_nodes(node)}
    moved = [[node for node in level if node in depended_on] for level in levels[:-1]]
    sinks = [node for level in levels[:-1] for node in level if node not in depended_on]
    return [level for level in moved if level] + [levels[-1] + sinks]
