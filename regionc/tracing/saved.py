"""Saved Dynamo traces: a warm start that runs no Dynamo at all.

``torch.compile(fn, fullgraph=True).aot_compile(example)`` (torch >= 2.10) returns what Dynamo
produced for ``fn`` (its transformed bytecode, its guards and the backend's compiled function)
as an object that can be saved and loaded in another process. regionc's compiled function is a
:class:`~regionc.compiler.program.CompiledProgram`, whose saved form is a recipe over the artifact
store, so a saved trace is small and loading it loads the pieces as any warm start does.
``regionc.compile`` calls a model's (or each block's) forward through a :class:`TraceSet`: the
first call in a process looks the trace up in the store, and traces (then saves) only when
nothing usable is there.

A stale trace must never run. An entry is used only if all of these hold:

- its **key** matches: every environment factor of a piece key (torch build, triton, Python, GPU,
  regionc's piece compiler, the code the passes can insert, Inductor config), the sources that turn a trace into a program
  (blocks/, cudagraph/, tracing/), regionc's options, the function (module and qualname), the
  class of the module it runs on and its parameters' and buffers' names, shapes and dtypes, and each
  argument's type, dtype, device and shape (rank only with ``dynamic=True``);
- torch's own check of the saved system info passes (torch version, GPU);
- every source file Dynamo inlined while tracing still has the content it had then (a changed
  model, block or helper file means a new trace);
- its **guards** pass on the actual arguments and module (parameter shapes and dtypes, grad
  mode, module attributes Dynamo read).

Anything else is a miss: regionc traces again, with one log line saying why. Graph breaks cannot
be saved (the AOT path traces with ``fullgraph=True``); such a model is compiled the ordinary way.
Once a whole call has run on a function's traces (``warm``), a later call that none fits and whose code
Dynamo refuses to trace in one graph (HF's ``output_hidden_states=True`` collects each layer's output
through a context variable Dynamo refuses inside a nested region) runs eagerly, as does every later call
of its kind, with one warning: the traces keep serving the calls they fit, and regionc.compile does not
give up its block tracing for the whole model over one kind of call. Where Dynamo fails in its own
machinery instead (:func:`_refused`), the block tracing is at fault, not the call: a whole-forward trace
raises, and regionc.compile runs the call eagerly and takes its next block tracing for later calls, which
would otherwise all run eagerly (every new resolution of a diffusers transformer, say).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import io
import logging
import pickle
import re
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from regionc.blocks.signature import PLAIN_VALUES, signature
from regionc.cache import open_store
from regionc.compiler import background
from regionc.compiler.inductor import start_compile_workers
from regionc.config import Config
from regionc.logs import log_once
from regionc.report import Report, first_line, last_report, new_report

log = logging.getLogger("regionc")

#: Saved traces per key: a function whose guards depend on more than the key (a per-layer
#: constant read by the block, say) gets several, tried in order.
MAX_TRACES_PER_KEY = 8
#: restarts of Dynamo's analysis one trace may take (its frame loop's limit)
MAX_RESTARTS = 100


def traces_can_be_saved() -> bool:
    """Whether this torch can save a Dynamo trace (``aot_compile`` and ``load_compiled_function``)."""
    try:
        from torch._dynamo.aot_compile import AOTCompiledFunction  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.compiler, "load_compiled_function")


class TraceSet:
    """The saved traces of one function (a model's, or a block class's, forward), shared by its modules."""

    def __init__(self, fn: Callable[..., Any], strategy: str, config: Config, options: dict[str, Any] | None,
                 dynamic: bool | None):
        self.fn = fn
        self.strategy = strategy  # regionc.compile's block_tracing: the same function traces differently
        self.config = config
        self.compile_args = {"backend": "regionc", "options": options, "dynamic": dynamic}
        self.dynamic = dynamic
        self.entries: list[_Entry] = []
        #: set by ``regionc.compile`` once a call of the whole model has run on these traces: only then may
        #: ``skip_guard_eval_unsafe`` skip them (a block class's first trace is not yet its layers' only one)
        self.warm = False
        self.ordinary: Callable[..., Any] | None = None  # torch.compile(fn), once a trace could not be saved
        self.untraceable: set[str] = set()  # kinds of call (_call_kind) that failed to trace once warm
        self.external = _hidden_functions(fn)  # saved by name, handed back from this process on load

    def __call__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.ordinary is not None:
            return self.ordinary(module, *args, **kwargs)
        entry = self.fitting(module, args, kwargs)
        if entry is not None:
            return entry.fn(module, *args, **kwargs)
        if stance() == "force_eager":  # read here, off the path of a call a trace fits (fitting reads it too)
            return self.fn(module, *args, **kwargs)
        if self.untraceable and _call_kind(args, kwargs) in self.untraceable:
            return self.fn(module, *args, **kwargs)
        try:
            entry = self._find_or_trace(module, args, kwargs)
        except _RunEagerly:
            return self.fn(module, *args, **kwargs)
        except _Untraceable as exc:
            log.warning("regionc: %s: a call none of its traces fits cannot be traced in one graph under "
                        "block_tracing=%s (%s); calls like it (these argument types and flags) run eagerly",
                        _name(self.fn), self.strategy, exc)
            self.untraceable.add(_call_kind(args, kwargs))
            return self.fn(module, *args, **kwargs)
        except _NotSaveable as exc:
            log.warning("regionc: %s cannot be traced for saving (%s); compiling it the ordinary way, "
                        "without a saved trace", _name(self.fn), exc)
            self.ordinary = torch.compile(self.fn, **self.compile_args)
            return self.ordinary(module, *args, **kwargs)
        self.entries.append(entry)
        return entry.fn(module, *args, **kwargs)

    def fitting(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> _Entry | None:
        """The trace this call runs: the first one held whose guards pass. None when none does (the call
        loads or traces another) or when the function compiles the ordinary way (Dynamo checks its guards)."""
        if self.ordinary is not None or stance() == "force_eager":
            return None
        if len(self.entries) == 1 and self.warm and _skipping_guards():  # no guard tells traces apart: none checked
            return self.entries[0] if self.entries[0]._changed_global() is None else None
        for entry in self.entries:
            if entry.check(module, args, kwargs):
                return entry
        return None

    # ------------------------------------------------------------------ lookup
    def _find_or_trace(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> _Entry:
        with background.compile_lock():  # a background compile must not run beside this trace or load
            return self._find_or_trace_locked(module, args, kwargs)

    def _find_or_trace_locked(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> _Entry:
        start = time.perf_counter()
        store = open_store(self.config)
        base = self._key(module, args, kwargs)
        key_s = time.perf_counter() - start
        entry = self._find_or_trace_under(store, base, module, args, kwargs)
        entry.report.phases["trace_key"] += key_s
        return entry

    def _find_or_trace_under(self, store, base: dict, module: torch.nn.Module, args: tuple, kwargs: dict) -> _Entry:
        for n in range(MAX_TRACES_PER_KEY):
            key = _variant(base, n)
            with store.lock(key):
                payload = store.load(key)
                entry = self._load(store, key, payload) if payload is not None else None
                if entry is None:  # nothing (usable) saved under this key: trace into it
                    return self._trace_and_save(store, key, base, module, args, kwargs)
            if entry.check(module, args, kwargs):
                log.info("regionc: %s: loaded saved trace %s instead of tracing; %s",
                         _name(self.fn), key[:12], entry.report.summary())
                return entry
            log.info("regionc: %s: saved trace %s does not fit this call (%s); trying the next",
                     _name(self.fn), key[:12], entry.why_not(module, args, kwargs))
        log.warning("regionc: %s: %d saved traces under one key and none fits; tracing without saving",
                    _name(self.fn), MAX_TRACES_PER_KEY)
        return self._trace(module, args, kwargs)

    def _load(self, store, key: str, payload: bytes) -> _Entry | None:
        from regionc.compiler.program import loading_programs

        report = new_report()
        report.trace_source = "saved trace " + key[:12]
        try:
            with report.phase("total"), loading_programs(self.config, report):
                trace, modules, read = pickle.loads(payload)
                scope = {**self.fn.__globals__, **{name: importlib.import_module(m) for name, m in modules.items()}}
                with _guards_context():
                    compiled = torch.compiler.load_compiled_function(io.BytesIO(trace), f_globals=scope,
                                                                     external_data=self.external)
                stale = _changed_sources(compiled)
        except Exception as exc:  # noqa: BLE001 - any failure to load means: trace again
            reason = first_line(exc)
            log.warning("regionc: %s: saved trace %s cannot be used (%s); tracing again", _name(self.fn), key[:12], reason)
            report.fallbacks.append(f"saved trace {key[:12]} not loaded: {reason}")
            store.remove(key)
            return None
        if stale:
            log.info("regionc: %s: saved trace %s is stale, %s changed since it was traced; tracing again",
                     _name(self.fn), key[:12], ", ".join(stale))
            report.fallbacks.append(f"saved trace {key[:12]} stale: {', '.join(stale)} changed")
            store.remove(key)
            return None
        return _Entry(compiled, report, self.fn.__globals__, read)

    def _trace_and_save(self, store, key: str, base: dict, module, args, kwargs) -> _Entry:
        from torch._dynamo.aot_compile import AOTCompiledFunction

        entry = self._trace(module, args, kwargs)
        with entry.report.phase("trace_save"):
            try:
                trace = AOTCompiledFunction.serialize(entry.compiled, external_data=self.external).serialized_data
                payload = pickle.dumps((trace, self._installed_modules(entry.compiled), entry.read))
            except Exception as exc:  # noqa: BLE001 - not saveable: it still runs in this process
                reason = first_line(exc)
                log.warning("regionc: %s: trace not saved (%s)", _name(self.fn), reason)
                entry.report.trace_source = f"traced, not saved: {reason}"
                return entry
            if store.save(key, payload, {"saved_trace": base}):
                log.info("regionc: %s: saved its trace as %s (%d bytes)", _name(self.fn), key[:12], len(payload))
                entry.report.trace_source = "traced, saved as " + key[:12]
        return entry

    def _installed_modules(self, compiled) -> dict[str, str]:
        """Modules Dynamo's bytecode loads under names it installed in the traced function's globals
        (``___module_collections_<id>_c0``): the loading process imports them under the same names."""
        env = compiled._artifacts.runtime_env
        return {name: value.__name__ for name in env.external_refs
                if name not in env.used_globals and isinstance(value := self.fn.__globals__.get(name), types.ModuleType)}

    def _trace(self, module, args, kwargs) -> _Entry:
        if stance() == "fail_on_recompile":
            why = self.entries[0].why_not(module, args, kwargs) if self.entries else "no trace held or saved fits"
            raise RecompileRefused(f"regionc: {_name(self.fn)} would be traced while torch.compile's stance is "
                                   f"'fail_on_recompile' ({why})")
        if stance() == "eager_on_recompile":
            log_once((self, "eager"), "regionc: %s runs eagerly where it would be traced: torch.compile's stance is "
                     "'eager_on_recompile'", _name(self.fn))
            raise _RunEagerly
        if _device_of(module, args, kwargs).type == "cuda":
            start_compile_workers()  # a trace is followed by a compile: let the workers start meanwhile
        # torch 2.11 hands out ``aot_compile`` only under this flag (later versions dropped it)
        flag = {"enable_aot_compile": True} if hasattr(torch._dynamo.config, "enable_aot_compile") else {}
        read: list[tuple[str, tuple[str, ...], Any]] = []  # the globals' values the trace read, filled by _saveable
        saveable = functools.partial(_saveable, self.fn.__code__.co_freevars, read)
        options = {**(self.compile_args["options"] or {}), "guard_filter_fn": saveable}
        with torch._dynamo.config.patch(**flag):
            compiled = torch.compile(self.fn, fullgraph=True, **{**self.compile_args, "options": options})
        try:
            with _builtins_recorded():
                traced = _aot_compile(compiled, ((module, *args), kwargs))
        except Exception as exc:  # a guard that cannot be saved, a graph break, a region Dynamo refuses
            if self.config.strict:
                raise
            if self.strategy == "full" or _only_saving_failed(exc):
                raise _NotSaveable(first_line(exc)) from exc
            if self.warm and (self.strategy == "per_block" or _refused(exc)):  # Dynamo ran nothing: run it eagerly
                raise _Untraceable(first_line(exc)) from exc
            raise  # regionc.compile tries its next block tracing (regionc/tracing/compile.py)
        return _Entry(traced, last_report(), self.fn.__globals__, read)

    # ------------------------------------------------------------------ key
    def _key(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
        from regionc.cache.key import _PACKAGE_DIR, _cached_sources_hash, canonical, environment_factors
        from regionc.passes.version import passes_version

        device = _device_of(module, args, kwargs)
        return canonical({
            "function": f"{self.fn.__module__}.{self.fn.__qualname__}",
            "block_tracing": self.strategy,
            "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
            "module_state": _state_signature(module),
            "module_code": signature(module),  # what guards do not cover: hooks, function-local classes
            "args": [_describe(a, self.dynamic) for a in args],
            "kwargs": {k: _describe(v, self.dynamic) for k, v in sorted(kwargs.items())},
            "grad_enabled": torch.is_grad_enabled(),
            "options": self.config.trace_options(),
            "dynamic": self.dynamic,
            "env": environment_factors(device),
            "passes_version": passes_version(self.config, device.type),  # the piece keys the program names hold it
            # how a trace becomes a program (split, graphs, this file): a new regionc re-traces
            "program_sources": _cached_sources_hash(str(_PACKAGE_DIR), ("blocks", "cudagraph", "tracing")),
        })


#: a global, or a public attribute of one (``G['config'].FLAG``): the global's name, then the attributes
_GLOBAL_ATTRIBUTE = re.compile(r"G\['([^']+)'\]((?:\.[A-Za-z]\w*)*)")


def _saveable(closure: tuple[str, ...], read: list[tuple[str, tuple[str, ...], Any]], entries) -> list[bool]:
    """Dynamo's guards that a saved trace keeps: all but those on Python globals (``read`` gets the values
    of globals they check, which :class:`_Entry` checks itself) and those whose check is an object's
    identity (``ID_MATCH`` and the guards built on it, ``DICT_VERSION``), which mean nothing in another
    process, except on a tensor (:func:`_baked_tensor`). ``aot_compile``'s own filter drops the same kinds,
    but only by a guard's own type, so a guard that merely derives from ``ID_MATCH`` stops the save (every
    transformers and diffusers model has some). What the dropped guards protected is covered by the
    trace's key (the function, the module's class and the code it holds, the arguments' types), by the
    guards kept (the values read) and by the globals' values.
    Guards on the function's own closure variables (``closure``: a decorator's wrapped ``func``) are
    dropped too: a loaded trace is handed no closure to check them against, and the key and the
    source check cover the function they name. So are the checks that a module's ``_compiled_call_impl``
    is unset (whether it was ``.compile()``d, which changes how its forward runs, not what it computes):
    torch's pickling of a module drops that attribute, so a loaded trace rebuilt the check as a class
    attribute lookup, and a module checked that way is never skipped while its ``__dict__`` is unchanged
    (Dynamo's dict-tag matching); see :func:`_guards_context` for what the two changes save."""
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    local = _through_local_classes(entries)
    keep = [_baked_tensor(e) or not (
                e.is_global or e.guard_type in unsupported or unsupported & set(e.derived_guard_types or ())
                or re.split(r"[.\[]", e.name.removeprefix("L['"), maxsplit=1)[0].rstrip("']") in closure
                or (local is not None and local.search(e.name)) or e.name.endswith("._compiled_call_impl"))
            for e in entries]
    read.extend(value for e in entries if (value := _global_value(e)) is not None)
    return keep


def _global_value(entry) -> tuple[str, tuple[str, ...], Any] | None:
    """(global, attributes, value) when ``entry`` checks the value of a global the trace read (a
    module-level flag or scale, a branch taken on it) or of a public attribute of one (a flag in another
    module); else None. Dynamo's guard on it is not kept: a loaded trace would check it against a copy of
    the module's globals made at load, or (through a module) not at all; :class:`_Entry` checks the value
    itself, on the live module, in every process (where the value may come from the environment)."""
    match = _GLOBAL_ATTRIBUTE.fullmatch(entry.name)
    if match is None or entry.guard_type != "CONSTANT_MATCH" or not entry.has_value \
            or not isinstance(entry.value, PLAIN_VALUES):
        return None
    return match[1], tuple(match[2].split(".")[1:]), entry.value


def _baked_tensor(entry) -> bool:
    """Whether ``entry`` checks a tensor's identity: Dynamo put that tensor in the graph as a constant
    (weights under Inductor's ``freezing``, a tensor marked static with ``guard=True``), so the trace
    computes with this one tensor, and must not run for another module (another layer's weights) or
    in another process. The guard is kept, so the trace is not saved: :meth:`TraceSet._trace` falls
    back, with a log line."""
    return entry.has_value and isinstance(entry.value, torch.Tensor) and "ID_MATCH" in (
        entry.guard_type, *(entry.derived_guard_types or ()))


def _through_local_classes(entries) -> re.Pattern | None:
    """A pattern matching the guard sources that read an object of a class defined inside a function
    (or anything reached through one), or ``None`` if no guard does.

    torch cannot save a guard on such an object: its class has no importable name (``aot_compile``
    refuses the save), and a loaded trace would rebuild the guards below it on a plain ``nn.Module``
    put in its place (the load fails). The ``kernels`` package, which transformers >= 5.25 requires,
    wraps functions such as each attention's RoPE in modules of such classes. What those guards
    protected is in the trace's key (the module's ``signature``: the classes of the modules it holds
    and the forwards set on them) and in the source check (the code they run)."""
    sources = {e.name for e in entries if e.has_value and _is_local(e.value)}
    if not sources:
        return None
    return re.compile("|".join(f"{re.escape(s)}(?!\\w)" for s in sorted(sources)))


def _is_local(value: Any) -> bool:
    cls = value if isinstance(value, type) else type(value)
    return "<locals>" in getattr(cls, "__qualname__", "")


@contextlib.contextmanager
def _builtins_recorded() -> Iterator[None]:
    """Record the builtins a trace's bytecode reads (``type``, in transformers' forwards) with its globals.

    Before torch 2.12 (pytorch/pytorch#177558) a trace recorded only the module globals it read, and
    ``aot_compile`` refused one whose bytecode names a builtin ("Missing required external
    references: ['type']"). While this tracer runs, the recorded globals get what 2.12 adds: each
    builtin named, and of a ``__builtins_dict__`` reference the entries that pickle. A torch that
    records them itself (it has ``_safe_builtins_dict``) is left alone.
    """
    import builtins

    from torch._dynamo import convert_frame

    if hasattr(convert_frame, "_safe_builtins_dict"):
        yield
        return
    capture = convert_frame.GraphCaptureOutput
    original = capture.get_runtime_env

    def get_runtime_env(self):
        env = original(self)
        for ref in env.external_refs:
            if ref in env.used_globals:
                continue
            if ref.startswith("__builtins_dict__") and ref in self.f_globals:
                env.used_globals[ref] = {name: value for name, value in self.f_globals[ref].items()
                                         if _pickles(value)}
            elif hasattr(builtins, ref):
                env.used_globals[ref] = getattr(builtins, ref)
        return env

    capture.get_runtime_env = get_runtime_env
    try:
        yield
    finally:
        capture.get_runtime_env = original


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - whatever pickle raises, the value is left out
        return False
    return True


@contextlib.contextmanager
def _guards_context() -> Iterator[None]:
    """What loading a trace's guards needs to give the guards a fresh trace has.

    - A throwaway tracing context: a guard source read through an import (``ImportSource``) installs a
      guard when it is unpickled, which needs a context; what it installs there is discarded (the
      loaded guard manager carries the guards that are checked).
    - Parameters seen as parameters. Dynamo leaves parameters out of its check that no two tensor
      inputs alias (``skip_no_tensor_aliasing_guards_on_parameters``), telling them by their exact
      type; a loaded guard sees each tensor as a fake one standing for its original type, so every
      parameter of a module class not in ``torch.nn`` (an HF RMSNorm's weight) got the check, and an
      aliasing guard also keeps its module from being skipped while its attributes are unchanged
      (Dynamo's dict-tag matching). With :func:`_saveable`'s ``_compiled_call_impl`` rule, a 32-layer HF
      Llama's loaded guards check in about 47 µs a call on a 2-core CPU machine, as the same guards
      traced in the process do, against 67-69 before.

    The exact-type test is Dynamo's module function, replaced for the load only; loads run under
    Dynamo's compile lock (``_find_or_trace``), so no trace beside them sees the replacement.
    """
    from torch._dynamo import guards
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensor

    exact_type = guards.istype

    def istype(value, types) -> bool:
        if types is torch.nn.Parameter and isinstance(value, FakeTensor):
            return value.pytype is torch.nn.Parameter
        return exact_type(value, types)

    guards.istype = istype
    try:
        with tracing(TracingContext(None)):
            yield
    finally:
        guards.istype = exact_type


def _hidden_functions(fn: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """The functions in ``fn``'s closures (followed down) that pickle cannot find by their name.

    A decorated method is the common case: transformers wraps ``LlamaModel.forward`` (deprecated
    keyword names, output capture), so the module attribute is the wrapper and the original,
    which carries the same qualified name, is reachable only through the wrapper's closure. A saved
    trace refers to such functions by their path from ``fn`` instead, and the loading process,
    which has the same ``fn`` (the trace's key and source check say so), supplies them.
    """
    found: dict[str, Callable[..., Any]] = {}

    def walk(function, path: str, depth: int) -> None:
        for i, cell in enumerate(getattr(function, "__closure__", None) or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if inspect.isfunction(value) and depth < 8:
                if "<locals>" not in value.__qualname__ and not _found_by_name(value):
                    found[f"{path}.{i}"] = value
                walk(value, f"{path}.{i}", depth + 1)

    walk(fn, "closure", 0)
    return found


def _found_by_name(function) -> bool:
    import sys

    value: Any = sys.modules.get(function.__module__)
    for part in function.__qualname__.split("."):
        value = getattr(value, part, None)
    return value is function


def _aot_compile(compiled, example: tuple):
    """``compiled.aot_compile(example)``, again for as long as Dynamo asks to restart its analysis and
    learned something from the attempt.

    When a Python float cannot become a tensor, Dynamo notes its symbol (``TensorifyState``) and raises
    ``TensorifyScalarRestartAnalysis``; ``torch.compile``'s frame loop catches that and traces again
    (up to 100 times), the AOT path raises it to the caller. A model may take several restarts, more
    where earlier compiles of the process left symbols behind (HF Mixtral's decode step took three after
    a Gemma 2 had compiled): a restart that noted no new symbol would fail the same way again, so that
    one is raised.
    """
    from torch._dynamo.exc import TensorifyScalarRestartAnalysis
    from torch._dynamo.symbolic_convert import TensorifyState

    for _ in range(MAX_RESTARTS):
        known = set(TensorifyState.force_specializations)
        try:
            return compiled.aot_compile(example)
        except TensorifyScalarRestartAnalysis:
            if TensorifyState.force_specializations <= known:
                raise
    return compiled.aot_compile(example)


#: Dynamo's functions that pickle a trace's guard state, which holds the model: what an object raises
#: there is raised as it is (a parametrized module's RuntimeError, as in Wav2Vec2's weight-normed
#: positional convolution; an unpicklable object's TypeError)
_GUARD_PICKLING = frozenset({"serialize_guards", "pickle_guards_state"})


def _only_saving_failed(exc: BaseException) -> bool:
    """Whether Dynamo traced the function but could not package the result (an ordinary compile of it
    works), rather than failed to trace it: a packaging or pickling error, or any error raised while
    Dynamo pickled the guards' state."""
    from torch._dynamo.exc import PackageError

    if isinstance(exc, (PackageError, pickle.PicklingError)):
        return True
    return any(frame.name in _GUARD_PICKLING for frame in traceback.extract_tb(exc.__traceback__))


def stance() -> str:
    """``torch.compiler.set_stance``'s stance. Saved traces run outside Dynamo's frame evaluation, which
    applies it to everything else, so they honour it here: ``force_eager`` runs the function as it is,
    ``eager_on_recompile`` runs it as it is where it would be traced, ``fail_on_recompile`` raises there."""
    return getattr(_dynamo_stance(), "stance", "default")


def _skipping_guards() -> bool:
    """``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``: only the guards that tell a function's
    traces apart are checked (with one trace, none: a decode step then skips its guard check). Torch asks
    for it after a warm-up; a server may set it first. Skipping from the first call never checked a second
    layer against the trace its first layer made, so a trace that specializes per layer (HF's ``layer_idx``)
    ran every layer as layer 0 (writing one cache layer 32 times a step): :attr:`TraceSet.warm` keeps the
    guards on until a call of the whole model has run."""
    return bool(getattr(_dynamo_stance(), "skip_guard_eval_unsafe", False))


def _dynamo_stance():
    """Dynamo's record of the stance (private: read where present)."""
    return getattr(torch._dynamo.eval_frame, "_stance", None)


class RecompileRefused(RuntimeError):
    """A trace was needed under ``torch.compiler.set_stance("fail_on_recompile")``."""


class _RunEagerly(Exception):
    """A trace was needed under ``torch.compiler.set_stance("eager_on_recompile")``."""


class _NotSaveable(Exception):
    """Dynamo could not trace the function in one graph with saveable guards (the message says why)."""


class _Untraceable(Exception):
    """Dynamo could not trace a call of a warm function in one graph (the message says why)."""


def _refused(exc: Exception) -> bool:
    """Whether Dynamo refused the call's code (a graph break, a region it will not capture), which another
    block tracing would meet too, rather than failing in its own machinery: torch 2.13's reuse of a nested
    region's trace raised ``KeyError: 4*s98`` at a diffusers transformer's second resolution, and an
    ``AssertionError`` where the forward rescales LoRA layers (diffusers' ``joint_attention_kwargs``), where
    per-block frames compile."""
    return isinstance(exc, (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UncapturedHigherOrderOpError))


_MISSING = object()
#: global values a trace's bytecode may read as inputs (a float Dynamo made symbolic after it changed, a
#: module-level tensor)
_INPUTS = (bool, int, float, complex, torch.Tensor)


def _layout(value: Any) -> tuple:
    """A global input's type, and a tensor's dtype, shape, stride and device: what its code assumes."""
    if isinstance(value, torch.Tensor):
        return (torch.Tensor, value.dtype, tuple(value.shape), value.stride(), value.device, value.requires_grad)
    return (type(value),)


class _Entry:
    """One saved (or just traced) trace; calls it after checking its guards.

    The values of globals the trace read (``read``, from :func:`_global_value`) are checked here, on
    ``live`` (the traced function's module globals), before Dynamo's guards. Its bytecode reads globals
    from a copy of ``live`` made when it was built or loaded; the numbers and tensors it reads as inputs
    (a global float Dynamo made symbolic, a module-level tensor) are copied in again before each check, so
    it never runs on old ones, and a tensor of another dtype, shape, stride or device does not fit (Dynamo's
    check of it is not kept in a saved trace)."""

    def __init__(self, compiled, report: Report, live: dict[str, Any], read: list[tuple[str, tuple[str, ...], Any]]):
        self.compiled = compiled
        self.report = report
        self.fn = compiled.fn  # Dynamo's bytecode, calling the compiled program
        artifacts = compiled._artifacts
        self.guards = artifacts.guard_manager
        self.binding = Binding(artifacts.signature, artifacts.runtime_env.bytecode.co_freevars,
                               artifacts.runtime_env.closure)
        self.live, self.read = live, read
        self.scope = self.fn.__globals__  # a copy of ``live``, made when the trace was built or loaded
        used = artifacts.runtime_env.used_globals  # the values the trace read, as it read them
        self.inputs = {name: _layout(used[name]) for name in used
                       if self.scope is not live and isinstance(used[name], _INPUTS)}

    def f_locals(self, module, args: tuple, kwargs: dict) -> dict[str, Any]:
        values = self.binding(module, args, kwargs)
        return values if values is not None else self.compiled.prepare_f_locals(module, *args, **kwargs)

    def check(self, module, args: tuple, kwargs: dict) -> bool:
        return self._changed_global() is None and self.guards.check(self.f_locals(module, args, kwargs))

    def why_not(self, module, args: tuple, kwargs: dict) -> str:
        changed = self._changed_global()
        if changed is not None:
            return changed
        return str(self.guards.check_verbose(self.f_locals(module, args, kwargs))).splitlines()[0]

    def _changed_global(self) -> str | None:
        """Which global the trace read has another value (or a tensor another layout) now, in words, or
        None; the inputs it reads are copied in meanwhile."""
        for name, layout in self.inputs.items():
            now = self.live.get(name, _MISSING)
            if _layout(now) != layout:
                return f"global {name} is {_layout(now)}, traced with {layout}"
            self.scope[name] = now
        for name, attributes, value in self.read:
            now = self.live.get(name, _MISSING)
            for attribute in attributes:
                now = getattr(now, attribute, _MISSING)
            if type(now) is not type(value) or now != value:
                return f"{'.'.join((name, *attributes))} is {now!r}, traced with {value!r}"
        return None


class Binding:
    """The frame locals a trace's guards read for a call (torch's ``prepare_f_locals``: the free
    variables' cells, then the arguments bound to the signature, defaults applied), without
    ``inspect``'s general binding: a decode step checks the guards on every call, and HF's forward
    (``self, *args, **kwargs`` under a decorator) cost 5-10 µs a call that way. Signatures with
    positional-only or keyword-only parameters, and calls that do not bind (which ``inspect`` turns
    into the right error), give None: the caller binds the general way."""

    def __init__(self, signature: inspect.Signature, freevars: tuple[str, ...] = (), closure: tuple | None = None):
        kinds = inspect.Parameter
        parameters = signature.parameters.values()
        self.cells = list(zip(freevars, closure or ()))
        self.positional = [p.name for p in parameters if p.kind is kinds.POSITIONAL_OR_KEYWORD]
        self.index = {name: i for i, name in enumerate(self.positional)}
        self.star = next((p.name for p in parameters if p.kind is kinds.VAR_POSITIONAL), None)
        self.star_star = next((p.name for p in parameters if p.kind is kinds.VAR_KEYWORD), None)
        self.defaults = {p.name: p.default for p in parameters if p.default is not kinds.empty}
        self.simple = all(p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
                          for p in parameters)

    def __call__(self, module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if not self.simple:
            return None
        given = (module, *args)
        count = len(self.positional)
        if len(given) > count and self.star is None:
            return None
        values = {name: cell.cell_contents for name, cell in self.cells}
        values.update(self.defaults)
        values.update(zip(self.positional, given))
        extra = {}
        for name, value in kwargs.items():
            if name in self.index:
                if self.index[name] < len(given):
                    return None  # given twice
                values[name] = value
            elif self.star_star is not None:
                extra[name] = value
            else:
                return None
        if any(name not in values for name in self.positional):
            return None  # a required argument is missing
        if self.star is not None:
            values[self.star] = tuple(given[count:])
        if self.star_star is not None:
            values[self.star_star] = extra
        return values


def _changed_sources(compiled) -> list[str]:
    """Modules whose source differs from the one Dynamo traced (a saved trace of them is stale)."""
    from torch._dynamo.package import _hash_source

    changed = []
    for source in compiled.source_info().inlined_sources:
        try:
            module = importlib.import_module(source.module)
            current = inspect.getsource(module)
        except Exception:  # noqa: BLE001 - gone or unreadable: stale
            changed.append(source.module)
            continue
        if _hash_source(current) != _hash_source(source.content):
            changed.append(source.module)
    return sorted(set(changed))


def _describe(value: Any, dynamic: bool | None) -> Any:
    if isinstance(value, torch.Tensor):
        shape = value.dim() if dynamic else list(value.shape)
        return {"tensor": str(value.dtype), "device": value.device.type, "shape": shape,
                "requires_grad": value.requires_grad}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {type(value).__name__: value}
    if isinstance(value, (list, tuple)):
        return [_describe(v, dynamic) for v in value]
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}"}


def _call_kind(args: tuple, kwargs: dict) -> str:
    """A call as :attr:`TraceSet.untraceable` remembers it: its arguments' types, dtypes, devices and
    ranks and its plain values (flags), not its sizes: whether Dynamo can trace a call in one graph
    depends on the code it takes, so a call of another length is not traced (and refused) again."""
    return repr(([_describe(a, True) for a in args], {k: _describe(v, True) for k, v in sorted(kwargs.items())}))


def _device_of(module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.device:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _state_signature(module: torch.nn.Module) -> str:
    """Hash of the module's parameter and buffer names, shapes and dtypes: a model of another depth or
    width never tries (and fails the guards of) this one's trace."""
    described = [(name, tuple(t.shape), str(t.dtype)) for name, t in (*module.named_parameters(), *module.named_buffers())]
    return hashlib.sha256(repr(described).encode()).hexdigest()


def _variant(base: dict, n: int) -> str:
    from regionc.cache.key import canonical_json

    return hashlib.sha256(canonical_json({"saved_trace": base, "variant": n}).encode()).hexdigest()


def _name(fn) -> str:
    return getattr(fn, "__qualname__", repr(fn))
