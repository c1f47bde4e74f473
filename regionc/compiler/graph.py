"""Turn one Dynamo graph into pieces, compile each unique piece once, wire every instance.

The flow is one pass: detect repeated blocks → split → fingerprint every piece →
for each fingerprint, get a compiled artifact once (disk cache, else Inductor) →
install that artifact as the forward of every piece with the fingerprint. Instances
differ only in the inputs the split module passes them (their own weights), so one
artifact serves them all. A piece that fails to compile runs eagerly, with one
warning naming it and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch
import torch.fx
from torch._dynamo.exc import RestartAnalysis

from regionc.blocks.boundaries import fuse_block_boundaries
from regionc.blocks.detect import detect_blocks, pretty_path
from regionc.blocks.fingerprint import Fingerprint, fingerprint_piece, first_difference, only_constants_differ, share
from regionc.blocks.floats import copy_float_reads, return_floats_as_tensors
from regionc.blocks.inline import inline_nested_regions
from regionc.blocks.rematerialize import rematerialize_tables
from regionc.blocks.split import Piece, split_into_pieces
from regionc.blocks.transforms import keep_transforms_whole
from regionc.compiler import background
from regionc.compiler.cacheable import make_cacheable
from regionc.compiler.floats import specialize_like
from regionc.compiler.guards import GuardMark, ShapeGuards, guard_mark, guarded
from regionc.compiler.inductor import CompiledPiece, compile_piece, known_miscompile, load_stored_piece, piece_config
from regionc.compiler.moves import moves_data_only
from regionc.config import Config
from regionc.report import PieceRecord, Report, first_line

log = logging.getLogger("regionc")


def piece_example_inputs(submodule: torch.fx.GraphModule) -> list[Any]:
    """The fake tensors / SymInts Dynamo traced for the piece's inputs (split_module keeps node meta)."""
    return [node.meta["example_value"] for node in submodule.graph.find_nodes(op="placeholder")]


class GraphCompiler:
    """Compiles the graphs of one ``torch.compile`` call; holds what they share (config, cache)."""

    def __init__(self, config: Config, store=None, passes=None):
        self.config = config
        self.store = store
        self.passes = passes  # regionc.passes.PassManager, installed into every piece's Inductor compile
        # what changes a piece's code besides the piece: the options, and the passes' code version
        self.codegen = {**config.codegen_options(), "passes_version": passes.uuid() if passes is not None else None}

    def compile(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                report: Report) -> tuple[torch.fx.GraphModule, list[Piece], Future | None]:
        """The split module, each piece's forward replaced by its compiled code, the pieces in order,
        and, when the pieces compile in the background, that job (the split module's pieces then run
        eagerly, each until the job installs its compiled code)."""
        guards_since = guard_mark(example_inputs)  # Dynamo's guards; later ones are the pieces' (guards.py)
        with report.phase("detect"):
            self._inline_nested_regions(gm, report)
            changed = make_cacheable(gm.graph)
            if changed:
                log.info("regionc: graph %d: for AOTAutograd's cache, %s", report.graph_index,
                         ", ".join(f"{n} {what}" for what, n in changed.items()))
            written = return_floats_as_tensors(gm.graph)
            if written:
                log.info("regionc: graph %d: %d float(s) it writes back computed as tensors, so that a new value "
                         "compiles nothing", report.graph_index, written)
            if changed or written:
                gm.recompile()
            owners = detect_blocks(gm.graph, self.config.min_instances)
            report.rematerialized = rematerialize_tables(gm.graph, owners)
            if self.config.fuse_block_boundaries:
                report.fused_boundaries = fuse_block_boundaries(gm.graph, owners)
            keep_transforms_whole(gm.graph, owners)
            copy_float_reads(gm.graph, owners)
        with report.phase("split"):
            split, pieces = split_into_pieces(gm, owners)
        report.stacks = dict(Counter(pretty_path(p.block.stack) for p in pieces if p.block))
        with report.phase("fingerprint"):
            inputs = {p.name: piece_example_inputs(split.get_submodule(p.name)) for p in pieces}
            prints = {p.name: fingerprint_piece(split.get_submodule(p.name), inputs[p.name]) for p in pieces}

        device = device_of(example_inputs)
        passes = self.passes.inductor_config_patches() if self.passes is not None else {}
        owners = share([prints[p.name] for p in pieces])
        self._report_reuse_breakers(pieces, prints, owners, report)
        records = [PieceRecord(p.name, p.kind, p.label if p.block else None, prints[pieces[owner].name].short)
                   for p, owner in zip(pieces, owners)]
        traced = {i for i in set(owners) if pieces[i].kind == "glue"
                  and moves_data_only(split._modules[pieces[i].name].graph)}
        uniques = {i: _Unique(pieces[i], prints[pieces[i].name], records[i]) for i in sorted(set(owners) - traced)}
        instances: list[tuple[Piece, PieceRecord, _Unique]] = []
        for i, (piece, record) in enumerate(zip(pieces, records)):
            report.pieces.append(record)
            if owners[i] in traced:
                record.source = "traced"
                continue
            if owners[i] != i:
                record.source = "reused"
            instances.append((piece, record, uniques[owners[i]]))
        if traced:
            log.info("regionc: graph %d: %d glue piece(s) only move data (views, slices, cat): they run as traced, "
                     "without a compile", report.graph_index, report.count("traced"))
        if self._cached:  # the keys before any compile: a background job's program names them in its recipe
            for unique in uniques.values():
                unique.keyed = self._key(unique.fingerprint, device)
            for piece, record, unique in instances:
                record.key = unique.keyed[0]

        def obtain(unique: _Unique, in_background: bool) -> None:
            submodule = split._modules[unique.piece.name]  # the piece's graph, under any eager copy installed over it
            patches = piece_config(submodule, device, self.config.inductor_config, passes)
            try:
                unique.fn, guards = self._obtain(unique, submodule, inputs[unique.piece.name], patches,
                                                 guards_since, report)
            except RestartAnalysis as exc:
                if not in_background:  # e.g. a float Inductor needs as a constant: Dynamo traces it as one
                    log.info("regionc: %s (%s) asks Dynamo to trace the graph again: %s", unique.piece.name,
                             unique.piece.label, type(exc).__name__)
                    specialize_like(inputs[unique.piece.name],
                                    [inputs[p.name] for p, _, owner in instances if owner is unique])
                    raise
                unique.fn, guards = None, None  # Dynamo's trace is done: nothing can trace it again
                _fall_back(unique.piece, unique.record, report, f"{type(exc).__name__} after Dynamo's trace")
            # compiled inside Dynamo's call, its guards are Dynamo's now, on its own symbols only
            dynamos = not in_background and unique.record.source == "compiled"
            report.pass_matches.update(unique.record.pass_matches)  # of its compile, or of the one it loaded
            report.pass_skips.extend(f"{unique.piece.label}: {skip}" for skip in unique.record.pass_skips)
            for piece, record, owner in instances:
                if owner is not unique:
                    continue
                if record is not unique.record:
                    record.key = unique.record.key
                    if unique.fn is None:
                        record.source, record.reason = "eager", "its fingerprint failed to compile"
                if unique.fn is not None:  # shadows the submodule: the FX code calls self.<name>(...)
                    eager = split.__dict__.get(piece.name, split._modules[piece.name])  # an untouched graph
                    checked = dynamos and prints[piece.name].symbols == unique.fingerprint.symbols
                    split.__dict__[piece.name] = guarded(unique.fn, None if checked else guards, eager,
                                                         f"{piece.name} ({piece.label})")

        if not self._in_background():
            for unique in uniques.values():
                obtain(unique, in_background=False)
            return split, pieces, None
        # the eager pieces run copies of the piece graphs, never the graphs Inductor is compiling
        # (its passes rewrite them in place)
        for piece in pieces:
            module = split._modules[piece.name]
            split.__dict__[piece.name] = torch.fx.GraphModule(module, bare_graph(module))
        callers_state = background.callers_state()

        def obtain_all() -> None:
            for unique in uniques.values():
                with callers_state():
                    obtain(unique, in_background=True)
            log.info("%s (in the background)", report.summary())

        job = background.submit(obtain_all)
        log.info("regionc: graph %d runs eagerly while %d unique piece(s) compile in the background",
                 report.graph_index, len(uniques))
        return split, pieces, job

    # ------------------------------------------------------------------ one unique piece
    def _obtain(self, unique: _Unique, submodule: torch.fx.GraphModule, inputs: list[Any], patches: dict,
                guards_since: GuardMark, report: Report) -> tuple[Callable[..., Any] | None, ShapeGuards | None]:
        """Compiled callable for a new fingerprint, from the disk cache, else Inductor (None → eager),
        and the size guards its code carries."""
        piece, record = unique.piece, unique.record
        wrong = known_miscompile(submodule)  # before the cache: such a piece is never compiled, so never stored
        if wrong is not None:
            if self.config.strict:
                raise RuntimeError(f"regionc: {piece.name} ({piece.label}) cannot be compiled correctly: {wrong}")
            _fall_back(piece, record, report, wrong)
            return _fn_and_guards(None)
        if unique.keyed is None:
            return _fn_and_guards(self._compile(piece, submodule, inputs, patches, guards_since, record, report))
        key, factors = unique.keyed
        with self.store.lock(key) as waited:
            report.add_cache(waited_s=waited)
            try:
                loaded = load_stored_piece(self.store, key, record, report, inputs)
            except Exception as exc:  # a verified entry that still fails: drop it, recompile
                log.warning("regionc: cache entry %s for %s (%s) failed to load (%s); recompiling",
                            key[:12], piece.name, piece.label, exc)
                self.store.remove(key)
            else:
                if loaded is not None:
                    return loaded
            self.store.record_miss(key)
            report.add_cache(misses=1)
            compiled = self._compile(piece, submodule, inputs, patches, guards_since, record, report)
            with report.phase("cache_write"):
                saved = compiled is not None and compiled.payload is not None and self.store.save(
                    key, compiled.payload, factors)
            if saved:
                report.add_cache(bytes_written=len(compiled.payload))
            else:
                record.key = ""
            return _fn_and_guards(compiled)

    @property
    def _cached(self) -> bool:
        return self.store is not None and self.store.readable

    def _key(self, fingerprint: Fingerprint, device: torch.device) -> tuple[str, dict]:
        from regionc.cache.key import environment_factors, piece_key

        return piece_key(fingerprint.digest, [item for item in fingerprint.items if item.startswith("input ")],
                         self.codegen, environment_factors(device))

    def _in_background(self) -> bool:
        """Whether this graph's pieces compile in the background (when asked and safe; if not safe, says why)."""
        if not self.config.background_compile:
            return False
        if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu"):
            log.info("regionc: compiling in the calling thread, not in the background: autocast is on")
            return False
        return True

    def _compile(self, piece, submodule, inputs, patches, guards_since, record, report) -> CompiledPiece | None:
        """The piece compiled (with its payload, None when it cannot be serialized); None when it falls
        back to eager."""
        start = time.perf_counter()
        serialize_s = 0.0
        try:
            compiled = compile_piece(submodule, inputs, patches, guards_since=guards_since, passes=self.passes)
            serialize_s = compiled.serialize_s
        except RestartAnalysis:
            raise
        except Exception as exc:
            if self.config.strict:
                raise
            _fall_back(piece, record, report, first_line(exc))
            return None
        finally:
            record.seconds = time.perf_counter() - start
            report.phases["compile"] += record.seconds - serialize_s
            if serialize_s:
                report.phases["serialize"] += serialize_s
        record.source = "compiled"
        record.pass_matches, record.pass_skips = compiled.pass_matches, compiled.pass_skips
        return compiled

    @staticmethod
    def _inline_nested_regions(gm: torch.fx.GraphModule, report: Report) -> None:
        try:
            report.inlined_regions = inline_nested_regions(gm)
        except NotImplementedError as exc:
            log.warning("regionc: nested compile regions stay as calls (their blocks are not split out): %s", exc)
            report.fallbacks.append(f"nested regions not inlined: {exc}")

    # ------------------------------------------------------------------ diagnostics
    @staticmethod
    def _report_reuse_breakers(pieces: list[Piece], prints: dict[str, Fingerprint], owners: list[int],
                               report: Report) -> None:
        """Name what makes instances of one stack compile separately: a per-layer constant (a warning: the
        block could be shared without it), or layers of another kind or size (Gemma's sliding and full
        attention layers, a model's stages of growing width: logged)."""
        first: dict[str, int] = {}
        seen: dict[str, set[int]] = defaultdict(set)
        for i, piece in enumerate(pieces):
            if piece.block is None:
                continue
            stack = piece.block.stack
            reference = first.setdefault(stack, i)
            if owners[i] != owners[reference] and owners[i] not in seen[stack]:
                ref_print, other = prints[pieces[reference].name], prints[piece.name]
                message = f"{piece.label} cannot reuse {pieces[reference].label}'s compiled code: " \
                          f"{first_difference(ref_print, other)}"
                if only_constants_differ(ref_print, other):
                    log.warning("regionc: %s (a per-layer constant: it compiles apart)", message)
                else:
                    log.info("regionc: %s (it takes other inputs or runs other code: it compiles apart)", message)
                report.reuse_breakers.append(message)
            seen[stack].add(owners[i])


def _fall_back(piece: Piece, record: PieceRecord, report: Report, reason: str) -> None:
    log.warning("regionc: %s (%s) falls back to eager: %s", piece.name, piece.label, reason)
    record.source, record.reason = "eager", reason
    report.fallbacks.append(f"{piece.name} ({piece.label}): {reason}")


@dataclasses.dataclass
class _Unique:
    """One fingerprint: the first piece that has it, and its record, get the compiled code."""

    piece: Piece
    fingerprint: Fingerprint
    record: PieceRecord
    fn: Callable[..., Any] | None = None
    keyed: tuple[str, dict] | None = None  # (store key, its factors); None when the cache is off


def _fn_and_guards(compiled: CompiledPiece | None) -> tuple[Callable[..., Any] | None, ShapeGuards | None]:
    return (compiled.fn, compiled.guards) if compiled is not None else (None, None)


def bare_graph(module: torch.fx.GraphModule) -> torch.fx.Graph:
    """A copy of ``module``'s graph without node meta (fake tensors: it pickles, and holds no trace state)."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(module.graph, {}))
    for node in graph.nodes:
        node.meta = {}
    return graph


def device_of(example_inputs: Sequence[Any]) -> torch.device:
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
