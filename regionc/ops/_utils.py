"""Small helpers shared by the op modules: argument checks that also work on
symbolic sizes (inside torch.compile's fake kernels), and Triton availability."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("regionc")

try:  # triton is optional (CPU-only machines, macOS)
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAS_TRITON = False

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_logged_once: set[str] = set()


def log_once(key: str, msg: str, *args, level: int = logging.INFO) -> None:
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, msg, *args)


def check(cond, msg: str, exc: type[Exception] = ValueError) -> None:
    """Raise ``exc(msg)`` when ``cond`` is false.

    A symbolic condition (``SymBool`` from a fake kernel under torch.compile) goes through
    ``torch._check`` instead: decided statically when it can be, otherwise it becomes a
    runtime assert rather than a guard that would specialise the graph.
    """
    if isinstance(cond, torch.SymBool):
        torch._check(cond, lambda: msg)
    elif not cond:
        raise exc(msg)


def check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"regionc.{op}: {name} must be a Tensor, got {type(t).__name__}")


def check_float_dtype(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"regionc.{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devs = {n: t.device for n, t in tensors.items()}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            raise ValueError(f"regionc.{op}: all inputs must be on one device, got {devs} ({n})")


def cuda_guard(t: torch.Tensor):
    """Make ``t``'s device current for the Triton launch (no-op when it already is)."""
    if t.device.index is None or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def forbid_autograd(custom_op, op: str) -> None:
    """Register a ``setup_context``/``backward`` pair that raises a clear error in the forward
    as soon as an input requires grad under grad mode (these ops are forward-only)."""

    def setup_context(ctx, inputs, output):
        raise RuntimeError(
            f"regionc.{op} is forward-only (inference): an input requires grad and grad mode is on. "
            f"Run under torch.no_grad()/torch.inference_mode(), or do not use regionc ops for training."
        )

    def backward(ctx, *grads):  # never reached: setup_context raised
        raise RuntimeError(f"regionc.{op} has no backward")

    custom_op.register_autograd(backward, setup_context=setup_context)
