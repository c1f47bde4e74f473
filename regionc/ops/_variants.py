"""Launch variants shared by the memory-bound Triton kernels (``rms_norm``, ``rope``).

Each op has a module-level ``VARIANTS`` table of named :class:`Variant` choices (``COMMON_VARIANTS``
and any of its own) and a ``VARIANT`` switch read on every call; its benchmark
(``benchmarks/kernels/bench_<op>.py``) times every entry side by side (the ``variant`` column) and
recommends one. The choices are independent of each op's tiling heuristic:

* ``persistent``: grid = one wave (``programs_per_sm`` per SM, 0 = as many as the kernel's
  register/shared-memory use lets be resident, read from the compiled kernel), each program
  looping over tiles, instead of one program per tile.
* ``evict``: L2 eviction hints. ``"loads"``: the streamed input (read once) ``evict_first``, the
  operand every program re-reads (a weight row, cos/sin) ``evict_last``; ``"all"``: the stores
  ``evict_first`` too (the microbenchmark's best case; in a model the next kernel may want the
  output still in L2). ``""``: none.
* ``cached_launch``: repeat calls launch the kernel compiled for the same (shapes, strides, dtypes,
  device) directly (``_utils.CompiledLaunch``), skipping the Triton JIT's per-call argument
  binding; inputs needing no copy and 16-byte aligned only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from regionc.ops._utils import resident_programs, sm_count


@dataclass(frozen=True)
class Variant:
    """One launch choice of a kernel (tile shape and num_warps come from the op's heuristic)."""

    persistent: bool = False
    programs_per_sm: int = 0
    evict: str = ""
    cached_launch: bool = True


#: Variant.evict -> eviction policies of (streamed loads, re-read loads, stores)
HINTS = {"": ("", "", ""), "loads": ("evict_first", "evict_last", ""),
         "all": ("evict_first", "evict_last", "evict_first")}

#: persistent programs per SM when the resident count cannot be read (interpreter)
DEFAULT_PROGRAMS_PER_SM = 4

#: the choices every op's ``VARIANTS`` table offers
COMMON_VARIANTS: dict[str, Variant] = {
    "s2": Variant(cached_launch=False),  # one program per tile (row block), through the JIT: the baseline
    "s2+cached": Variant(),
    "evict-loads": Variant(evict="loads"),
    "evict": Variant(evict="all"),
    "persistent": Variant(persistent=True),
    "persistent+evict": Variant(persistent=True, evict="all"),
}


def lookup(op: str, variants: dict[str, Variant], name: str) -> Variant:
    """The variant ``name`` of ``variants``, or a ValueError naming it (unknown name, or an
    ``evict`` value with no hints)."""
    v = variants.get(name)
    if v is None:
        raise ValueError(f"regionc.{op}: unknown variant {name!r}; valid: {', '.join(variants)}")
    if v.evict not in HINTS:
        raise ValueError(f"regionc.{op}: variant {name!r} has evict={v.evict!r}; valid: {tuple(HINTS)}")
    return v


def persistent_programs(resident: dict[tuple, int], key: tuple, kernel, args: tuple, warps: int, v: Variant,
                        x: torch.Tensor, default_per_sm: int = DEFAULT_PROGRAMS_PER_SM) -> int:
    """Programs of a persistent launch: resident programs per SM (cached in ``resident`` under
    ``key``, one kernel specialisation, capped by ``programs_per_sm``) times the SM count."""
    per_sm = resident.get(key)
    if per_sm is None:
        found = resident_programs(kernel, args, warps, x.get_device())
        if found is None:
            found = v.programs_per_sm or default_per_sm
        per_sm = resident[key] = min(found, v.programs_per_sm) if v.programs_per_sm else found
    return per_sm * sm_count(x)


def warps_for(elems: int, steps: tuple[tuple[int, int], ...], default: int) -> int:
    """``num_warps`` for a tile of ``elems`` elements: the warps of the first ``(at least, warps)``
    step the tile reaches (steps largest first), else ``default``."""
    return next((warps for at_least, warps in steps if elems >= at_least), default)
