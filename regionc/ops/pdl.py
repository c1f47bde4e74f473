"""Programmatic dependent launch (PDL, Hopper and newer): a kernel starts while the one before it in
the stream finishes.

A decode step is some ten kernels per decoder layer, each reading a few MB: at that size a kernel's
start (its programs being scheduled, their first loads in flight) and its tail (the last programs
draining) cost as much as its bytes. With PDL the next kernel's programs are scheduled as soon as
every program of the current one has signalled (``gdc_launch_dependents``); they do what needs no
result of the kernels before them, then block in ``gdc_wait`` until the previous kernel has finished
and its writes are visible. regionc's decode kernels (``skinny_linear``, ``skinny_swiglu``,
``decode_attention``) call :func:`start` first thing, so they read and write nothing a kernel before
them could still be touching; the linears first ask L2 for the first tiles of their weights
(:func:`prefetch_l2`, a hint that reads no value, so it is right even where a weight was just
written), which is where the overlap pays: the weight bytes start moving during the kernel before.
A decode step's Inductor kernels get the same from Inductor's own ``triton.enable_pdl``
(``regionc/compiler/inductor.py`` sets it for decode pieces).

A kernel launched without PDL (cuBLAS, a copy, a kernel of another library) waits for the previous
one as usual, so mixing is safe; on GPUs before Hopper the launch attribute and both instructions are
not used. ``REGIONC_NO_PDL=1`` turns both regionc's and the Inductor default off (a switch for
bisecting a suspected ordering bug).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from regionc.config import PDL
from regionc.ops import _utils
from regionc.ops._utils import tl, triton

#: whether regionc's kernels launch with PDL where the GPU has it (off under ``REGIONC_NO_PDL=1``)
ENABLED = PDL

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def launches_with_pdl(t: torch.Tensor) -> bool:
    """Whether a regionc kernel over ``t`` launches with PDL: a CUDA tensor on a Hopper or newer GPU,
    compiled kernels (not the interpreter), and not switched off."""
    idx = t.get_device()
    return ENABLED and idx >= 0 and not _INTERPRETED and _utils.capability(idx)[0] >= 9


def launch_args(t: torch.Tensor) -> dict:
    """The arguments a kernel over ``t`` is launched with: its ``PDL`` constexpr (whether it waits),
    and Triton's ``launch_pdl`` where it does, so the two never disagree."""
    on = launches_with_pdl(t)
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@contextlib.contextmanager
def turned_off() -> Iterator[None]:
    """regionc's kernels launch without PDL inside (what a CUDA graph captures inside keeps that):
    the in-process A/B of benchmarks/e2e/bench_hf_llama.py. Inductor's kernels follow their own
    ``triton.enable_pdl``."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


if _utils.HAS_TRITON:

    @triton.jit
    def start(PDL: tl.constexpr):
        """Under PDL: wait until the kernel before has finished (its writes visible), then let the
        kernel after this one be scheduled. Every read and write of a kernel comes after this."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptrs):
        """Ask L2 for the 128-byte lines holding ``ptrs`` (valid addresses). Nothing is read into
        registers and nothing waits: safe before :func:`start`, since L2 is where writes land."""
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False,
                                  pack=1)

    @triton.jit
    def prefetch_rows(base, rows, last_row, stride, cols):
        """Ask L2 for columns ``cols`` (one per 128-byte line) of each of ``rows`` of a row-major tensor at
        ``base``, rows past ``last_row`` clamped to it (an address inside the tensor)."""
        rows = tl.minimum(rows, last_row).to(tl.int64)
        prefetch_l2(base + rows[:, None] * stride + cols[None, :])
