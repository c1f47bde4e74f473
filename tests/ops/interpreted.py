"""What the interpreter scripts (``interpret_*.py``) share: they run regionc's Triton launchers on tiny CPU
tensors under TRITON_INTERPRET=1, in subprocesses started by test_triton_interpret.py (the variable must be
set before triton is imported), print one line per case and exit non-zero on a failure.

Known interpreter limitations (triton 3.9): tl.dot on bfloat16 inputs returns garbage on the CPU, so the
kernels that multiply with tl.dot are checked in fp16/fp32 here and in bf16 by the GPU tests; the
interpreter also truncates fp32->bf16 casts (the GPU rounds to nearest even), so bf16 results are compared
with a tolerance, never bit-exactly.
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

#: absolute tolerance of the tl.dot kernels against float64 references
ATOL = {torch.float32: 1e-4, torch.float16: 3e-3}
gen = torch.Generator().manual_seed(0)
#: names of the failed cases
failures: list[str] = []


def finish() -> None:
    """Exit non-zero naming the failed cases, or print the line the test looks for."""
    if failures:
        print(f"{len(failures)} FAILED: {failures}")
        sys.exit(1)
    print("all interpreter checks passed")
