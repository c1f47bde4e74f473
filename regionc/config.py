"""regionc's options: one dataclass, filled from ``options={...}`` and ``REGIONC_*`` env vars.

Precedence is ``options`` > environment > default, so a serving launcher can set
defaults for a fleet and a model can still override them. Every field is checked
when the config is built: an unknown name or a bad value raises
:class:`RegioncConfigError` naming it and listing what is valid, instead of being
ignored (a silently ignored typo in a compiler option is a production incident).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "REGIONC_"

#: ``REGIONC_*`` variables that are not options: read by regionc/ops (the C++ extension switch, the
#: programmatic-dependent-launch switch) and by setup.py (the build). Any other unknown one is a typo.
OTHER_ENV_VARS = ("REGIONC_NO_EXTENSION", "REGIONC_NO_PDL", "REGIONC_NATIVE")

#: ``REGIONC_NO_PDL=1`` turns programmatic dependent launch off: for regionc's decode kernels
#: (regionc/ops/pdl.py) and as the Inductor default of decode pieces (regionc/compiler/inductor.py).
#: Read here so that the compiler knows it without importing (and registering) the ops.
PDL = os.environ.get("REGIONC_NO_PDL") != "1"

log = logging.getLogger("regionc")

#: Fusion passes regionc knows; ``options={"passes": {...}}`` toggles them one by one.
PASS_NAMES = ("rms_norm", "fused_add_rms_norm", "rope", "attention", "decode_attention", "skinny_linear",
              "skinny_swiglu")

KERNEL_CHOICES = ("auto", "always")

#: How ``regionc.compile`` keeps Dynamo from tracing every block (see regionc/tracing/compile.py).
BLOCK_TRACING_CHOICES = ("auto", "nested_region", "per_block", "full")

#: How the pieces of a graph are captured (see regionc/cudagraph/piecewise.py).
CUDAGRAPH_MODES = ("full", "piecewise")

_CHOICES = {"kernel_choice": KERNEL_CHOICES, "block_tracing": BLOCK_TRACING_CHOICES,
            "cudagraph_mode": CUDAGRAPH_MODES}

DEFAULT_CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class RegioncConfigError(ValueError):
    """A bad option: the message names it and lists the valid choices."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a user can set. Field docs are the option reference (README lists them)."""

    #: Root of the on-disk cache (regionc artifacts, and Inductor's/Triton's caches under it).
    cache_dir: str = ""
    #: Read and write the persistent artifact cache. Off: compile in memory only.
    cache: bool = True
    #: Size cap of the artifact store; least recently used entries are evicted past it.
    cache_max_bytes: int = 10 * 1024**3
    #: Seconds a process waits for another one compiling the same piece before compiling itself.
    lock_timeout_s: float = 600.0
    #: Shared tier behind the local cache, e.g. "redis://host:6379/0" (see regionc/cache/remote.py):
    #: lookups go local → remote → compile, and what this process compiles is published there.
    remote_cache: str = ""
    #: Fewest identical children of a stack that make them repeated blocks.
    min_instances: int = 2
    #: Move each block's closing residual add into the piece that reads it (the next block, or
    #: the glue after the last one), where Inductor fuses it with the next norm as a full graph does.
    fuse_block_boundaries: bool = True
    #: Piecewise CUDA graphs: None = on when inputs are on CUDA, True/False forces it.
    cudagraphs: bool | None = None
    #: Token/batch sizes captured as CUDA graphs; runtime sizes are padded up to the next one.
    capture_sizes: tuple[int, ...] = DEFAULT_CAPTURE_SIZES
    #: "full": one CUDA graph per shape over all pieces in a row (one launch per forward), each
    #: piece its own graph if that capture fails; "piecewise": a graph per piece from the start.
    cudagraph_mode: str = "full"
    #: Raise when a static input (a weight) moved since its graph was captured, instead of capturing anew.
    cudagraph_check_addresses: bool = False
    #: Fusion passes on/off by name (see PASS_NAMES); missing names keep their default (on).
    passes: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    #: Where passes swap in regionc kernels: "auto" only where the kernel beats what Inductor
    #: emits on that device and shape (decision table); "always" at every match (tests, experiments).
    kernel_choice: str = "auto"
    #: Extra Inductor config patches for every piece (they change generated code: part of the cache key);
    #: they override regionc's piece defaults (``regionc.compiler.inductor.piece_defaults``).
    inductor_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: ``regionc.compile`` only: "nested_region" traces one block and stamps out the rest (torch
    #: >= 2.12), "per_block" compiles each block as its own Dynamo frame (the glue runs eagerly),
    #: "full" traces everything; "auto" takes the first of these the installed torch does well.
    block_tracing: str = "auto"
    #: ``regionc.compile`` only: save each Dynamo trace (bytecode, guards, the split program) in the
    #: cache and load it on the next start instead of tracing (torch >= 2.10; needs ``cache``).
    trace_cache: bool = True
    #: Return from the backend once the graph is split and compile (or load) its pieces in a background
    #: thread; until a piece's code is ready it runs eagerly, so the first output costs the trace plus
    #: one eager forward (regionc/compiler/background.py; not under autocast, which compiles at once).
    background_compile: bool = False
    #: Raise instead of falling back to eager when a piece fails to compile (tests, CI).
    strict: bool = False

    # ------------------------------------------------------------------ derived
    @property
    def cache_root(self) -> Path:
        root = self.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "regionc")
        return Path(root)

    def pass_enabled(self, name: str) -> bool:
        return bool(self.passes.get(name, True))

    def codegen_options(self) -> dict[str, Any]:
        """Options that change generated code; they go into the cache key (others must not)."""
        return {
            "passes": {name: self.pass_enabled(name) for name in PASS_NAMES},
            "kernel_choice": self.kernel_choice,
            "inductor_config": {k: repr(v) for k, v in sorted(self.inductor_config.items())},
        }

    def trace_options(self) -> dict[str, Any]:
        """Options that change what a saved trace's program is (its key); the rest apply at load."""
        return {**self.codegen_options(), "min_instances": self.min_instances,
                "fuse_block_boundaries": self.fuse_block_boundaries, "cudagraphs": self.cudagraphs}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, options: Mapping[str, Any] | None = None, mode: str | None = None,
              environ: Mapping[str, str] | None = None) -> Config:
        """Merge defaults, ``REGIONC_*`` environment variables, ``mode`` and ``options``."""
        environ = os.environ if environ is None else environ
        valid = {f.name: f for f in dataclasses.fields(cls)}
        _warn_unknown_env(environ, valid)
        values: dict[str, Any] = {}
        for name, field in valid.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _parse_env(name, field, raw)
        values = _merged(values, mode_options(mode))
        for name in options or {}:
            if name not in valid:
                raise RegioncConfigError(
                    f"regionc: unknown option {name!r}; valid options: {', '.join(sorted(valid))}")
        values = _merged(values, options or {})
        for name, value in values.items():
            values[name] = _check(name, valid[name], value)
        return cls(**values)


#: ``torch.compile``'s modes, which regionc takes as well
MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def mode_options(mode: str | None) -> dict[str, Any]:
    """What ``mode`` means as regionc options: the Inductor settings torch gives that mode
    (``list_mode_options``: autotuning for both ``max-autotune`` modes) for every piece, and its
    CUDA graphs as regionc's ``cudagraphs``. Torch hands a custom backend the mode's name only, so
    without this ``max-autotune`` would compile exactly as ``default``."""
    if mode not in (None, *MODES):
        raise RegioncConfigError(f"regionc: unsupported mode {mode!r}; valid modes: {', '.join(map(repr, MODES))}")
    if mode in (None, "default"):
        return {}
    from torch._inductor import list_mode_options

    settings = dict(list_mode_options(mode))
    options: dict[str, Any] = {"cudagraphs": True} if settings.pop("triton.cudagraphs", False) else {}
    return {**options, "inductor_config": settings} if settings else options


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s options win over ``base``'s; two ``inductor_config`` mappings merge setting by setting
    (a mode's autotuning and an explicit ``inductor_config`` both apply)."""
    merged = {**base, **over}
    if isinstance(base.get("inductor_config"), Mapping) and isinstance(over.get("inductor_config"), Mapping):
        merged["inductor_config"] = {**base["inductor_config"], **over["inductor_config"]}
    return merged


def with_mode(options: dict[str, Any] | None, mode: str | None) -> dict[str, Any]:
    """``options`` with what ``mode`` means to regionc folded in (explicit options still win), for
    calls that hand both to ``torch.compile``: torch 2.11 refuses a mode and options together."""
    Config.build(options, mode, environ={})  # bad names and values fail here, by name
    return _merged(mode_options(mode), options or {})


_warned_env: set[str] = set()


def _warn_unknown_env(environ: Mapping[str, str], valid: Mapping[str, dataclasses.Field]) -> None:
    """One warning per process for each ``REGIONC_*`` variable regionc does not read: a typo such
    as ``REGIONC_CACHEDIR`` would otherwise leave the option at its default without a word."""
    known = [ENV_PREFIX + name.upper() for name in valid] + list(OTHER_ENV_VARS)
    for var in environ:
        if not var.startswith(ENV_PREFIX) or var in known or var in _warned_env:
            continue
        _warned_env.add(var)
        close = difflib.get_close_matches(var, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(sorted(known))}"
        log.warning("regionc: ignoring unknown environment variable %s; %s", var, hint)


def _parse_env(name: str, field: dataclasses.Field, raw: str) -> Any:
    kind = str(field.type)
    if kind.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        if lowered in ("auto", "none") and "None" in kind:
            return None
        raise RegioncConfigError(f"regionc: {ENV_PREFIX}{name.upper()}={raw!r} is not a boolean (1/0/true/false)")
    if kind.startswith(("Mapping", "tuple")):
        try:
            return json.loads(raw) if raw.lstrip().startswith(("{", "[")) else [int(s) for s in raw.split(",")]
        except ValueError as exc:
            raise RegioncConfigError(f"regionc: {ENV_PREFIX}{name.upper()}={raw!r} is not valid: {exc}") from None
    return raw  # str/int/float: converted and range-checked in _check


def _check(name: str, field: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` to the field's type or raise naming the option."""
    kind = str(field.type)

    def bad(expected: str) -> RegioncConfigError:
        return RegioncConfigError(f"regionc: option {name!r} must be {expected}, got {value!r}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("True or False")
        return value
    if kind == "bool | None":
        if value is not None and not isinstance(value, bool):
            raise bad("True, False or None")
        return value
    if kind == "int":
        number = _parse_number(value, int)
        if number is None or number <= 0:
            raise bad("a positive integer")
        return number
    if kind == "float":
        number = _parse_number(value, float)
        if number is None or not math.isfinite(number) or number <= 0:
            raise bad("a positive finite number")
        return number
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise RegioncConfigError(
                f"regionc: option {name!r} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
        return value
    if name == "remote_cache":
        from regionc.cache.remote import redact, url_problem

        problem = "" if value == "" else "a string" if not isinstance(value, str) else url_problem(value)
        if problem:
            shown = redact(value) if isinstance(value, str) else repr(value)
            raise RegioncConfigError(f"regionc: option 'remote_cache' must be a redis://, rediss:// or unix:// URL "
                                     f"(or empty): {shown}: {problem}")
        return value
    if kind == "str":
        if not isinstance(value, (str, os.PathLike)):
            raise bad("a path string")
        return os.fspath(value)
    if kind.startswith("tuple"):
        if isinstance(value, (str, bytes, Mapping)):  # "16" would read as the sizes 1 and 6
            raise bad("a non-empty list of positive integers")
        try:
            numbers = [_parse_number(v, int) for v in value]
        except TypeError:
            raise bad("a non-empty list of positive integers") from None
        if not numbers or any(n is None or n <= 0 for n in numbers):
            raise bad("a non-empty list of positive integers")
        return tuple(sorted(set(numbers)))
    if name == "passes":
        if not isinstance(value, Mapping):
            raise bad(f"a dict of pass name -> bool (passes: {', '.join(PASS_NAMES)})")
        for pass_name, enabled in value.items():
            if pass_name not in PASS_NAMES:
                raise RegioncConfigError(
                    f"regionc: unknown pass {pass_name!r} in option 'passes'; valid passes: {', '.join(PASS_NAMES)}")
            if not isinstance(enabled, bool):
                raise RegioncConfigError(f"regionc: pass {pass_name!r} must be True or False, got {enabled!r}")
        return dict(value)
    if name == "inductor_config":
        if not isinstance(value, Mapping):
            raise bad("a dict of Inductor config names to values")
        from torch._inductor import config as inductor_config

        settings = inductor_config.get_config_copy()  # every setting by its dotted name ("triton.enable_pdl")
        for key, setting in value.items():
            if key not in settings:
                raise RegioncConfigError(f"regionc: unknown Inductor config {key!r} in option 'inductor_config'")
            if isinstance(settings[key], bool) and not isinstance(setting, bool):  # Inductor takes "no" as on
                raise RegioncConfigError(f"regionc: Inductor config {key!r} in option 'inductor_config' must be "
                                         f"True or False, got {setting!r}")
        if value.get("freezing"):
            raise RegioncConfigError("regionc: option 'inductor_config' cannot turn on 'freezing': a compiled piece "
                                     "takes its weights as inputs (one code serves every layer, each with its own "
                                     "weights), so there is nothing to freeze")
        return dict(value)
    raise AssertionError(f"no check for option {name}")  # a new field needs a check


def _parse_number(value: Any, kind: type) -> int | float | None:
    """``value`` as ``kind``, or None: text (from the environment) is parsed; an int field takes
    only ints (1.5 or inf must not be truncated or overflow later), a float field ints and floats.
    Never a bool."""
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral) or (kind is float and isinstance(value, numbers.Real)):
        return kind(value)
    return None
