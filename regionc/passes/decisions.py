"""Where ``kernel_choice="auto"`` swaps a matched pattern for a regionc kernel.

A pass only swaps a pattern where the regionc kernel is at least as fast as what it replaces
(Inductor's generated code, or the SDPA backend) on that device and shape class. Each entry
says why, and where the number comes from; ``kernel_choice="always"`` ignores the table.

Keys: ``(device type, op, shape class)``; ``"*"`` as the shape class covers every class of
that op on that device. A missing entry means "do not swap" (unmeasured = not proven faster).

Shape classes (see :func:`shape_class`):

* norms and RoPE: ``"small"`` (≤ 64 rows/tokens: decode-like, latency bound), ``"large"``
  (> 64: prefill-like, bandwidth bound), ``"dynamic"`` (a symbolic size without a hint).
* attention: ``"gqa_expanded"`` (the pass removed a ``repeat_interleave``/``repeat_kv`` copy of k
  and v in front of SDPA) or ``"native"`` (SDPA read k/v as they are: MHA or ``enable_gqa``).

To update after a GPU run: edit the entries below with the measured result and the file under
``benchmarks/results/`` it comes from. Changing this file changes the pass uuid (its source is
hashed), so cached artifacts compiled under the old table are not reused.
"""

from __future__ import annotations

import dataclasses

SMALL_ROWS = 64


@dataclasses.dataclass(frozen=True)
class Decision:
    swap: bool
    reason: str


_CPU_SOURCE = "benchmarks/e2e/cpu_decisions.py on the 2-core CPU dev machine, torch 2.13.0+cpu, 2026-11-24"
_CUDA_TBC = "to be confirmed by benchmarks/results"

DECISIONS: dict[tuple[str, str, str], Decision] = {
    # ---------------------------------------------------------------- CPU (measured, see _CPU_SOURCE)
    # bf16, hidden 2048 / q 32 heads, kv 8, d128; regionc._C op vs Inductor C++, both inside a
    # compiled function; median µs (inductor vs regionc). Inductor won every case, so CPU auto swaps
    # nothing. Re-run the script on a real serving CPU before turning any of these on.
    ("cpu", "rms_norm", "small"): Decision(False, "Inductor faster on cpu for rows<=64: 53 vs 111 us at 8x2048 (" + _CPU_SOURCE + ")"),
    ("cpu", "rms_norm", "large"): Decision(False, "Inductor faster on cpu for rows>64: 1382 vs 3938 us at 2048x2048 (" + _CPU_SOURCE + ")"),
    ("cpu", "fused_add_rms_norm", "small"): Decision(
        False, "Inductor faster on cpu for rows<=64: 60 vs 122 us at 8x2048 (" + _CPU_SOURCE + ")"),
    ("cpu", "fused_add_rms_norm", "large"): Decision(
        False, "Inductor faster on cpu for rows>64: 2483 vs 5428 us at 2048x2048 (" + _CPU_SOURCE + ")"),
    ("cpu", "rope", "small"): Decision(False, "Inductor faster on cpu for tokens<=64: 75 vs 111 us at 8 tokens (" + _CPU_SOURCE + ")"),
    ("cpu", "rope", "large"): Decision(False, "Inductor faster on cpu for tokens>64: 5739 vs 10517 us at 2048 tokens (" + _CPU_SOURCE + ")"),
    ("cpu", "attention", "*"): Decision(
        False, "the cpu kernel is the fp32 torch reference (SDPA on repeated k/v): 211 vs 317 us at 8 tokens, "
               "never faster than the aten flash kernel it replaces (" + _CPU_SOURCE + ")"),
    # ---------------------------------------------------------------- CUDA (initial, from TARGETS.md)
    ("cuda", "rms_norm", "*"): Decision(
        True, "TARGETS.md: Triton kernel aims at >= Inductor's bandwidth (2367-2814 GB/s) and beats its "
              "8x4096 latency; " + _CUDA_TBC),
    ("cuda", "fused_add_rms_norm", "*"): Decision(
        True, "TARGETS.md: one pass over x and residual instead of add + norm; " + _CUDA_TBC),
    ("cuda", "rope", "*"): Decision(
        True, "TARGETS.md: q and k in one launch at >= Inductor's 2318-2833 GB/s; " + _CUDA_TBC),
    ("cuda", "attention", "gqa_expanded"): Decision(
        True, "TARGETS.md: native GQA reads k/v once instead of materialising repeat_interleave copies; "
              + _CUDA_TBC),
    ("cuda", "attention", "native"): Decision(
        False, "no copy to remove: cuDNN/flash SDPA is the bar and the kernel targets 0.9x cuDNN; " + _CUDA_TBC),
}


def decide(device_type: str, op: str, shape_cls: str) -> Decision:
    """The table's entry for (device, op, class), else the op's ``"*"`` entry, else "do not swap"."""
    for key in ((device_type, op, shape_cls), (device_type, op, "*")):
        if key in DECISIONS:
            return DECISIONS[key]
    return Decision(False, f"no measurement for {op} ({shape_cls}) on {device_type}")


def rows_class(rows: int | None) -> str:
    if rows is None:
        return "dynamic"
    return "small" if rows <= SMALL_ROWS else "large"


def shape_class(op: str, *, rows: int | None = None, gqa_expanded: bool = False) -> str:
    if op == "attention":
        return "gqa_expanded" if gqa_expanded else "native"
    return rows_class(rows)
