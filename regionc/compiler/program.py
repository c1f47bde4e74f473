"""What the backend hands back to Dynamo: the split graph with its compiled pieces, and how to rebuild it.

A :class:`CompiledProgram` runs the split module (under CUDA graphs when they are on). It also
keeps a :class:`Recipe`: the split module's skeleton (its code, no fake tensors, no weights),
each piece's store key, and the CUDA-graph plan. That is all a new process needs to rebuild the
same program from regionc's store, so the program is a Dynamo ``SerializableCallable``: a saved
Dynamo trace (``regionc.compile``'s trace cache, regionc/tracing/saved.py) carries the recipe
instead of the compiled code, and loading it loads the pieces like a warm start does.

A program with a piece that is not in the store (it fell back to eager, or the cache is off)
has no recipe; saving its trace fails with a message naming the piece.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import operator
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch
import torch.fx

from regionc.blocks.split import Piece
from regionc.cache import open_store
from regionc.compiler import background
from regionc.compiler.graph import bare_graph
from regionc.compiler.guards import ShapeGuards, guarded
from regionc.compiler.inductor import load_stored_piece
from regionc.config import Config
from regionc.cudagraph.piecewise import CudagraphPlan, install_cudagraphs
from regionc.report import PieceRecord, Report, first_line

log = logging.getLogger("regionc")

try:  # torch >= 2.10: Dynamo can save a trace whose compiled function serializes itself
    from torch._dynamo.aot_compile_types import SerializableCallable
except ImportError:  # pragma: no cover - older torch: programs are never saved
    SerializableCallable = object  # type: ignore[assignment,misc]

#: Bump when the recipe's layout changes (old saved traces then fail to load and are re-traced).
RECIPE_FORMAT = 3

#: The config and report a program being loaded should use (set by the code that loads a trace).
_loading: contextvars.ContextVar[tuple[Config, Report] | None] = contextvars.ContextVar("regionc_loading", default=None)


@dataclasses.dataclass
class Recipe:
    skeleton: bytes  # pickled split module, pieces replaced by empty modules
    pieces: list[Piece]
    keys: dict[str, str]  # piece name -> store key of its compiled artifact
    stacks: dict[str, int]  # the report's repeated stacks (path -> blocks)
    cudagraph_plan: CudagraphPlan | None  # None: run without CUDA graphs
    eager_graphs: bytes  # the pieces' graphs, to run while they load in the background (b"": not kept)
    traced: bytes  # the graphs of the glue pieces that run as traced (regionc/compiler/moves.py)


class CompiledProgram(SerializableCallable):
    def __init__(self, run: Callable[..., Any], report: Report, recipe: Recipe | None, why_not_saveable: str = "",
                 pending: _Pending | None = None):
        self.run = run
        self.regionc_report = report
        self.recipe = recipe
        self.why_not_saveable = why_not_saveable
        self.pending = pending

    def __call__(self, *args: Any) -> Any:
        if self.pending is not None:
            self._settle()
        return self.run(*args)

    def _settle(self) -> None:
        """Switch to the finished program once the background job is done (and, when it uses CUDA
        graphs, once nothing else is compiling: no capture beside a compile). Until then ``run`` is
        the split module, whose pieces the job swaps for compiled code one by one."""
        pending = self.pending
        pending.eager_calls += 1
        if not pending.job.done() or (pending.needs_quiet and background.busy()):
            return
        self.pending = None
        report = self.regionc_report
        error = pending.job.exception()
        if error is not None:
            if pending.strict:
                raise error
            log.warning("regionc: graph %d: background compile failed (%s); its unfinished pieces run eagerly",
                        report.graph_index, first_line(error))
            report.fallbacks.append(f"background compile: {first_line(error)}")
            return
        self.run = pending.finish()
        log.info("regionc: graph %d runs its compiled pieces from call %d on (earlier calls ran eagerly)",
                 report.graph_index, pending.eager_calls)

    # ------------------------------------------------------------------ SerializableCallable
    @classmethod
    def serialize_compile_artifacts(cls, fn: CompiledProgram) -> bytes:
        if fn.recipe is None:
            raise RuntimeError(f"regionc: this graph cannot be saved: {fn.why_not_saveable}")
        return pickle.dumps((RECIPE_FORMAT, fn.recipe))

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> CompiledProgram:
        version, recipe = pickle.loads(data)
        if version != RECIPE_FORMAT:
            raise RuntimeError(f"regionc: saved recipe format {version}, this regionc reads {RECIPE_FORMAT}")
        context = _loading.get()
        if context is None:
            raise RuntimeError("regionc: a saved program is loaded through regionc.compile (it needs the options)")
        config, report = context
        return rebuild(recipe, config, report)


@contextlib.contextmanager
def loading_programs(config: Config, report: Report):
    """Programs deserialized inside the block use ``config`` and record into ``report``."""
    token = _loading.set((config, report))
    try:
        yield
    finally:
        _loading.reset(token)


@dataclasses.dataclass
class _Pending:
    """A program whose pieces compile in the background (regionc/compiler/background.py)."""

    job: Future
    finish: Callable[[], Callable[..., Any]]  # the program to run once the job is done
    needs_quiet: bool  # it captures CUDA graphs: switch only when no job runs in the process
    strict: bool
    eager_calls: int = 0


def make_program(gm: torch.fx.GraphModule, split: torch.fx.GraphModule, pieces: Sequence[Piece],
                 example_inputs: Sequence[Any], config: Config, report: Report,
                 job: Future | None = None) -> CompiledProgram:
    """The backend's result for ``split`` (its pieces installed, or being installed by the background
    ``job``), with a recipe when possible."""
    from regionc.cudagraph.piecewise import plan_cudagraphs
    from regionc.cudagraph.runner import should_use_cudagraphs

    plan = None
    if should_use_cudagraphs(config, example_inputs):
        plan = plan_cudagraphs(gm, split, pieces, example_inputs, config)
    keys = {record.name: record.key for record in report.pieces}
    traced_names = {record.name for record in report.pieces if record.source == "traced"}  # regionc/compiler/moves.py
    traced = [p for p in pieces if p.name in traced_names]
    missing = [f"{p.name} ({p.label})" for p in pieces if not keys.get(p.name) and p.name not in traced_names]
    attributes = len(split.graph.find_nodes(op="get_attr"))
    traced_graphs = _graphs(split, traced) if traced else b""
    recipe, why = None, ""
    if missing:
        why = f"no cached artifact for {', '.join(missing)} (compiled in memory only, or ran eagerly)"
    elif attributes:
        why = (f"the graph reads {attributes} tensor(s) as attributes, not inputs (Dynamo installs weights in "
               "the graph under Inductor's freezing), and a recipe holds no tensors")
    elif traced and not traced_graphs:
        why = f"the graphs of the glue pieces run as traced ({', '.join(p.name for p in traced)}) cannot be kept"
    else:
        recipe = Recipe(_skeleton(split, pieces), list(pieces), keys, dict(report.stacks), plan,
                        _graphs(split, pieces), traced_graphs)
    return _program(split, pieces, plan, config, report, recipe, why, job)


def rebuild(recipe: Recipe, config: Config, report: Report) -> CompiledProgram:
    """The program ``recipe`` describes, its pieces loaded from the store (raises if one is missing).

    With ``background_compile``, and the pieces' graphs in the recipe, the pieces load on the
    background thread and run eagerly until then; a missing artifact then fails that job (logged),
    and the piece stays eager."""
    store = open_store(config)
    if store is None:
        raise RuntimeError("regionc: the cache is off, so a saved program cannot load its pieces")
    split = pickle.loads(recipe.skeleton)
    report.stacks = dict(recipe.stacks)
    plan = recipe.cudagraph_plan if config.cudagraphs is not False else None
    traced = _unpickled(recipe.traced)
    split.__dict__.update(traced)
    records = [PieceRecord(p.name, p.kind, p.label if p.block else None, "", key=recipe.keys[p.name],
                           source="traced" if p.name in traced else "") for p in recipe.pieces]
    report.pieces.extend(records)

    @functools.cache
    def eager() -> dict[str, torch.fx.GraphModule]:  # the pieces' graphs, unpickled when first needed
        return _unpickled(recipe.eager_graphs)

    def load_all(state=contextlib.nullcontext) -> None:
        loaded: dict[str, tuple[Callable[..., Any], ShapeGuards | None]] = {}
        for piece, record in zip(recipe.pieces, records):
            if record.source == "traced":
                continue
            if record.key in loaded:
                record.source = "reused"
            else:
                with state():
                    found = load_stored_piece(store, record.key, record, report)
                if found is None:
                    raise RuntimeError(f"regionc: the artifact of {piece.name} ({piece.label}) is no longer in the cache")
                loaded[record.key] = found
            fn, guards = loaded[record.key]
            split.__dict__[piece.name] = guarded(fn, guards, eager().get(piece.name) if guards else None,
                                                 f"{piece.name} ({piece.label})")

    if not (config.background_compile and recipe.eager_graphs):
        load_all()
        return _program(split, recipe.pieces, plan, config, report, recipe)
    split.__dict__.update(eager())
    state = background.callers_state()
    job = background.submit(lambda: load_all(state))
    log.info("regionc: graph %d runs eagerly while %d piece artifact(s) load in the background",
             report.graph_index, len(set(recipe.keys.values()) - {""}))
    return _program(split, recipe.pieces, plan, config, report, recipe, job=job)


def _program(split: torch.fx.GraphModule, pieces: Sequence[Piece], plan: CudagraphPlan | None, config: Config,
             report: Report, recipe: Recipe | None, why_not_saveable: str = "",
             job: Future | None = None) -> CompiledProgram:
    """The program over ``split``: under CUDA graphs when there is a plan; with a background ``job``,
    the split module itself until that job is done."""
    finish = functools.partial(_with_graphs, split, pieces, plan, config, report)
    if job is None:
        return CompiledProgram(finish(), report, recipe, why_not_saveable)
    return CompiledProgram(split, report, recipe, why_not_saveable,
                           _Pending(job, finish, plan is not None, config.strict))


def _with_graphs(split, pieces, plan, config, report) -> Callable[..., Any]:
    return install_cudagraphs(split, pieces, plan, config, report) if plan is not None else split


#: A piece whose graph holds more tensor bytes than this (weights as attributes, not inputs) keeps its
#: graph out of the recipe: then no piece of that program can run eagerly while a saved trace loads.
EAGER_TENSOR_BYTES = 1 << 20


def _skeleton(split: torch.fx.GraphModule, pieces: Sequence[Piece]) -> bytes:
    """``split``'s code with each piece an empty module: it pickles without fake tensors or weights."""
    return pickle.dumps(torch.fx.GraphModule({p.name: torch.nn.Module() for p in pieces}, bare_graph(split)))


def _unpickled(graphs: bytes) -> dict[str, torch.fx.GraphModule]:
    """The graph modules :func:`_graphs` pickled, by piece name."""
    held = pickle.loads(graphs) if graphs else {}
    return {name: torch.fx.GraphModule(attributes, graph) for name, (graph, attributes) in held.items()}


def _graphs(split: torch.fx.GraphModule, pieces: Sequence[Piece]) -> bytes:
    """Each piece's graph and the tensors it reads as attributes, pickled: the glue that runs as traced,
    and what runs while a saved trace's compiled pieces load in the background. Graphs pickle as they are
    (a pickled ``GraphModule`` is traced again on load, which some piece code does not survive); b"" when
    a piece calls a submodule, holds large tensors, or does not pickle."""
    graphs: dict[str, tuple[torch.fx.Graph, dict[str, Any]]] = {}
    held = 0
    for piece in pieces:
        module = split._modules[piece.name]  # the graph module, under any compiled code installed over it
        graph = bare_graph(module)
        attributes = {}
        for node in graph.nodes:
            if node.op == "call_module":
                return b""
            if node.op == "get_attr":
                value = operator.attrgetter(node.target)(module)
                held += value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0
                attributes[node.target] = value
        graphs[piece.name] = (graph, attributes)
    if held > EAGER_TENSOR_BYTES:
        return b""
    try:
        return pickle.dumps(graphs)
    except Exception as exc:  # noqa: BLE001 - then a load cannot run the pieces eagerly, nothing worse
        log.info("regionc: the recipe keeps no piece graphs (%s): a saved trace's pieces load before its first call",
                 first_line(exc))
        return b""
