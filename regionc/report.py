"""What regionc did for one graph: blocks, compiles, reuse, cache, passes, timings.

One :class:`Report` is built per graph Dynamo hands to the backend; ``regionc.last_report()``
returns the latest, ``regionc.reports()`` all of them in this process. ``summary()`` is the
compact line logged at INFO through ``logging.getLogger("regionc")``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any


@dataclasses.dataclass
class PieceRecord:
    """One piece of the split graph and how it got its compiled code."""

    name: str  # submodule name in the split graph, e.g. "submod_3"
    kind: str  # "block" or "glue"
    block: str | None  # block instance path ("layers.3") or None for glue
    fingerprint: str
    # "compiled" | "reused" | "cache" (local) | "remote" (fetched: regionc/cache/remote.py) | "eager" (fell back)
    # | "traced" (glue that only moves data, run as traced: regionc/compiler/moves.py)
    source: str = ""
    reason: str = ""  # why it fell back, when source == "eager"
    pass_matches: dict[str, int] = dataclasses.field(default_factory=dict)  # swaps in its code (compiled or loaded)
    pass_skips: list[str] = dataclasses.field(default_factory=list)  # patterns its compile saw but did not swap
    seconds: float = 0.0  # compiling it, or loading it from the cache (0 for reused instances)
    key: str = ""  # its artifact's key in regionc's store ("" when not cached)


@dataclasses.dataclass
class CudagraphStats:
    """What CUDA graphs did for one graph. The pools and runners of :mod:`regionc.cudagraph` fill it
    through :class:`Report`'s methods, under the report's lock (pieces may run on several threads)."""

    mode: str = ""  # "full", "piecewise", "piecewise (full capture failed)" or "module forward"
    padding: str = ""  # whether the dynamic batch dim is padded to the capture sizes, or why not
    graphs: int = 0  # graphs captured
    private_pool_graphs: int = 0  # of those, captured into a pool of their own (a shape first seen late)
    captured: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # piece -> {"N=8": graphs}
    capture_s: float = 0.0
    pool_bytes: int = 0  # memory the captures added to the pools
    eager_calls: dict[str, int] = dataclasses.field(default_factory=dict)  # piece -> calls run without a graph
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # "piece: why graphs are off for it"


@dataclasses.dataclass
class Report:
    graph_index: int = 0
    stacks: dict[str, int] = dataclasses.field(default_factory=dict)  # stack path -> blocks
    inlined_regions: int = 0  # nested_compile_region calls expanded (blocks Dynamo traced once)
    rematerialized: int = 0  # glue values (RoPE tables, ...) recomputed inside each block that reads them
    fused_boundaries: int = 0  # blocks' closing residual adds moved into the piece that reads them
    trace_source: str = ""  # regionc.compile's saved traces: "saved trace <key>", "traced, saved as <key>", ...
    pieces: list[PieceRecord] = dataclasses.field(default_factory=list)
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    reuse_breakers: list[str] = dataclasses.field(default_factory=list)
    phases: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    cache: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "hits": 0, "misses": 0, "load_s": 0.0, "bytes_loaded": 0, "bytes_written": 0, "waited_s": 0.0})
    pass_matches: dict[str, int] = dataclasses.field(default_factory=Counter)
    pass_skips: list[str] = dataclasses.field(default_factory=list)
    cudagraph_stats: CudagraphStats | None = None  # None: the graph runs without CUDA graphs
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    # ------------------------------------------------------------------ counts
    @property
    def compiled(self) -> list[PieceRecord]:
        return [p for p in self.pieces if p.source == "compiled"]

    @property
    def unique_block_compiles(self) -> int:
        return sum(1 for p in self.pieces if p.kind == "block" and p.source == "compiled")

    @property
    def unique_block_fingerprints(self) -> int:
        return len({p.fingerprint for p in self.pieces if p.kind == "block"})

    def instances_per_fingerprint(self) -> dict[str, int]:
        return dict(Counter(p.fingerprint for p in self.pieces if p.kind == "block"))

    def count(self, source: str, kind: str | None = None) -> int:
        return sum(1 for p in self.pieces if p.source == source and (kind is None or p.kind == kind))

    # ------------------------------------------------------------------ recording
    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.phases[name] += time.perf_counter() - start

    def add_cache(self, **deltas: float) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self.cache[key] = self.cache.get(key, 0) + delta

    # ------------------------------------------------------------------ CUDA graphs
    @property
    def cudagraphs(self) -> dict[str, Any]:
        """:attr:`cudagraph_stats` as plain data, ``{}`` without CUDA graphs: what ``to_dict`` and
        benchmark results hold."""
        with self._lock:
            return {} if self.cudagraph_stats is None else dataclasses.asdict(self.cudagraph_stats)

    def note_cudagraphs(self, *, mode: str | None = None, padding: str | None = None) -> None:
        """This graph runs under CUDA graphs; ``mode`` and ``padding`` replace those lines when given."""
        with self._lock:
            stats = self._cudagraph_stats()
            if mode is not None:
                stats.mode = mode
            if padding is not None:
                stats.padding = padding

    def add_capture(self, piece: str, label: str, seconds: float, pool_bytes: int, private: bool) -> None:
        """One graph of ``piece`` captured for shape ``label`` ("N=8", "static", ...)."""
        with self._lock:
            stats = self._cudagraph_stats()
            stats.graphs += 1
            stats.capture_s += seconds
            stats.pool_bytes += pool_bytes
            stats.private_pool_graphs += int(private)
            per_piece = stats.captured.setdefault(piece, {})
            per_piece[label] = per_piece.get(label, 0) + 1
            self.phases["capture"] += seconds

    def add_eager_call(self, piece: str) -> None:
        """A call of ``piece`` under CUDA graphs that ran without one (a size above the largest, ...)."""
        with self._lock:
            calls = self._cudagraph_stats().eager_calls
            calls[piece] = calls.get(piece, 0) + 1

    def add_cudagraph_fallback(self, message: str) -> None:
        """Graphs turned off for a piece from now on: ``"piece: why"``."""
        with self._lock:
            self._cudagraph_stats().fallbacks.append(message)

    def _cudagraph_stats(self) -> CudagraphStats:
        """The stats, created on first use; the caller holds the lock."""
        if self.cudagraph_stats is None:
            self.cudagraph_stats = CudagraphStats()
        return self.cudagraph_stats

    def summary(self) -> str:
        blocks = ", ".join(f"{path}×{n}" for path, n in self.stacks.items()) or "none"
        glue = sum(1 for p in self.pieces if p.kind == "glue")
        phases = " ".join(f"{k}={v:.2f}s" for k, v in self.phases.items())
        remote = f" ({self.count('remote')} from remote)" if self.count("remote") else ""
        parts = [
            f"graph {self.graph_index}: blocks [{blocks}]",
            f"{self.unique_block_fingerprints} unique block(s) compiled {self.unique_block_compiles}×, "
            f"{self.count('reused', 'block')} reused",
            f"{glue} glue piece(s)" + (f" ({self.count('traced')} run as traced)" if self.count("traced") else ""),
            f"cache {self.cache['hits']} hit{remote} / {self.cache['misses']} miss",
        ]
        if self.fused_boundaries:
            parts.append(f"{self.fused_boundaries} block-boundary add(s) fused into the next piece")
        if self.pass_matches:
            parts.append("passes " + " ".join(f"{k}={v}" for k, v in sorted(self.pass_matches.items())))
        if self.cudagraph_stats is not None:
            parts.append(f"cudagraphs {self.cudagraph_stats.graphs} graph(s)")
        if self.trace_source:
            parts.append(self.trace_source)
        if self.fallbacks:
            parts.append(f"{len(self.fallbacks)} fallback(s)")
        parts.append(phases)
        return "regionc: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph_index": self.graph_index,
            "stacks": dict(self.stacks),
            "inlined_regions": self.inlined_regions,
            "trace_source": self.trace_source,
            "rematerialized": self.rematerialized,
            "fused_boundaries": self.fused_boundaries,
            "unique_block_fingerprints": self.unique_block_fingerprints,
            "unique_block_compiles": self.unique_block_compiles,
            "instances_per_fingerprint": self.instances_per_fingerprint(),
            "pieces": [dataclasses.asdict(p) for p in self.pieces],
            "fallbacks": list(self.fallbacks),
            "reuse_breakers": list(self.reuse_breakers),
            "phases_s": dict(self.phases),
            "cache": dict(self.cache),
            "pass_matches": dict(self.pass_matches),
            "pass_skips": list(self.pass_skips),
            "cudagraphs": self.cudagraphs,
        }


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an error as one log line or report entry names it. A first line
    that only introduces the cause (Dynamo's "... Got graph break/error:") is joined by the line after it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"


_reports: list[Report] = []
_reports_lock = threading.Lock()


def new_report() -> Report:
    with _reports_lock:
        report = Report(graph_index=len(_reports))
        _reports.append(report)
        return report


def drop_report(report: Report) -> None:
    """Forget the report of a graph that Dynamo threw away to trace its frame again."""
    with _reports_lock:
        _reports.remove(report)


def last_report() -> Report | None:
    """The report of the latest graph regionc compiled in this process (None before any)."""
    with _reports_lock:
        return _reports[-1] if _reports else None


def reports() -> list[Report]:
    """All reports in this process, oldest first (one per graph Dynamo handed over)."""
    with _reports_lock:
        return list(_reports)
