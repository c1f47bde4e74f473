"""One CUDA graph per input shape over a module's whole forward: compiled blocks and eager glue together.

``regionc.compile`` on torch 2.11 compiles each block as its own Dynamo frame (``per_block``); the
code between the blocks (embedding, final norm, head) is plain Python. A graph per block would
leave that glue, and a launch per block, on the host of every decode step: 4.4 ms against 3.2 ms
for ``backend="regionc"``'s one graph over all pieces (32-layer demo decoder, H100,
``benchmarks/results/decode/h100-2026-11-25.json``). Capturing the forward as a whole (the way
vLLM and SGLang capture their model runners) gives one launch per step instead. A trace of the
whole forward (nested regions, or the full trace an HF decoder falls back to) is graphed the same
way: its guards still choose the graph, and a replay skips Dynamo's gathering of every weight as an
argument and the compiled program's per-call work, 0.10–0.15 ms of the host's 0.22–0.33 ms before an
8-row HF Llama step's launch on an H200
(``benchmarks/results/decode_profile/h200-2026-12-04-hf-llama-b8-host-split.json``).

A replay runs no Python, so the forward's own checks are skipped. What keeps it correct:

- tensor arguments are copied into the graph's input buffers; each argument's shape, dtype and
  device, every other argument's value, the keyword names, grad mode, inference mode, where autocast
  is on and to which dtype, and the module's ``training`` flag choose the graph (a new combination warms up, then captures);
- with ``trace_of`` (``regionc.compile``'s saved traces of the whole forward), the trace whose
  Dynamo guards the call passes chooses the graph too: what Dynamo would trace again for (a module
  attribute the forward reads, a LoRA scale, a swapped submodule's class) gets another graph, never
  a stale replay, and a call no trace fits yet runs the forward (which traces one). A call that
  runs rather than replays runs that trace (its ``fn(module, *args, **kwargs)``), so its guards are
  checked once a call, graphs off included;
- weights reassigned (``module.weight = ...``, a submodule swapped: anything that registers a
  parameter, buffer or submodule, seen by torch's global registration hooks at no cost per call) or
  moved (``p.data = ...``, a CPU-offload round trip: each call checks the weights' addresses, torch's
  C++ check, as its CUDA graph trees do) drop the graphs, which are captured anew over the new tensors
  (one log line; after ``RECAPTURES`` times in a row without paying, graphs stop, one warning), or, with
  ``cudagraph_check_addresses``, raise :class:`~regionc.cudagraph.runner.CudaGraphAddressError`;
- a call that autograd records (grad mode on, and a parameter or a tensor argument requires grad)
  runs without a graph (one log line): a replay would hand back tensors whose backward graph
  belongs to the capture. So does a call while the forward's compiled code may still change
  (``settling``: background compiles in flight), so that no graph keeps code about to be replaced;
- a forward that writes in place to one of its tensor arguments is not graphed (one log line), since
  a replay would lose the write; nor is one whose result (a tensor, nested tuples/lists/dicts, a
  dataclass or a Hugging Face ``ModelOutput``) holds anything but tensors, None and the call's own
  argument objects (an HF cache passed in is handed back as is), since a replay returns what capture saw;
- a forward that changes Python state while its graph is captured is not graphed either, and the
  graph is dropped (one log line naming the attribute): a replay runs no Python, so the change would
  not happen again, and what the forward computes from that state would stay as captured. This is
  how HF caches keep their lengths: a sliding-window ``StaticCache`` layer counts tokens in a Python
  int (``cumulative_length_int``), a ``DynamicCache`` layer assigns a longer tensor on every step.
  The state watched is every scalar, and every tensor's address and shape, reachable from the
  non-tensor arguments (a cache object and its layers) and the scalars and plain tensor attributes
  of the module's submodules. A change at a key's warm-up only (a cache's lazy initialisation on its
  first call) is allowed: the capture that follows shows whether the forward is settled;
- tensors the non-tensor arguments hold (a static cache's keys and values) are read and written where
  they were at capture: a caller that assigns other tensors between calls, as beam search's
  ``reorder_cache`` does on every step, has the forward's graphs captured anew (one log line; after
  ``RECAPTURES`` times in a row without paying, graphs stop for the forward, one warning), never
  replayed over the old tensors. What is checked per call is that each holder on the way (the cache,
  its list of layers, a layer) still holds the same object, about 130 identity checks for a 32-layer
  HF cache;
- a compiled piece handed a tensor off the graph's device inside this capture fails it (the forward then
  runs without its graph, one warning): Dynamo hands a Python float it traces as a tensor (a LoRA scale
  set between calls) as a CPU 0-d tensor the compiled code reads on the host, which a replay would keep
  at its captured value;
- Python state the forward reads but does not change (other than the above), changed by the caller
  between calls, is frozen into the graph at capture, as in every model-runner CUDA graph: such a
  forward should not be compiled with graphs (``cudagraphs=False``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from regionc.blocks.fingerprint import autocast_state
from regionc.config import Config
from regionc.cudagraph.runner import (
    PAYING_REPLAYS,
    CudaGraphAddressError,
    GraphPool,
    PieceGraphRunner,
    Recaptures,
    at_addresses,
    should_use_cudagraphs,
)
from regionc.cudagraph.sizes import as_output_list
from regionc.logs import log_once
from regionc.report import new_report

log = logging.getLogger("regionc")

class ModuleGraphs:
    """``module``'s ``forward`` under one CUDA graph per input key; plain ``forward`` off CUDA.

    ``forward`` may run compiled code that captures CUDA graphs of its own (``regionc.compile``'s
    whole-forward trace): inside this capture it runs its pieces as they are (the capture records
    them), and where this forward is not graphed it uses its own graphs as before."""

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any], config: Config, *, backend=None,
                 settling: Callable[[], bool] = lambda: False, trace_of: Callable[..., Any] | None = None):
        self.module = module
        self.forward = forward
        self.config = config
        self.settling = settling
        self.trace_of = trace_of
        self._backend = backend  # tests pass a fake
        self.runner: PieceGraphRunner | None = None
        self.report = None
        #: the module's parameters and buffers, and their addresses, when the graphs were captured
        self._statics: list[torch.Tensor] = []
        self._addresses: list[int] = []
        self._indices: list[int] = []
        self._changed: str | None = None  # what the last run of the forward changed (see _run_forward)
        self._settled = True  # False from a call made while settling until the call after it
        self._registrations = 0  # _registrations[0] when the addresses were taken
        #: per set of holder arguments (by identity): the path from them to each tensor they held when a
        #: graph was captured (:func:`held_tensors`)
        self._held: dict[tuple[int, ...], list[tuple]] = {}
        self._recaptures = Recaptures()
        self._log_key = object()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.runner is None:
            # a fake backend (tests) graphs CPU tensors too
            if self._backend is None and not should_use_cudagraphs(self.config, [*args, *kwargs.values()]):
                return self.forward(*args, **kwargs)
            self._start()
        if self.settling():
            log_once((self._log_key, "settling"), "regionc: %s.forward runs without its CUDA graph while "
                     "background compiles run (a graph would keep the code they replace)", type(self.module).__name__)
            self._settled = False
            return self.forward(*args, **kwargs)
        if not self._settled:  # the compiles just finished: their code's first run must not be a capture
            self._settled = True
            return self.forward(*args, **kwargs)
        if torch.is_grad_enabled() and self._records_autograd(args, kwargs):
            log_once((self._log_key, "grad"), "regionc: %s.forward runs without its CUDA graph while autograd "
                     "records it (grad mode on, parameters or inputs requiring grad): a replay would not build "
                     "the backward graph; call it under torch.no_grad() or inference_mode()",
                     type(self.module).__name__)
            return self.forward(*args, **kwargs)
        trace = None
        if self.trace_of is not None:
            trace = self.trace_of(*args, **kwargs)
            if trace is None:  # no trace's guards pass yet: the forward loads or traces one
                return self.forward(*args, **kwargs)
        if _registrations[0] != self._registrations or not at_addresses(self._statics, self._addresses, self._indices):
            self._weights_moved()
        context = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                   autocast_state(), self.module.training, trace)
        values = (*args, *kwargs.values())
        holders = tuple(id(v) for v in values if not isinstance(v, _LEAVES))
        held = self._held.get(holders) if holders else None
        if held is not None and (moved := moved_tensor(held)) is not None:
            self._reassigned(moved)
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        versions = [t._version for t in tensors]
        captures, replays = self.runner.captures, self.runner.replays
        with self.runner.pool.forward():
            out = self.runner(context, tuple(kwargs), len(args), *values)
        if self.runner.replays > replays:  # a replay ran no Python: it wrote no argument and made no output
            return out
        if self.runner.capturable:  # an eager run, a warm-up or a capture: what it did decides whether a replay may
            if self.runner.captures > captures and self._changed:
                self.runner.disable(f"the forward changed {self._changed} while its graph was captured; a replay "
                                    "runs no Python, so it would not change it again", drop=True)
            else:
                self._refuse_what_a_replay_would_break(tensors, versions, values, out)
                if self.runner.captures > captures and holders:
                    self._held[holders] = held_tensors(_labels(len(args), kwargs), values)
        return out

    def __reduce__(self):
        # Dynamo pickles the traced model, its forward among its attributes, into a saved trace's guard
        # state; this process's graphs must not go with it, and no guard reads a module's forward
        return (type(None), ())

    def _records_autograd(self, args: tuple, kwargs: dict) -> bool:
        return any(v.requires_grad for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)) or \
            any(p.requires_grad for p in self.module.parameters())

    def _run_forward(self, context: tuple, names: tuple[str, ...], positional: int, *values: Any) -> Any:
        """The forward, run by the runner's warm-up and capture (never by a replay), through the trace the
        call's guards chose (``context[-1]``) if any: notes in ``_changed`` the first piece of Python state
        it changed."""
        args, kwargs = values[:positional], dict(zip(names, values[positional:]))
        trace = context[-1]
        forward = self.forward if trace is None else functools.partial(trace.fn, self.module)
        self._changed = None
        if self.runner is None or not self.runner.capturable:  # graphs are off: nothing to watch
            return forward(*args, **kwargs)
        labels = _labels(positional, names)
        before = python_state(self.module, labels, values)
        out = forward(*args, **kwargs)
        self._changed = first_change(before, python_state(self.module, labels, values))
        return out

    def _start(self) -> None:
        if self.report is None:
            self.report = new_report()
            self.report.trace_source = f"{type(self.module).__name__}.forward under one CUDA graph per input shape"
        pool = GraphPool(self.config, self.report, backend=self._backend, name="module forward")
        self.runner = PieceGraphRunner(
            self._run_forward, name=f"{type(self.module).__name__}.forward", pool=pool, config=self.config,
            report=self.report, static_input_indices=(), is_last=True)
        self.report.note_cudagraphs(mode="module forward")
        _watch_registrations()
        self._registrations = _registrations[0]
        self._keep_addresses(*self._weights())
        self._held.clear()

    def _weights(self) -> tuple[list[torch.Tensor], list[int]]:
        """The module's parameters and buffers, and where each one's storage is."""
        statics = [*self.module.parameters(), *self.module.buffers()]
        return statics, [t.data_ptr() for t in statics]

    def _keep_addresses(self, statics: list[torch.Tensor], addresses: list[int]) -> None:
        self._statics, self._addresses, self._indices = statics, addresses, list(range(len(statics)))

    def _weights_moved(self) -> None:
        """Something registered a parameter, buffer or submodule, or a weight's storage moved, since the
        addresses were taken: if this module's tensors are elsewhere now, its graphs read the old ones, so
        they go and are captured anew (a forward graphs are off for stays off: it reassigns its tensors
        itself)."""
        self._registrations = _registrations[0]
        statics, addresses = self._weights()
        if addresses == self._addresses or not self.runner.capturable:
            self._keep_addresses(statics, addresses)
            return
        if self.config.cudagraph_check_addresses:
            raise CudaGraphAddressError(
                f"regionc: a parameter or buffer of {type(self.module).__name__} moved since its CUDA graphs "
                "were captured; weights and buffers must stay in place (update them with copy_())")
        self._recapture("its parameters or buffers were reassigned or moved", "p.data = ..., a CPU-offload round trip")

    def _reassigned(self, path: str) -> None:
        """The caller assigned another tensor at ``path`` since a graph reading the old one was captured."""
        self._recapture(f"{path} was assigned another tensor", "beam search's reorder_cache, say")

    def _recapture(self, what: str, example: str) -> None:
        """What a graph reads in place moved (``what``): the graphs go and are captured anew over the tensors
        there now, or, past too many in a row that did not pay (:class:`~regionc.cudagraph.runner.Recaptures`),
        stop."""
        self._held.clear()  # the graphs they describe go either way
        if self._recaptures.too_many(self.runner.replays):  # the runner is new at each capture anew
            self.runner.disable(f"{what} between calls {self._recaptures.count} times with fewer than {PAYING_REPLAYS} "
                                f"replays between ({example}); a graph reads the tensors it was captured with",
                                drop=True)
            return
        log.info("regionc: %s: %s since its CUDA graph was captured; capturing anew", type(self.module).__name__, what)
        self._start()

    def _refuse_what_a_replay_would_break(self, tensors: list[torch.Tensor], versions: list[int],
                                          arguments: tuple, out: Any) -> None:
        written = [i for i, (t, before) in enumerate(zip(tensors, versions)) if t._version != before]
        if written:
            self.runner.disable(f"the forward writes in place to its tensor argument(s) {written}")
            return
        leaves, _ = as_output_list(out)
        other = [v for v in leaves if not (v is None or isinstance(v, torch.Tensor) or any(v is a for a in arguments))]
        if other:
            self.runner.disable(f"the forward returns a {type(other[0]).__name__} computed in Python, which a "
                                "replay would not recompute; graphs need tensors, None or the call's own arguments")



# ====================================================================== reassigned weights
#: parameters, buffers and submodules registered on any module of this process (torch's global hooks)
_registrations = [0]


def _count_registration(*_: Any) -> None:
    if not torch.compiler.is_compiling():  # Dynamo would guard on the count: a recompile per registration
        _registrations[0] += 1


@functools.cache
def _watch_registrations() -> None:
    from torch.nn.modules import module as nn_module

    nn_module.register_module_parameter_registration_hook(_count_registration)
    nn_module.register_module_buffer_registration_hook(_count_registration)
    nn_module.register_module_module_registration_hook(_count_registration)


# ====================================================================== Python state a replay would not redo
_SCALARS = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)
#: argument values the walks do not go into: the arguments that hold state are the others (a cache)
_LEAVES = (torch.Tensor, *_SCALARS)
#: how far from an argument the walk goes: cache -> its layers list -> a layer -> the layer's attributes
_DEPTH = 4
#: elements of one list, tuple or dict the walk looks at
_WIDTH = 1024


def python_state(module: torch.nn.Module, labels: list[str], values: tuple) -> dict[str, Any]:
    """Path -> value of the Python state a forward may change: each scalar (and each tensor's address
    and shape) reachable from its non-tensor arguments, and each scalar or plain tensor attribute of
    the module's submodules (parameters and buffers are not attributes of ``__dict__``)."""
    state: dict[str, Any] = {}
    seen: set[int] = set()
    for label, value in zip(labels, values):
        if not isinstance(value, (torch.Tensor, torch.nn.Module, *_SCALARS)):
            _walk(value, label, _DEPTH, state, seen)
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, _SCALARS):
                state[f"{name}.{key}" if name else key] = value
            elif isinstance(value, torch.Tensor):
                state[f"{name}.{key}" if name else key] = _tensor_identity(value)
    return state


def first_change(before: dict[str, Any] | None, after: dict[str, Any]) -> str | None:
    """The first path whose value differs (or that appeared or went), as ``path (old -> new)``."""
    if before is None or before == after:
        return None
    for path in (*before, *(p for p in after if p not in before)):
        old, new = before.get(path, "absent"), after.get(path, "absent")
        if old != new:
            return f"{path} ({old!r} -> {new!r})"
    return None


def _labels(positional: int, names) -> list[str]:
    """How the walks name a call's arguments: ``args[i]``, then the keyword names."""
    return [f"args[{i}]" for i in range(positional)] + list(names)


def held_tensors(labels: list[str], values: tuple) -> list[tuple]:
    """The edges ``(holder, how, key, held, path)`` from the non-tensor arguments down to every tensor
    they reach (as :func:`python_state` walks them), each holder's edge before those below it: what
    :func:`moved_tensor` checks on the next calls."""
    edges: list[tuple] = []
    seen: set[int] = set()

    def visit(value: Any, path: str, depth: int) -> bool:  # whether a tensor lies at or below value
        if isinstance(value, torch.Tensor):
            return True
        if not _walks_into(value, depth, seen):
            return False
        seen.add(id(value))
        found = False
        for how, key, child in _children(value):
            at = len(edges)
            child_path = _path(path, how, key)
            if visit(child, child_path, depth - 1):
                edges.insert(at, (value, how, key, child, child_path))
                found = True
        return found

    for label, value in zip(labels, values):
        if not isinstance(value, _LEAVES):
            visit(value, label, _DEPTH)
    return edges


def moved_tensor(edges: list[tuple]) -> str | None:
    """The path of the first edge of :func:`held_tensors` whose holder holds another object now, or None."""
    for holder, how, key, held, path in edges:
        if how == "attr":
            now = holder.__dict__.get(key, _MISSING)
        elif how == "key":
            now = holder.get(key, _MISSING)
        else:
            now = holder[key] if key < len(holder) else _MISSING
        if now is not held:
            return path
    return None


_MISSING = object()


def _walk(value: Any, path: str, depth: int, state: dict[str, Any], seen: set[int]) -> None:
    if isinstance(value, _SCALARS):
        state[path] = value
        return
    if isinstance(value, torch.Tensor):
        state[path] = _tensor_identity(value)
        return
    if not _walks_into(value, depth, seen):
        return
    seen.add(id(value))
    for how, key, child in _children(value):
        _walk(child, _path(path, how, key), depth - 1, state, seen)


def _walks_into(value: Any, depth: int, seen: set[int]) -> bool:
    """Whether the walk looks inside ``value`` (not a scalar, a module, a type or a callable; not seen)."""
    return not (depth == 0 or isinstance(value, _SCALARS) or id(value) in seen
                or isinstance(value, (torch.nn.Module, type)) or callable(value))


def _children(value: Any) -> list[tuple[str, Any, Any]]:
    """``(how, key, child)`` for what a list, tuple, dict or object holds (``how``: index, key, attr)."""
    if isinstance(value, (list, tuple)):
        return [("index", i, item) for i, item in enumerate(value[:_WIDTH])]
    if isinstance(value, dict):
        return [("key", key, item) for key, item in list(value.items())[:_WIDTH]]
    if hasattr(value, "__dict__"):
        return [("attr", key, item) for key, item in vars(value).items()]
    return []


def _path(path: str, how: str, key: Any) -> str:
    return f"{path}.{key}" if how == "attr" else f"{path}[{key!r}]"


def _tensor_identity(t: torch.Tensor) -> tuple:
    """A tensor's address and shape: what an assignment of another tensor (a grown cache) changes."""
    try:
        return ("tensor", t.data_ptr(), tuple(t.shape))
    except (RuntimeError, NotImplementedError):  # no storage (a tensor subclass, say): its identity then
        return ("tensor", id(t), tuple(t.shape))
