"""Where ``kernel_choice="auto"`` swaps a matched pattern for a regionc kernel.

A pass only swaps a pattern where the regionc kernel is at least as fast as what it replaces
(Inductor's generated code, or the SDPA backend) on that device and shape class. Each entry
says why, and where the number comes from; ``kernel_choice="always"`` ignores the table.

Keys: ``(device type, op, shape class)``; ``"*"`` as the shape class covers every class of
that op on that device. A missing entry means "do not swap" (unmeasured = not proven faster).

Shape classes (see :func:`shape_class`):

* norms and RoPE: ``"small"`` (≤ 64 rows/tokens: decode-like, latency bound), ``"large"``
  (> 64: prefill-like, bandwidth bound), ``"dynamic"`` (a symbolic size without a hint).
* skinny_linear: ``"group, rows<=16"``, ``"single, rows<=16"``, ``"group, rows<=64"``, ``"single,
  rows<=64"``: several weights that read one input (q/k/v, gate/up) or one alone, and the static
  row count (a decode step's tokens; the pass takes no more than ``ops.skinny_linear.MAX_ROWS``); a
  group past 16 rows whose input is wider than :data:`WIDE_INPUT` is ``"group, rows<=64, wide"``.
* skinny_swiglu: ``"rows<=16"``, ``"rows<=64"``, with ``", wide"`` when its input is wider than
  :data:`WIDE_INPUT` (each program reads the whole of K, so a wider input is a longer stream per program)
  and ``", narrow"`` when its column blocks are fewer than ``ops.skinny_linear.SWIGLU_MIN_PROGRAMS`` (a
  gate/up group the pass can fold into one call).
* attention and decode_attention: ``"gqa_expanded"`` (the pass removed a ``repeat_interleave``/``repeat_kv`` copy of k
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
_CUDA_SOURCE = ("benchmarks/results/kernels/h100-2026-11-25-decision-table.log, H100 80GB HBM3, torch 2.11.0+cu130, triton 3.6.0, "
                "2026-11-24")

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
    # ---------------------------------------------------------------- CUDA (measured, see _CUDA_SOURCE)
    # do_bench medians per call, regionc vs Inductor's code for the same pattern compiled alone
    # ("+graph": inside a CUDA graph, host cost removed). Inside a model Inductor also fuses the
    # pattern with its neighbours, which a swap gives up, so a tie is not a reason to swap.
    ("cuda", "rms_norm", "small"): Decision(
        False, "tie inside CUDA graphs: 1.9 vs 2.0 us at 8x4096 (eager calls 6.0 vs 31.5 us); a swap would "
               "lose Inductor's fusion with the residual add (" + _CUDA_SOURCE + ")"),
    ("cuda", "rms_norm", "large"): Decision(
        False, "tie: 28.9 vs 28.5 us at 4096x4096, 95.1 vs 95.4 us at 16384x4096, 358.3 vs 357.9 us at "
               "32768x8192 (" + _CUDA_SOURCE + ")"),
    ("cuda", "fused_add_rms_norm", "*"): Decision(
        False, "same kernel as rms_norm, which ties Inductor (" + _CUDA_SOURCE + ")"),
    ("cuda", "rope", "small"): Decision(
        False, "tie inside CUDA graphs: 1.7 vs 2.8 us at 8 tokens, both launch-bound (" + _CUDA_SOURCE + ")"),
    ("cuda", "rope", "large"): Decision(
        False, "faster alone (36.4 vs 114.5 us at 1x4096 tokens [B,H,S,D], 120.1 vs 134.1 us at 16x1024 "
               "[B,S,H,D]) but not measured inside a model, where it costs Inductor's fusion and adds a "
               "launch per layer; unproven end to end = not swapped (" + _CUDA_SOURCE + ")"),
    ("cuda", "attention", "*"): Decision(
        False, "slower in the model: on an H100 the op's Hopper kernel is 0.96-1.05x cuDNN alone, yet the "
               "32-layer demo prefill took 20.67 ms with the swap against 17.37 ms without: a Python launch "
               "(~40-55 us host a call) where aten's SDPA launches from C++, with no CUDA graph at prefill "
               "(benchmarks/results/attention/h100-2026-11-25.json, prefill/h100-2026-11-25-attention-swap.json, torch 2.11.0+cu130, "
               "triton 3.6.0, 2026-11-25); elsewhere the Triton kernel is 0.80-0.88x cuDNN"),
    ("cpu", "skinny_linear", "*"): Decision(
        False, "the cpu kernel is torch's linear (what it replaces), one call per weight: nothing to gain"),
    ("cpu", "skinny_swiglu", "*"): Decision(
        False, "the cpu kernel is torch's linears and SiLU (what it replaces): nothing to gain"),
    ("cpu", "decode_attention", "*"): Decision(
        False, "the cpu kernel is the fp32 torch reference; the aten flash kernel it would replace is never "
               "slower on cpu (no measurement shows otherwise)"),
    # ---------------------------------------------------------------- CUDA decode (measured end to end)
    # HF LlamaModel 32 x 2048 (32/8 heads, d64) on a StaticCache and the demo decoder's static cache, one
    # H200, torch 2.11.0+cu130, triton 3.6.0, bf16, CUDA graphs on; ms per step, regionc with SDPA on repeat_kv
    # copies vs with the op on the un-expanded cache (benchmarks/results/hf_llama/h200-2026-12-02-decode.json,
    # benchmarks/results/decode/h200-2026-12-02-kv-cache.json); since the op reads the bool mask behind
    # cuDNN's conversion it skips the excluded keys: 3.01 / 3.61 / 3.83 ms for the three 4096-slot rows
    # (benchmarks/results/hf_llama/h200-2026-12-02-decode-cudnn-mask.json).
    ("cuda", "decode_attention", "gqa_expanded"): Decision(
        True, "faster end to end: HF Llama batch 8 cache 4096: 7.84 -> 3.67 ms at position 512, 7.83 -> 3.67 at "
              "3900; batch 32 cache 4096: 22.15 -> 6.81; batch 1 cache 256: 3.10 -> 3.04; demo decoder batch 8: "
              "3.13 -> 2.87, batch 32: 4.29 -> 3.02 (H200, 2026-12-02)"),
    # ---------------------------------------------------------------- CUDA skinny linears (bf16, one H200)
    # benchmarks/results/skinny_linear/h200-2026-12-03-split-k.json: device µs per call in a CUDA graph over rotated
    # weight copies (HBM reads), the op with K split (its partials summed later, in the consumer's kernel) vs
    # cuBLAS per weight (what Inductor emits). End to end, HF Llama 32 x 2048 on a StaticCache, ms per step,
    # benchmarks/results/hf_llama/h200-2026-12-03-decode-split-k.json: regionc_backend (groups at <= 16 rows
    # swapped) vs regionc_backend_swap (every linear swapped); H200, torch 2.11.0+cu130, triton 3.6.0, 2026-12-03.
    ("cuda", "skinny_linear", "group, rows<=16"): Decision(
        True, "faster: one launch reads every weight of one input; at 8 rows q/k/v of a 2048-wide GQA layer 6.2 "
              "vs 17.5 us (6.5 on packed weights), gate/up 19.7 vs 22.3 (4096-wide: 15.8 vs 29.1, 59.9 vs 62.2); "
              "HF Llama batch 8: 7.87 ms with reduce-overhead, 2.40 at position 512 with these groups swapped"),
    ("cuda", "skinny_linear", "single, rows<=16"): Decision(
        True, "faster with K split over more programs: at 8 rows o 2048x2048 5.0 vs 6.1 us, down 8192->2048 10.9 "
              "vs 13.8 (4096-wide 11.0 vs 13.3, 31.5 vs 33.2); HF Llama with the singles swapped too: batch 8 "
              "2.401 -> 2.332 ms at position 512, 2.893 -> 2.824 at 3900, batch 1 2.213 -> 2.144"),
    ("cuda", "skinny_linear", "single, rows<=64"): Decision(
        True, "faster at 32 rows: o 5.5 vs 6.2 us, down 11.8 vs 14.4 (4096-wide 11.7 vs 13.9, 33.1 vs 34.4)"),
    # At 17-64 rows, end to end on an H100 (torch 2.11.0+cu130, triton 3.6.0, 2026-12-06), ms per step with the
    # table's swaps and with every decode op swapped but the SwiGLU call (benchmarks/common.py's
    # decode_ops_swapped: the q/k/v and gate/up groups are the difference):
    # benchmarks/results/hf_llama/h100-2026-12-06-decode-b32-swap.json,
    # benchmarks/results/decode/h100-2026-12-06-kv-cache-b8-b32.json.
    ("cuda", "skinny_linear", "group, rows<=64"): Decision(
        True, "faster at 32 rows with an input up to 2048 wide: q/k/v 7.0 vs 17.7 us, gate/up 21.2 vs 23.1 "
              "(H200); end to end, HF Llama 32 x 2048 batch 32 3.404 -> 2.929 ms (H100; 3.202 -> 2.747 on an "
              "H200), the demo decoder batch 32 2.903 -> 2.425 through regionc.compile, 3.029 -> 2.652 through "
              "the backend"),
    ("cuda", "skinny_linear", "group, rows<=64, wide"): Decision(
        False, "slower at 32 rows on a 4096-wide input: gate/up 89.0 vs 64.9 us on an H200 (its input, re-read "
               "by every 32-column program, is as many bytes as the weights); not measured end to end"),
    # benchmarks/results/skinny_linear/h200-2026-12-03-swiglu.json (as above); end to end, one H200 host, one
    # process each, HF Llama 32 x 2048 batch 8 at position 512 through backend="regionc" with the swap on and off
    # (benchmarks/results/decode_profile/h200-2026-12-03-hf-llama-b8-swiglu{,-off}.log), 2026-12-03.
    ("cuda", "skinny_swiglu", "rows<=16"): Decision(
        True, "faster: gate/up and the SwiGLU product in one launch, 19.3 us at 8 rows for a 2048-wide layer "
              "(8192 columns each) against 19.7 for the skinny_linear group alone, whose product then takes a "
              "pointwise launch of its own; HF Llama batch 8: 358 kernels and a 2.035 ms GPU span a step "
              "against 390 and 2.112 ms"),
    # End to end on one H200 (torch 2.11.0+cu130, triton 3.6.0, 2026-12-06), 16 layers of an 8B-class model on a
    # StaticCache of 4096, batch 8, ms per step at positions 512 / 3900, backend="regionc" with the SwiGLU call
    # (the row above) against every decode op swapped (decode_ops_swapped: gate/up through the skinny_linear
    # group and the product a pointwise kernel, the only difference at 8 rows); alone, at 4096 wide, the two
    # were a tie (59.3 against 59.2 us, skinny_linear/h200-2026-12-03-swiglu.json):
    # benchmarks/results/hf_llama/h200-2026-12-06-decode-llama3-8b-shape-16l.json, -qwen25-7b-shape-16l.json.
    ("cuda", "skinny_swiglu", "rows<=16, wide"): Decision(
        False, "slower on an input wider than 2048: Llama-3-8B widths (4096 -> 2 x 14336) 2.597 against 2.439 ms "
               "at position 512 (3.113 / 3.101 at 3900), Qwen2.5-7B widths (3584 -> 2 x 18944) 2.848 / 3.031 "
               "against 2.613 / 2.797 (H200): a program streams 2 x 32 columns over the whole of K, where the "
               "group splits K"),
    ("cuda", "skinny_swiglu", "rows<=64"): Decision(
        False, "a tie at 32 rows: 22.3 vs 23.3 us at 2048 wide and 66.0 vs 65.2 at 4096 wide against cuBLAS, "
               "before its pointwise launch for the product; not measured end to end (the gate/up group row "
               "above is)"),
    ("cuda", "decode_attention", "native"): Decision(
        False, "no repeat_kv copy to remove (MHA, or SDPA's enable_gqa): SDPA reads the cache once, at 99-103% "
               "of copy bandwidth at long positions against the op's 70-78% (benchmarks/results/decode_attention/"
               "h200-2026-12-02.json)"),
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


#: an input wider than this makes a class of its own for a group of linears past 16 rows (measured faster than
#: cuBLAS at 2048, slower at 4096: the table's two ``group, rows<=64`` rows) and for the SwiGLU call (faster
#: than the group at 2048, slower at 3584 and 4096: its two ``rows<=16`` rows)
WIDE_INPUT = 2048


def shape_class(op: str, *, rows: int | None = None, gqa_expanded: bool = False, weights: int = 1,
                narrow: bool = False, width: int = 0) -> str:
    if op in ("attention", "decode_attention"):
        return "gqa_expanded" if gqa_expanded else "native"
    if op == "skinny_linear":
        kind = "group" if weights > 1 else "single"
        if rows <= 16:
            return f"{kind}, rows<=16"
        return f"{kind}, rows<=64" + (", wide" if kind == "group" and width > WIDE_INPUT else "")
    if op == "skinny_swiglu":
        return ("rows<=16" if rows <= 16 else "rows<=64") + (", wide" if width > WIDE_INPUT else "") \
            + (", narrow" if narrow else "")
    return rows_class(rows)
