"""Cache key of one compiled piece: every factor that changes the generated code, nothing else.

A key is the sha256 of the canonical JSON of a *factors* dict. The factors are stored next to the
entry (readable), so ``regionc cache ls --diff A B`` can say why two entries differ.

What goes in (see :func:`environment_factors`): torch version and build key, triton version, Python
version, machine architecture, device type; on CUDA the GPU name, compute capability and CUDA
version; on the CPU the vector ISA Inductor picks; the process-wide settings that change what
compiled code computes (default dtype, deterministic algorithms, matmul precision, the CPU thread
count); regionc's version and a hash of the *contents* of regionc's piece compiler; a hash of the
portable Inductor config. Plus the piece's structural fingerprint, its input metadata and regionc's
code-generating options, which hold the version of the code regionc's passes can insert on this
device (``PassManager.uuid``: the sources of the passes that may swap a kernel in there, and their
kernels'), so editing a kernel that never runs on a device leaves that device's entries valid.

What never goes in: hostnames, ports, pids, absolute paths, times, cache directories — anything
that differs between two hosts (or two restarts) running the same code would defeat reuse.

``torch`` is imported lazily so ``regionc cache ...`` (the CLI) starts fast.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("regionc.cache")

#: Bump when the meaning of the factors (or the artifact format regionc writes) changes.
KEY_SCHEMA = 1

#: The regionc package directory whose sources are hashed (tests point it elsewhere).
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Sub-packages whose sources change every piece's code: the piece compiler (how standalone_compile
#: is driven). The passes and their kernels enter through the codegen options (see the module doc).
SOURCE_DIRS = ("compiler",)

#: Inductor config entries that never change generated code but may differ per host/process.
_INDUCTOR_IGNORE = re.compile(r"(dir|path|remote_cache\w*|compile_threads|worker_start_method)$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# ---------------------------------------------------------------------------- canonical JSON
def canonical(value: Any) -> Any:
    """``value`` as plain JSON data (dict/list/str/int/float/bool/None), deterministic across runs.

    Knows torch dtypes/devices/sizes, symbolic sizes (``str``), enums, tuples and sets. Anything
    else raises ``TypeError``: a ``repr`` with a memory address in a key would make every process
    miss the cache silently.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    module = type(value).__module__ or ""
    if module.startswith(("torch", "sympy")):
        # torch.dtype, torch.device, torch.Size (tuple, handled above), torch.SymInt, sympy.Expr
        text = str(value)
        if _ADDRESS.search(text):
            raise TypeError(f"regionc: {type(value).__name__} has no stable text form for a cache key: {text!r}")
        return text
    raise TypeError(f"regionc: cannot put a {type(value).__qualname__} into a cache key: {value!r}")


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# ---------------------------------------------------------------------------- environment
def sources_hash(package_dir: Path | None = None, dirs: tuple[str, ...] = SOURCE_DIRS) -> str:
    """sha256 over every ``*.py`` under ``package_dir/<dir>`` for ``dir`` in ``dirs`` (:func:`files_hash`)."""
    package_dir = Path(package_dir or _PACKAGE_DIR)
    files = []
    for sub in dirs:
        base = package_dir / sub
        if base.is_dir():
            files.extend(p for p in base.rglob("*.py") if "__pycache__" not in p.parts and p.is_file())
    return files_hash(package_dir, [path.relative_to(package_dir).as_posix() for path in files])


def files_hash(package_dir: Path, names) -> str:
    """sha256 over the files ``names`` (posix paths relative to ``package_dir``): each relative name and
    its *contents*, sorted by name, so the same checkout at two different paths (or on two hosts)
    hashes the same, and editing any of the files changes it."""
    digest = hashlib.sha256()
    for rel in sorted(names):
        digest.update(rel.encode() + b"\0")
        digest.update((package_dir / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _cached_sources_hash(package_dir: str, dirs: tuple[str, ...]) -> str:
    return sources_hash(Path(package_dir), dirs)


def _jsonable_config_value(value: Any) -> Any:
    if callable(value) and not isinstance(value, type):
        uuid = getattr(value, "uuid", None)
        if callable(uuid):
            try:
                return f"uuid:{uuid()}"
            except Exception:  # noqa: BLE001 - a broken uuid() must not break the key
                pass
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    try:
        return canonical(value)
    except TypeError:
        return _ADDRESS.sub("", repr(value))


def inductor_config_hash() -> str:
    """Hash of Inductor's portable config, minus entries that are paths/dirs/logs/threads."""
    from torch._inductor import config as inductor_config

    try:
        portable = inductor_config.save_config_portable()
    except Exception:  # noqa: BLE001 - older torch or a config without uuid(): fall back
        get_copy = getattr(inductor_config, "get_config_copy", None)
        portable = {k: v for k, v in (get_copy() if get_copy else {}).items() if not k.startswith("_")}
    relevant = {
        key: _jsonable_config_value(value)
        for key, value in portable.items()
        if not _INDUCTOR_IGNORE.search(key)
    }
    # an absolute path as a value is per-host by nature
    relevant = {k: v for k, v in relevant.items() if not (isinstance(v, str) and os.path.isabs(v))}
    return _sha256(canonical_json(relevant))


def _torch_build_key() -> str:
    try:
        from torch._inductor.codecache import torch_key
    except ImportError:
        torch_key = None
    if torch_key is not None:
        try:
            return torch_key().hex()
        except Exception as exc:  # noqa: BLE001
            log.debug("regionc: torch_key() failed (%s); using the torch version and git hash", exc)
    import torch

    return _sha256(f"{torch.__version__}|{getattr(torch.version, 'git_version', '')}")


def _triton_version() -> str:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: not used for codegen then
        return "none"
    return str(getattr(sys.modules["triton"], "__version__", "unknown"))


def _cpu_isa() -> str:
    """The vector extensions this CPU has (ATen's cpuinfo, read in microseconds). Inductor's own pick
    (``pick_vec_isa``) compiles a probe per extension, seconds on a small host before the first key
    (12 s on 2 cores); code built for a host with the same extensions runs here, whatever its compiler
    made of them."""
    import torch

    flags = sorted(name.removeprefix("_is_").removesuffix("_supported") for name in dir(torch.cpu)
                   if name.startswith("_is_") and name.endswith("_supported") and getattr(torch.cpu, name)())
    return ",".join([torch.backends.cpu.get_cpu_capability(), *flags])


def environment_factors(device: torch.device | str) -> dict[str, str]:
    """Everything outside the piece itself that changes the code Inductor generates for it."""
    import torch

    import regionc

    device = torch.device(device)
    factors = {
        "key_schema": str(KEY_SCHEMA),
        "torch_version": torch.__version__,
        "torch_key": _torch_build_key(),
        "triton_version": _triton_version(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "machine": platform.machine(),
        "device_type": device.type,
        "regionc_version": regionc.__version__,
        "regionc_sources": _cached_sources_hash(str(_PACKAGE_DIR), SOURCE_DIRS),
        "inductor_config": inductor_config_hash(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        factors["gpu_name"] = torch.cuda.get_device_name(index)
        factors["gpu_capability"] = f"{major}.{minor}"
        factors["cuda_version"] = str(torch.version.cuda)
        if getattr(torch.version, "hip", None):
            factors["hip_version"] = str(torch.version.hip)
    elif device.type == "cpu":
        factors["cpu_isa"] = _cpu_isa()
    world_size = _world_size()
    if world_size is not None:  # collectives in a piece compile per world size; never the rank
        factors["world_size"] = str(world_size)
    return {**factors, **_numerics(device)}


def _numerics(device: torch.device) -> dict[str, str]:
    """Process-wide settings that change what a piece's code computes (Inductor's own cache keys on them):
    the dtype of a factory call that names none (``torch.ones(n)`` compiled under a float64 default makes
    float64), deterministic algorithms, fp32 matmul precision; on CUDA, reduced-precision reductions; on
    the CPU, the thread count Inductor writes its C++ kernels for, unless a thread count is configured."""
    import torch
    from torch._inductor import config as inductor_config

    factors = {
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic": f"{torch.are_deterministic_algorithms_enabled()},"
                         f"{torch.is_deterministic_algorithms_warn_only_enabled()},"
                         f"{torch.utils.deterministic.fill_uninitialized_memory}",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        matmul = torch.backends.cuda.matmul
        factors["cuda_matmul"] = (f"{getattr(matmul, 'fp32_precision', matmul.allow_tf32)},"
                                  f"{matmul.allow_fp16_reduced_precision_reduction},"
                                  f"{matmul.allow_bf16_reduced_precision_reduction}")
    elif device.type == "cpu" and inductor_config.cpp.threads < 1 and not getattr(inductor_config.cpp,
                                                                                 "dynamic_threads", False):
        factors["cpu_threads"] = str(torch.get_num_threads())
    return factors


def _world_size() -> int | None:
    """The default process group's world size when ``torch.distributed`` is initialized, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_world_size()


def piece_key(fingerprint: str, input_meta: list, codegen_options: dict, env: dict) -> tuple[str, dict]:
    """``(hex key, factors)``; the key is the sha256 of the canonical JSON of ``factors``."""
    factors = canonical({
        "fingerprint": fingerprint,
        "input_meta": list(input_meta),
        "codegen_options": dict(codegen_options),
        "env": dict(env),
    })
    return _sha256(canonical_json(factors)), factors
