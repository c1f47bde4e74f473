"""Small helpers shared by the op modules: op registration with the least per-call host cost,
argument checks that also work on symbolic sizes (inside torch.compile's fake kernels), the GPU's
properties, and Triton availability."""

from __future__ import annotations

import functools
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


def check_grouped_qkv(op: str, q, k, v, scale, names: tuple[str, str, str], seq: str, kv_heads: str) -> None:
    """Full validation of grouped-query attention's ``q`` [B, Hq, Sq, D], ``k`` and ``v`` [B, Hkv, S, D]
    (Hq a multiple of Hkv) and ``scale``, each message naming the argument as the op calls it
    (``names``, ``seq`` for S, ``kv_heads`` for Hkv's tensors); works on symbolic sizes."""
    qn, kn, vn = names
    for name, t in zip(names, (q, k, v)):
        check_tensor(t, name, op)
        check_float_dtype(t, name, op)
        check(t.dim() == 4, f"regionc.{op}: {name} must be 4-D [B, H, S, D], got shape {tuple(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"regionc.{op}: {qn}, {kn}, {vn} must share a dtype, got {qn} {q.dtype}, {kn} {k.dtype}, "
                        f"{vn} {v.dtype}")
    if scale is not None and not isinstance(scale, (float, int)):
        raise TypeError(f"regionc.{op}: scale must be a float or None, got {type(scale).__name__}")
    check(k.shape[0] == q.shape[0], f"regionc.{op}: {kn} batch {k.shape[0]} != {qn} batch {q.shape[0]}")
    check(k.shape[3] == q.shape[3], f"regionc.{op}: {kn} head_dim {k.shape[3]} != {qn} head_dim {q.shape[3]}")
    for i, what in enumerate(("batch", "heads", seq, "head_dim")):
        check(v.shape[i] == k.shape[i], f"regionc.{op}: {vn} {what} {v.shape[i]} != {kn} {what} {k.shape[i]}")
    check(k.shape[1] > 0, f"regionc.{op}: {kn} has 0 heads")
    check(q.shape[1] % k.shape[1] == 0,
          f"regionc.{op}: {qn} heads {q.shape[1]} must be a multiple of {kv_heads} heads {k.shape[1]} (Hq % Hkv == 0)")


def grouped_qkv_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """:func:`check_grouped_qkv`'s tensor checks on the happy path of real tensors: plain attribute
    comparisons, no formatting (it runs on every call)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    qs, ks = q.shape, k.shape
    dev = q.get_device()
    return (q.dtype in FLOAT_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype and v.shape == ks
            and ks[0] == qs[0] and ks[3] == qs[3] and ks[1] > 0 and qs[1] % ks[1] == 0
            and k.get_device() == dev and v.get_device() == dev)


def kernel_failed(op: str, kernel: str, fallback: str, exc: BaseException) -> str:
    """After ``kernel`` failed to compile or launch: one warning that ``fallback`` runs from now on;
    returns the reason ``kernel`` stays off in this process."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    log.warning("regionc.%s: the %s kernel failed (%s: %s); using the %s kernel from now on",
                op, kernel, type(exc).__name__, first, fallback)
    return f"disabled after an error in this process: {type(exc).__name__}: {first}"


_gpu_count: list[int] = []


def needs_device_switch(t: torch.Tensor) -> bool:
    """True when ``t`` is on a CUDA device other than the current one (only possible with 2+ GPUs):
    the launcher then re-enters itself under ``torch.cuda.device(t.device)``. One cached int
    comparison on single-GPU machines."""
    if not _gpu_count:
        _gpu_count.append(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return _gpu_count[0] > 1 and t.get_device() != torch.cuda.current_device()


def unit_stride_last(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors, each copied only if its last dim is not contiguous (what the kernels index by)."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


@functools.cache
def device_properties(index: int):
    """``torch.cuda.get_device_properties(index)``, read once per GPU: launchers size their grids
    from it on every call, and the properties of a device do not change."""
    return torch.cuda.get_device_properties(index)


def capability(index: int) -> tuple[int, int]:
    """The compute capability ``(major, minor)`` of GPU ``index``."""
    props = device_properties(index)
    return props.major, props.minor


def sm_count(t: torch.Tensor) -> int:
    """Streaming multiprocessors of ``t``'s GPU; 132 (an H100) for CPU tensors (interpreter)."""
    idx = t.get_device()
    return device_properties(idx).multi_processor_count if idx >= 0 else 132


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
    """Raise the forward-only error when grad mode is on and a tensor input (or a tensor in a list
    input, ``Tensor[]``) requires grad."""
    if _grad_enabled():
        for t in tensors:
            if isinstance(t, (list, tuple)):
                check_no_grad(op, *t)
            elif isinstance(t, torch.Tensor) and t.requires_grad:
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


# --------------------------------------------------------------------------------------
# cached launches: a repeat call launches the kernel Triton compiled for it before, without the
# JIT's per-call work (binding and specialising every argument, building the cache key, launch
# metadata and hook objects). See ``CompiledLaunch``; the Hopper attention kernel uses it.
# --------------------------------------------------------------------------------------

#: tests set this under TRITON_INTERPRET=1, where a launch returns no compiled kernel: cache entries
#: then replay through the interpreted kernel, so the cached path's argument plumbing is exercised
EMULATE_COMPILED = False

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def cuda_stream(device_index: int) -> int:
    """The current CUDA stream of a device as the integer handle Triton's launcher takes (what the
    JIT passes itself); 0 for CPU tensors (interpreter)."""
    return _raw_stream(device_index) if device_index >= 0 else 0


def _knobs_runtime():
    try:
        from triton import knobs

        return knobs.runtime
    except Exception:  # pragma: no cover - triton without knobs (older than 3.3)
        return None


_RUNTIME_KNOBS = _knobs_runtime() if HAS_TRITON else None


def launch_hooks_active() -> bool:
    """True when a Triton launch enter/exit hook is installed (profilers such as proton): launches
    must then go through the JIT, which builds the metadata the hooks receive. Triton 3.6 keeps
    the hooks as a ``HookChain`` (empty ``calls`` = none installed), other versions as a callable
    or None."""
    rk = _RUNTIME_KNOBS
    if rk is None:
        return False
    h = rk.launch_enter_hook
    if h is not None and getattr(h, "calls", True):
        return True
    h = rk.launch_exit_hook
    return h is not None and bool(getattr(h, "calls", True))


class CompiledLaunch:
    """A compiled Triton kernel plus everything a launch needs but the per-call arguments.

    ``ck.run(grid0, grid1, grid2, stream, ck.function, ck.packed_metadata, launch_metadata,
    enter_hook, exit_hook, *args)`` is the launch the JIT itself performs (triton 3.6 and 3.9,
    ``JITFunction.run``), with ``args`` every kernel parameter in signature order, constexprs
    included. Callers pass the very tuple they gave ``kernel[grid](*args)`` on the first call,
    so the order cannot drift; ``None`` metadata and hooks are what the launcher expects when
    no hook is installed (checked per call with ``launch_hooks_active``)."""

    __slots__ = ("run", "function", "meta", "grid", "extra")

    def __init__(self, run, function, meta, grid, extra=None):
        self.run, self.function, self.meta, self.grid, self.extra = run, function, meta, grid, extra

    @classmethod
    def make(cls, kernel, compiled, grid, num_warps: int, extra=None):
        """From what ``kernel[grid](...)`` returned; None when it is not a compiled kernel (async
        compile future, interpreter) unless ``EMULATE_COMPILED`` (tests)."""
        if compiled is not None and hasattr(compiled, "packed_metadata") and hasattr(compiled, "function"):
            run = compiled.run  # triton 3.6: a property that loads the module first
            if compiled.function is None:
                return None
            return cls(run, compiled.function, compiled.packed_metadata, grid, extra)
        if EMULATE_COMPILED:
            def run(g0, g1, g2, stream, function, meta, launch_metadata, enter, exit_, *args):
                kernel[(g0, g1, g2)](*args, num_warps=num_warps)

            return cls(run, None, None, grid, extra)
        return None


class LaunchCache(dict):
    """key -> CompiledLaunch, cleared when it holds ``limit`` entries (keys carry exact shapes,
    so a long-running server with ever-new shapes must not grow it without bound)."""

    def __init__(self, limit: int = 1024):
        super().__init__()
        self.limit = limit

    def put(self, key, value) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
