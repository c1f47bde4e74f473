"""Piecewise CUDA graphs: capture each piece per shape into one shared pool, replay afterwards.

Usage (one :class:`GraphPool` per compiled Dynamo graph, one :class:`PieceGraphRunner` per piece
*instance* — instances sharing compiled code still get their own runner, since their weights differ)::

    pool = GraphPool(config, report)
    runners = [PieceGraphRunner(fn, name=..., static_input_indices=..., pool=pool, config=config,
                                report=report, dynamic_inputs=DynamicSpec.make(...), is_last=...)]
    def run(*graph_args):
        with pool.forward(size=n):         # n = runtime token/batch size, None without dynamic dims
            ... call the runners in order ...

Lifecycle per forward *bucket* (the padded size N of the forward; one bucket when nothing is dynamic):
the first forward in a bucket runs every piece eagerly (warm-up, padded to N); the second captures
every piece, in execution order, into the pool's shared memory pool and replays it once; later
forwards replay. Capturing all graphs of a bucket in one forward, in the order they run, is what
makes sharing one pool safe: a graph's temporaries may reuse memory of earlier graphs' temporaries
or dead outputs, but never memory that a graph running later in the same forward still reads.
Sizes are captured in the order they first occur (lazily), not largest first: a later, larger
bucket may need new pool segments. A key first seen after its bucket's capture forward (a late
shape) is warmed up, then captured into a *private* pool of its own (safe, no memory sharing).

Inputs: static inputs (weights, KV caches registered as buffers; indices given by the caller) are
read and written in place — the graph holds their addresses, so in-place updates persist. Each replay
checks that they are still there (torch's own C++ check, as its CUDA graph trees do: 19 µs for 291
weights on an H100 host, 40 µs with the host's caches cold): one whose storage moved (``p.data = ...``,
a CPU-offload round trip) has its graph dropped and captured anew (one log line; after ``RECAPTURES``
times in a row without paying, graphs stop for the piece, one warning), or, with
``config.cudagraph_check_addresses``, raises :class:`CudaGraphAddressError`. Other tensor args are
copied into static buffers (padded with ``pad_value``) unless the arg already *is* that buffer: an
output of another graph in this pool (the previous piece), in which case the graph was captured
reading it in place and no copy happens (:mod:`regionc.cudagraph.staging`). A piece that writes in
place to a non-static input is not graphed.

Outputs contract: a replay overwrites the same output memory every time. Outputs of intermediate
pieces are returned as the graph's own tensors (views, sliced back to n) and are valid until the
same piece replays again — the next forward. The last piece (``is_last=True``, or the indices in
``user_output_indices``) clones its outputs, so what the user gets is never overwritten — except
outputs that alias a *static* input (e.g. an in-place KV-cache update returning the cache): those
are the user's own tensor and are returned as is, like eager. If the graph's final outputs
include values produced by a non-last piece, that piece must list them in ``user_output_indices``.
Output memory of every captured graph stays allocated (strong references) for the pool's lifetime.

Fallbacks (one log line each, never a crash): sizes above the largest capture size run eagerly;
a capture that raises (host sync such as ``.item()``, data-dependent shapes), CPU tensors in or
out, or non-tensor outputs that padding would change turn graphs off for that piece from then on
(graphs already captured for it stay in use).

The CUDA calls themselves are in :mod:`regionc.cudagraph.capture`; what was captured, what ran
without a graph and why go to the report's :class:`~regionc.report.CudagraphStats`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import operator
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import torch

from regionc.cudagraph.capture import CudaGraphBackend, capture_graph
from regionc.cudagraph.sizes import (
    ABOVE_MAX,
    DynamicSpec,
    as_output_list,
    bucket_for,
    keyed_shape,
    pad_args,
    rebuild_outputs,
    runtime_size,
    slice_outputs,
)
from regionc.cudagraph.staging import GraphOutputs, StagedInput, copy_in, stage
from regionc.logs import log_once
from regionc.report import first_line

log = logging.getLogger("regionc")


class CudaGraphAddressError(RuntimeError):
    """A static input (weight/buffer) moved since its graph was captured (``cudagraph_check_addresses``)."""


#: times in a row a graph is captured anew because what it reads in place moved (a weight's storage
#: swapped, a cache's tensors reassigned on every step by beam search) without paying for its capture
#: (fewer than ``PAYING_REPLAYS`` replays before the next move); then graphs stop for it. Moves between
#: which the graphs paid (adapters loaded now and then, a model offloaded between pipeline calls) are
#: captured anew every time, as torch's CUDA graph trees re-record.
RECAPTURES = 2
PAYING_REPLAYS = 8


class Recaptures:
    """Counts a graph's captures anew in a row that did not pay (the rule above), for a piece or a forward."""

    def __init__(self):
        self.count = 0

    def too_many(self, replays_since_capture: int) -> bool:
        """Note one more capture anew after ``replays_since_capture`` replays: whether graphs should stop."""
        self.count = 1 if replays_since_capture >= PAYING_REPLAYS else self.count + 1
        return self.count > RECAPTURES


def _python_at_addresses(tensors: Sequence[Any], addresses: Sequence[Any], indices: Sequence[int]) -> bool:
    return all(tensors[i].data_ptr() == addresses[i] for i in indices)


#: ``at_addresses(tensors, addresses, indices)``: whether ``tensors[i]`` still sits at ``addresses[i]``
#: for each of ``indices`` (lists). Torch's C++ loop where the build has it (CUDA builds, where graphs
#: run), the same in Python elsewhere (the fake graphs of the CPU tests).
at_addresses = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", _python_at_addresses)


# ====================================================================== option handling
def should_use_cudagraphs(config, example_inputs: Iterable[Any]) -> bool:
    """None → on iff any input tensor is on CUDA; True without CUDA inputs → one log line, off."""
    setting = getattr(config, "cudagraphs", None)
    if setting is False:
        return False
    on_cuda = any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in example_inputs)
    if setting is None:
        return on_cuda
    if not on_cuda:
        log_once("cudagraphs-no-cuda",
                 "regionc: cudagraphs=True but no input is on a CUDA device; running without CUDA graphs",
                 level=logging.WARNING)
        return False
    return True


# ====================================================================== the pool
def _forget_instance(pool_ref: weakref.ref, ids: tuple[int, ...], instance: int, _: Any) -> None:
    """A tensor of a set of static tensors was freed: the pool forgets the set (if it still knows it)."""
    pool = pool_ref()
    if pool is not None and pool._instances.get(ids, (None,))[0] == instance:
        del pool._instances[ids]


@dataclasses.dataclass
class _Forward:
    size: int | None
    bucket: Any  # padded size N, ABOVE_MAX, or None (nothing dynamic)
    phase: str  # "warmup" | "capture" | "replay" | "eager" | "recorded" (inside a caller's capture)
    instance: Any = None  # which weights this forward runs with (see GraphPool.forward)


class GraphPool:
    """One per compiled graph: the shared memory pool, the forward/bucket state, graph outputs others may read.

    ``backend`` defaults to :class:`CudaGraphBackend` (created lazily on the first capture/warm-up);
    tests pass a fake.
    """

    def __init__(self, config, report=None, *, device: torch.device | int | None = None, backend=None,
                 name: str = "graph"):
        self.config = config
        self.report = report
        self.name = name
        self.capture_sizes = tuple(sorted(config.capture_sizes))
        self._device = device
        self._backend = backend
        self._lock = threading.RLock()
        self._bucket_state: dict[Any, str] = {}  # (bucket, instance) -> "warmed" | "captured"
        #: static tensor ids -> (small instance number, weak references to those tensors)
        self._instances: dict[tuple[int, ...], tuple[int, tuple[weakref.ref, ...]]] = {}
        self._next_instance = 0
        self._last_instance: tuple[int, tuple[torch.Tensor, ...]] | None = None  # (instance, its tensors)
        self.current: _Forward | None = None  # the forward under way
        self.outputs = GraphOutputs()  # what later pieces may be captured reading in place
        self._log_key = object()
        if report is not None:
            report.note_cudagraphs()

    @property
    def backend(self):
        if self._backend is None:
            self._backend = CudaGraphBackend(self._device)
        return self._backend

    @property
    def handle(self):
        """The shared ``torch.cuda.graph_pool_handle()`` every graph of this pool (not private ones) uses."""
        return self.backend.pool_handle(private=False)

    @contextlib.contextmanager
    def forward(self, size: int | None = None, statics: Sequence[torch.Tensor] = ()):
        """Wrap one run of all pieces. ``size``: the runtime token/batch size (None if nothing is dynamic).

        ``statics``: the forward's static tensors (weights, buffers). One compiled graph can serve
        several sets of weights (two instances of a model class share Dynamo's compiled code, so do
        the blocks of a model compiled block by block); graphs hold the addresses they captured, so
        each set gets its own warm-up, capture and graphs. Sets are told apart by tensor identity,
        and the pool keeps them alive so an identity is never reused.
        """
        with self._lock:
            if self.current is not None:  # nested (re-entrant) call: same forward
                yield self.current
                return
            if size is None:
                bucket = None
            else:
                bucket = bucket_for(int(size), self.capture_sizes)
            instance = self._instance_of(statics)
            state = self._bucket_state.get((bucket, instance))
            if self.backend.capturing():
                # a caller is capturing this forward into its own graph (regionc.compile's one graph
                # over a model's forward): the pieces run as they are and that graph records them; a
                # graph cannot be captured inside another, and this pool's lifecycle does not advance
                phase = "recorded"
            elif bucket == ABOVE_MAX:
                phase = "eager"
            elif state is None:
                phase = "warmup"
            elif state == "warmed":
                phase = "capture"
            else:
                phase = "replay"
            self.current = _Forward(None if size is None else int(size), bucket, phase, instance)
            try:
                yield self.current
            finally:
                self.current = None
                if phase == "warmup":
                    self._bucket_state[bucket, instance] = "warmed"
                elif phase == "capture":
                    self._bucket_state[bucket, instance] = "captured"

    def _instance_of(self, statics: Sequence[torch.Tensor]) -> int | None:
        """A small number per set of static tensors: it goes into every piece's graph key, so it must
        hash fast (a tuple of hundreds of ids, hashed once per piece, cost more than the replays).

        Runs before every replay, so the common case (the same tensors as the last forward) is one
        identity comparison in C; only a different set pays for hashing its ids. The pool holds a set's
        tensors weakly: a set whose tensors are freed is forgotten (its number is never given again), so a
        caller that hands a new set every call (beam search's reordered static cache) does not keep
        every old one alive."""
        if not statics:
            return None
        last = self._last_instance
        if last is not None and len(last[1]) == len(statics) and all(map(operator.is_, statics, last[1])):
            return last[0]
        ids = tuple(map(id, statics))
        known = self._instances.get(ids)
        if known is None or not all(map(operator.is_, statics, (ref() for ref in known[1]))):
            forget = functools.partial(_forget_instance, weakref.ref(self), ids, self._next_instance)
            known = self._instances[ids] = (self._next_instance, tuple(weakref.ref(t, forget) for t in statics))
            self._next_instance += 1
        self._last_instance = (known[0], tuple(statics))
        return known[0]

    def restart(self) -> None:
        """Forget which buckets were warmed up and captured (runners switched: start their lifecycle over)."""
        with self._lock:
            self._bucket_state.clear()


# ====================================================================== one piece
#: New keys a piece may meet after its bucket's capture before its graphs are turned off. Each is warmed up
#: and, when it comes again, captured into a private pool; a key that is new on every call (an int
#: argument counting steps: the layers of HF's sliding-window cache) would warm up forever.
LATE_KEYS = 8


@dataclasses.dataclass
class _Entry:
    key: tuple
    late: bool
    graph: Any = None
    staged: list[StagedInput] = dataclasses.field(default_factory=list)
    #: the static inputs' positions, and per position the address it was captured at (None elsewhere)
    static_indices: list[int] = dataclasses.field(default_factory=list)
    addresses: list[int | None] = dataclasses.field(default_factory=list)
    outputs: list[Any] = dataclasses.field(default_factory=list)
    structure: str = "tuple"
    aliases_static: list[bool] = dataclasses.field(default_factory=list)
    size: int | None = None


class PieceGraphRunner:
    """Wraps one piece's compiled callable: warm-up, capture per shape key, replay (see module doc).

    - ``fn(*args)`` returns a tensor or a tuple/list of tensors (ints allowed, see DynamicSpec).
    - ``static_input_indices``: args used in place (params, buffers incl. KV caches).
    - ``dynamic_inputs``: a :class:`DynamicSpec` (or a mapping of its fields) naming where the
      token/batch size appears; None/empty → one graph per concrete shape, no padding.
    - ``is_last``: clone all outputs for the user; ``user_output_indices``: clone only these.
    - ``mutated_inputs``: arg indices written in place (see ``mutation.mutated_placeholders``);
      any that is not static turns graphs off for this piece.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str, static_input_indices: Collection[int], pool: GraphPool,
                 config=None, report=None, dynamic_inputs: DynamicSpec | Mapping[str, Any] | None = None,
                 is_last: bool = False, user_output_indices: Collection[int] | None = None,
                 mutated_inputs: Collection[int] | None = None):
        self.fn = fn
        self.name = name
        self.pool = pool
        self.config = config if config is not None else pool.config
        self.report = report if report is not None else pool.report
        self.static = frozenset(int(i) for i in static_input_indices)
        if dynamic_inputs is None:
            dynamic_inputs = DynamicSpec()
        elif not isinstance(dynamic_inputs, DynamicSpec):
            dynamic_inputs = DynamicSpec.make(**dynamic_inputs)
        self.spec = dynamic_inputs
        self.is_last = is_last
        self.user_outputs = None if user_output_indices is None else frozenset(user_output_indices)
        self.check_addresses = bool(getattr(self.config, "cudagraph_check_addresses", False))
        self._entries: dict[tuple, _Entry] = {}
        self._late_keys = 0
        self._recaptures = Recaptures()
        self._positions_by_count: dict[int, list[int]] = {}
        self._no_capture: str | None = None
        self._log_key = object()
        self.captures = 0  # graphs captured so far (a caller can tell whether its call captured)
        self.replays = 0
        self._replays_at_move = 0
        # A piece known to write nothing in place may warm up padded (and re-run on the real args if
        # that fails); one that may write (unknown counts as may) warms up once, exactly, unpadded.
        self._pure = mutated_inputs is not None and not mutated_inputs
        bad = sorted(set(mutated_inputs or ()) - self.static)
        if bad:
            self.disable(f"it writes in place to non-static input(s) {bad}")
        bad = sorted(i for i, _ in self.spec.inputs if i in self.static)
        if bad:
            self.disable(f"static input(s) {bad} are declared dynamic")

    def _positions(self, count: int) -> list[int]:
        """The non-static arg positions of a call with ``count`` args (cached: asked on every replay)."""
        positions = self._positions_by_count.get(count)
        if positions is None:
            positions = self._positions_by_count[count] = [i for i in range(count) if i not in self.static]
        return positions

    @property
    def capturable(self) -> bool:
        """False once graphs are off for this piece (a failed capture, a refused input, ...)."""
        return self._no_capture is None

    # ------------------------------------------------------------------ entry point
    def __call__(self, *args: Any) -> Any:
        fwd = self.pool.current
        if fwd is None:
            log_once((self.pool._log_key, "outside"),
                     "regionc: %s called outside GraphPool.forward(); running without CUDA graphs", self.name,
                     level=logging.WARNING)
            return self.fn(*args)
        if fwd.phase == "recorded":
            self._refuse_host_inputs(args)
            return self.fn(*args)
        if fwd.bucket == ABOVE_MAX:
            return self._eager("above-max", args,
                               f"size {fwd.size} is above the largest capture size {self.pool.capture_sizes[-1]}")
        n = size = None
        if self.spec.active:
            try:
                n = runtime_size(args, self.spec)
            except ValueError as exc:
                return self._eager("spec", args, f"dynamic dims: {exc}")
            if fwd.size is None or n != fwd.size:
                return self._eager("size", args, f"its size {n} differs from the forward's size {fwd.size}")
            size = fwd.bucket
        try:
            key = (keyed_shape(args, self.spec, size, self._positions(len(args)), fwd.bucket), fwd.instance)
        except TypeError as exc:
            return self._eager("key", args, f"an argument cannot key a graph ({exc})")
        entry = self._entries.get(key)
        if entry is not None and entry.graph is not None:
            return self._replay(entry, args, n)
        if self._no_capture is not None:
            return self.fn(*args)
        if entry is None:
            late = fwd.phase != "warmup"
            self._late_keys += late
            if self._late_keys > LATE_KEYS:
                first = next(iter(self._entries.values())).key[0]
                changing = [i for i, mine, theirs in zip(self._positions(len(args)), key[0][1:], first[1:])
                            if mine != theirs]
                self.disable(f"{self._late_keys} new keys since its first capture: argument(s) {changing} change "
                             "from call to call (an int such as a step counter needs a graph per value)")
                return self.fn(*args)
            self._entries[key] = _Entry(key, late=late, size=size)
            return self._warmup(args, n, size)
        return self._capture(entry, args, n, size, private=entry.late or fwd.phase != "capture")

    # ------------------------------------------------------------------ paths
    def _refuse_host_inputs(self, args: Sequence[Any]) -> None:
        """Inside another graph's capture (``regionc.compile``'s graph over a forward), a tensor this piece
        is handed off the graph's device cannot be recorded: Dynamo hands a Python float it traces as a
        tensor (a LoRA scale set between calls) as a CPU 0-d tensor, which the compiled code reads on the
        host, so a replay would keep the value it had at capture. Raising fails that capture: the forward
        runs without its graph, and its pieces' own graphs copy what they are handed."""
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and not self.pool.backend.accepts(a):
                raise RuntimeError(f"{self.name} is handed input {i} on {a.device} inside another CUDA graph's "
                                   "capture (a Python float traced as a tensor, say): a replay would keep the "
                                   "value it had at capture")

    def _eager(self, why: str, args: Sequence[Any], reason: str) -> Any:
        log_once((self._log_key, why), "regionc: %s runs without a CUDA graph: %s", self.name, reason)
        if self.report is not None:
            self.report.add_eager_call(self.name)
        return self.fn(*args)

    def disable(self, reason: str, *, drop: bool = False) -> None:
        """No graphs for this piece from now on (one warning); graphs already captured stay in use
        unless ``drop`` (a replay of them would be wrong)."""
        if drop:
            self._entries.clear()
        if self._no_capture is None:
            self._no_capture = reason
            log.warning("regionc: no CUDA graphs for %s from now on: %s", self.name, reason)
            if self.report is not None:
                self.report.add_cudagraph_fallback(f"{self.name}: {reason}")

    def _warmup(self, args: Sequence[Any], n: int | None, size: int | None) -> Any:
        """One eager run. Pure pieces run padded to ``size`` (the shape that will be captured)."""
        padded = self._pure and n is not None and n != size
        if not padded:
            with self.pool.backend.warmup():
                return self.fn(*args)  # an error here is the piece's own: not ours to hide
        try:
            with self.pool.backend.warmup():
                out = self.fn(*pad_args(args, self.spec, n, size))
            values, structure = as_output_list(out)
            problem = self._check_outputs(values, size)
            if problem is None:
                return rebuild_outputs(slice_outputs(values, self.spec, n, size), structure)
        except Exception as exc:
            problem = f"the padded warm-up failed ({first_line(exc)})"
        self.disable(problem)
        return self.fn(*args)  # the piece writes nothing in place: running it again is harmless

    def _capture(self, entry: _Entry, args: Sequence[Any], n: int | None, size: int | None, private: bool) -> Any:
        pool, backend = self.pool, self.pool.backend
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and not backend.accepts(a):
                self.disable(f"input {i} is on {a.device}, not on the graph's device")
                return self.fn(*args)
        capture_args, staged = stage(args, self.spec, self.static, n, size, pool.outputs)
        statics = [i for i in sorted(self.static) if i < len(args) and isinstance(args[i], torch.Tensor)]
        try:
            capture = capture_graph(backend, self.fn, capture_args, private)
        except Exception as exc:
            self.disable(f"capture failed ({first_line(exc)})")
            return self.fn(*args)

        values, structure = as_output_list(capture.out)
        problem = self._check_outputs(values, size if n is not None else None)
        if problem:
            self.disable(problem)
            return self.fn(*args)
        entry.aliases_static = pool.outputs.keep(values, [args[i] for i in statics], staged)
        entry.graph, entry.staged, entry.static_indices = capture.graph, staged, statics
        entry.addresses = [None] * len(args)
        for i in statics:
            entry.addresses[i] = args[i].data_ptr()
        entry.outputs, entry.structure = values, structure
        self.captures += 1

        bucket = entry.key[0][0]
        label = f"N={size}" if size is not None else ("static" if bucket is None else f"bucket={bucket}")
        if self.report is not None:
            self.report.add_capture(self.name, label, capture.seconds, capture.pool_bytes, private)
        log.debug("regionc: captured %s (%s%s) in %.3fs", self.name, label, ", private pool" if private else "",
                  capture.seconds)
        capture.graph.replay()  # capture records, it does not run: this call's results come from a replay
        return self._results(entry, n)

    def _check_outputs(self, values: list[Any], size: int | None) -> str | None:
        declared = {i for i, d in self.spec.outputs if d is None}
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                if not self.pool.backend.accepts(value):
                    return f"output {i} is on {value.device}, not on the graph's device"
            elif value is not None and size is not None and i not in declared:
                return f"output {i} is a {type(value).__name__} that padding could change; declare it or it cannot be graphed"
        for i, d in self.spec.outputs:
            if size is None:
                break
            value = values[i] if i < len(values) else None
            if d is None:
                if value != size:
                    return f"output {i} is declared the size int but is {value!r}"
            elif not isinstance(value, torch.Tensor) or value.dim() <= d or value.shape[d] != size:
                return f"output {i} dim {d} is declared dynamic but its shape is {getattr(value, 'shape', value)}"
        return None

    def _replay(self, entry: _Entry, args: Sequence[Any], n: int | None) -> Any:
        moved = copy_in(entry.staged, args, n, entry.size)
        if moved is not None:
            return self._eager("moved", args, f"input {moved} cannot go where the graph reads it (another "
                                              "graph's output that is not ours to write, or a broadcast buffer "
                                              "it does not fit)")
        if entry.static_indices and not at_addresses(list(args), entry.addresses, entry.static_indices):
            return self._moved(entry, args, n)
        entry.graph.replay()
        self.replays += 1
        return self._results(entry, n)

    def _moved(self, entry: _Entry, args: Sequence[Any], n: int | None) -> Any:
        """A static input's storage moved since ``entry`` was captured (``p.data = ...``, a CPU-offload round
        trip): its graph reads the old address, so it goes; this call warms up, the next captures anew."""
        i = next(i for i in entry.static_indices if not isinstance(args[i], torch.Tensor)
                 or args[i].data_ptr() != entry.addresses[i])
        now = f"{args[i].data_ptr():#x}" if isinstance(args[i], torch.Tensor) else repr(args[i])
        what = f"static input {i} of piece {self.name} moved since its CUDA graph was captured " \
               f"({entry.addresses[i]:#x} -> {now})"
        if self.check_addresses:
            raise CudaGraphAddressError(f"regionc: {what}; weights and buffers must stay in place (update them "
                                        "with copy_(), do not reassign their storage)")
        del self._entries[entry.key]
        replays, self._replays_at_move = self.replays - self._replays_at_move, self.replays
        if self._recaptures.too_many(replays):
            self.disable(f"{what}, {self._recaptures.count} times with fewer than {PAYING_REPLAYS} replays between "
                         "(p.data = ..., a CPU-offload round trip); a graph reads the addresses it was captured with",
                         drop=True)
            return self.fn(*args)
        log.info("regionc: %s; capturing anew", what)
        self._entries[entry.key] = _Entry(entry.key, late=True, size=entry.size)
        return self._warmup(args, n, entry.size)

    def _results(self, entry: _Entry, n: int | None) -> Any:
        values = entry.outputs
        if n is not None and n != entry.size:
            values = slice_outputs(values, self.spec, n, entry.size)
        if self.is_last or self.user_outputs:
            values = list(values)
            for i, value in enumerate(values):
                if isinstance(value, torch.Tensor) and not entry.aliases_static[i] and \
                        (self.is_last or i in self.user_outputs):
                    values[i] = value.clone()
        return rebuild_outputs(list(values), entry.structure)
