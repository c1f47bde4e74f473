"""Small helpers shared by the op modules: op registration with the least per-call host cost,
argument checks that also work on symbolic sizes (inside torch.compile's fake kernels), and
Triton availability."""

from __future__ import annotations

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


_gpu_count: list[int] = []


def needs_device_switch(t: torch.Tensor) -> bool:
    """True when ``t`` is on a CUDA device other than the current one (only possible with 2+ GPUs):
    the launcher then re-enters itself under ``torch.cuda.device(t.device)``. One cached int
    comparison on single-GPU machines."""
    if not _gpu_count:
        _gpu_count.append(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return _gpu_count[0] > 1 and t.get_device() != torch.cuda.current_device()


_sm_counts: dict[int, int] = {}


def sm_count(t: torch.Tensor) -> int:
    """Streaming multiprocessors of ``t``'s GPU (cached); 132 (an H100) for CPU tensors (interpreter)."""
    idx = t.get_device()
    n = _sm_counts.get(idx)
    if n is None:
        n = torch.cuda.get_device_properties(idx).multi_processor_count if idx >= 0 else 132
        _sm_counts[idx] = n
    return n


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# --------------------------------------------------------------------------------------
# registration (see regionc/ops/__init__.py for why this is not torch.library.custom_op)
# --------------------------------------------------------------------------------------

#: the one library fragment every regionc op is defined and implemented in (kept alive here)
LIB = torch.library.Library("regionc", "FRAGMENT")

_after_autograd = torch._C._after_autograd_keyset
_grad_enabled = torch.is_grad_enabled


def forward_only_error(op: str) -> RuntimeError:
    return RuntimeError(
        f"regionc.{op} is forward-only (inference): an input requires grad and grad mode is on. "
        f"Run under torch.no_grad()/torch.inference_mode(), or do not use regionc ops for training."
    )


def check_no_grad(op: str, *tensors) -> None:
    """Raise the forward-only error when grad mode is on and a tensor input requires grad."""
    if _grad_enabled():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise forward_only_error(op)


def define_op(name: str, schema: str, *, cuda, fake) -> None:
    """Define ``regionc::<name><schema>`` and register its kernels directly with the dispatcher.

    * ``cuda``: the CUDA kernel (a plain Python function of the schema's arguments). The
      ``AutogradCUDA`` key is a fallthrough, so a CUDA call is dispatcher → this function, nothing
      else; the function itself raises the forward-only error (``check_no_grad``) when needed.
    * ``fake``: the fake (meta) kernel for torch.compile.
    * the CPU kernel comes from ``regionc._C`` (C++) or from ``register_cpu`` (torch reference).
    * every other device (CPU included) passes a small Python ``Autograd`` kernel that raises the
      forward-only error when grad mode is on and an input requires grad, then redispatches.
    """
    LIB.define(name + schema, tags=(torch.Tag.pt2_compliant_tag,))
    overload = getattr(getattr(torch.ops.regionc, name), "default")

    def autograd_kernel(keyset, *args):
        check_no_grad(name, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return overload.redispatch(keyset & _after_autograd, *args)

    LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    LIB.impl(name, torch.library.fallthrough_kernel, "AutogradCUDA")
    LIB.impl(name, cuda, "CUDA")
    torch.library.register_fake("regionc::" + name, fake, lib=LIB)


def register_cpu(name: str, fn) -> None:
    """Register ``fn`` as the CPU kernel of ``regionc::<name>`` (the torch reference)."""
    LIB.impl(name, fn, "CPU")
