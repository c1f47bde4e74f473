"""Compile Triton and Gluon kernels for an H100 (sm_90) on a machine without a GPU.

Triton's JIT asks its active driver for the target, device and stream; ``FakeSm90Driver`` answers
for an sm_90 GPU with CPU tensors, so ``kernel.warmup(...)`` runs the whole compiler (through
ptxas) and a launch path can be timed with the launcher stubbed out. Used by
compile_hopper_sm90.py (the CPU tests that compile the Hopper attention kernel) and by the kernel
benchmarks' host-cost measurement (benchmarks/kernels/_common.py).
"""

from __future__ import annotations

import contextlib

import torch


class FakeSm90Driver:
    """Enough of a Triton driver for ``JITFunction.run``/``warmup`` to bind, specialise and
    compile on CPU tensors: an sm_90 target, device 0, stream 0."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def sm90_target():
    """Within the block, Triton compiles for sm_90 whatever machine this is."""
    from triton.runtime import driver

    previous = driver._active  # None until first use; reset_active() would build a real driver
    driver.set_active(FakeSm90Driver())
    try:
        yield
    finally:
        driver.set_active(previous)
