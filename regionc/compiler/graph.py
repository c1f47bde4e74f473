"""Turn one Dynamo graph into pieces, compile each unique piece once, wire every instance.

The flow is one pass: detect repeated blocks → split → fingerprint every piece →
for each fingerprint, get a compiled artifact once (disk cache, else Inductor) →
install that artifact as the forward of every piece with the fingerprint. Instances
differ only in the inputs the split module passes them (their own weights), so one
artifact serves them all. A piece that fails to compile runs eagerly, with one
warning naming it and the reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

from regionc.blocks.boundaries import fuse_block_boundaries
from regionc.blocks.detect import detect_blocks, pretty_path
from regionc.blocks.fingerprint import Fingerprint, describe_value, fingerprint_piece, first_difference
from regionc.blocks.inline import inline_nested_regions
from regionc.blocks.rematerialize import rematerialize_tables
from regionc.blocks.split import Piece, split_into_pieces
from regionc.compiler.inductor import PIECE_DEFAULTS, compile_piece, load_stored_piece
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
                report: Report) -> tuple[torch.fx.GraphModule, list[Piece]]:
        """The split module, each piece's forward replaced by its compiled code, and the pieces in order."""
        with report.phase("detect"):
            self._inline_nested_regions(gm, report)
            owners = detect_blocks(gm.graph, self.config.min_instances)
            report.rematerialized = rematerialize_tables(gm.graph, owners)
            if self.config.fuse_block_boundaries:
                report.fused_boundaries = fuse_block_boundaries(gm.graph, owners)
        with report.phase("split"):
            split, pieces = split_into_pieces(gm, owners)
        report.stacks = dict(Counter(pretty_path(p.block.stack) for p in pieces if p.block))
        with report.phase("fingerprint"):
            inputs = {p.name: piece_example_inputs(split.get_submodule(p.name)) for p in pieces}
            prints = {p.name: fingerprint_piece(split.get_submodule(p.name), inputs[p.name]) for p in pieces}
        self._report_reuse_breakers(pieces, prints, report)

        patches = {**PIECE_DEFAULTS, **self.config.inductor_config,
                   **(self.passes.inductor_config_patches() if self.passes is not None else {})}
        device = device_of(example_inputs)
        done: dict[str, Callable[..., Any] | None] = {}
        keys: dict[str, str] = {}  # fingerprint -> store key of its artifact
        for piece in pieces:
            fingerprint = prints[piece.name]
            record = PieceRecord(piece.name, piece.kind, piece.label if piece.block else None, fingerprint.short)
            if fingerprint.digest in done:
                fn, record.source = done[fingerprint.digest], "reused"
                record.key = keys.get(fingerprint.digest, "")
                if fn is None:
                    record.source, record.reason = "eager", "its fingerprint failed to compile"
            else:
                fn = self._obtain(piece, split.get_submodule(piece.name), inputs[piece.name], fingerprint,
                                  patches, device, record, report)
                done[fingerprint.digest] = fn
                keys[fingerprint.digest] = record.key
                if self.passes is not None:
                    record.pass_matches = self.passes.take_matches()
                    report.pass_matches.update(record.pass_matches)
                    report.pass_skips.extend(f"{piece.label}: {skip}" for skip in self.passes.take_skips())
            if fn is not None:
                split.__dict__[piece.name] = fn  # shadows the submodule: the FX code calls self.<name>(...)
            report.pieces.append(record)
        return split, pieces

    # ------------------------------------------------------------------ one unique piece
    def _obtain(self, piece: Piece, submodule: torch.fx.GraphModule, inputs: list[Any], fingerprint: Fingerprint,
                patches: dict, device: torch.device, record: PieceRecord, report: Report):
        """Compiled callable for a new fingerprint: from the disk cache, else Inductor; None → eager."""
        if self.store is None or not self.store.readable:
            return self._compile(piece, submodule, inputs, patches, record, report)[0]
        from regionc.cache.key import environment_factors, piece_key

        key, factors = piece_key(fingerprint.digest, [describe_value(v) for v in inputs],
                                 self.codegen, environment_factors(device))
        record.key = key
        with self.store.lock(key) as waited:
            report.add_cache(waited_s=waited)
            try:
                fn = load_stored_piece(self.store, key, record, report)
            except Exception as exc:  # a verified entry that still fails: drop it, recompile
                log.warning("regionc: cache entry %s for %s (%s) failed to load (%s); recompiling",
                            key[:12], piece.name, piece.label, exc)
                self.store.remove(key)
            else:
                if fn is not None:
                    return fn
            self.store.record_miss(key)
            report.add_cache(misses=1)
            fn, payload = self._compile(piece, submodule, inputs, patches, record, report)
            with report.phase("cache_write"):
                saved = payload is not None and self.store.save(key, payload, factors)
            if saved:
                report.add_cache(bytes_written=len(payload))
            else:
                record.key = ""
            return fn

    def _compile(self, piece, submodule, inputs, patches, record, report):
        """(callable, serialized payload); (None, None) when the piece falls back to eager."""
        start = time.perf_counter()
        serialize_s = 0.0
        try:
            compiled = compile_piece(submodule, inputs, patches)
            serialize_s = compiled.serialize_s
        except Exception as exc:
            if self.config.strict:
                raise
            reason = first_line(exc)
            log.warning("regionc: %s (%s) falls back to eager: %s", piece.name, piece.label, reason)
            record.source, record.reason = "eager", reason
            report.fallbacks.append(f"{piece.name} ({piece.label}): {reason}")
            return None, None
        finally:
            record.seconds = time.perf_counter() - start
            report.phases["compile"] += record.seconds - serialize_s
            if serialize_s:
                report.phases["serialize"] += serialize_s
        record.source = "compiled"
        return compiled.fn, compiled.payload

    @staticmethod
    def _inline_nested_regions(gm: torch.fx.GraphModule, report: Report) -> None:
        try:
            report.inlined_regions = inline_nested_regions(gm)
        except NotImplementedError as exc:
            log.warning("regionc: nested compile regions stay as calls (their blocks are not split out): %s", exc)
            report.fallbacks.append(f"nested regions not inlined: {exc}")

    # ------------------------------------------------------------------ diagnostics
    @staticmethod
    def _report_reuse_breakers(pieces: list[Piece], prints: dict[str, Fingerprint], report: Report) -> None:
        """Name the per-layer constants that make instances of one stack compile separately."""
        first: dict[str, Piece] = {}
        seen: dict[str, set[str]] = defaultdict(set)
        for piece in pieces:
            if piece.block is None:
                continue
            stack = piece.block.stack
            reference = first.setdefault(stack, piece)
            digest = prints[piece.name].digest
            if digest != prints[reference.name].digest and digest not in seen[stack]:
                message = (f"{piece.label} cannot reuse {reference.label}'s compiled code: "
                           f"{first_difference(prints[reference.name], prints[piece.name])}")
                log.warning("regionc: %s (a per-layer constant in the block breaks reuse)", message)
                report.reuse_breakers.append(message)
            seen[stack].add(digest)


def device_of(example_inputs: Sequence[Any]) -> torch.device:
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
