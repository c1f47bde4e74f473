"""Compile one piece through Inductor, and turn the result into bytes and back.

``torch._inductor.standalone_compile`` runs the full ``compile_fx`` path
(AOTAutograd included, so backward works) and returns an artifact that can be
serialized; a serialized artifact is what regionc's disk cache stores. The bytes are
only valid for the exact torch build that wrote them (the cache key holds it).

Where torch has it, the compile runs in standalone_compile's ``aot`` mode: the artifact is the
compiled function itself (AOTAutograd's bundled entry: Inductor's code and the Triton kernels),
serialized directly. The default mode instead snapshots every cache artifact the process has
recorded (``save_cache_artifacts``) after the compile, and a load writes them all back into
Inductor's on-disk caches and looks the entry up there: work on both the cold and the warm path.

Neither artifact holds the C++ libraries of CPU kernels (or of the C++ wrapper): loading one runs
the generated Python, which builds each library again unless Inductor's cache already has it
(seconds per piece). So the payload carries them (:func:`_bundle`): a load on a host whose
Inductor cache is empty, such as one fed by the remote tier, puts them where Inductor looks and
compiles nothing. CUDA kernels need no such care: the artifact holds them. The payload also
carries what regionc's passes swapped in the compile, so a warm start's report says what the code it
loaded runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import operator
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sympy
import torch
import torch.fx

from regionc.blocks.writes import base_of, is_view, written_args
from regionc.compiler.combo import sinks_last
from regionc.compiler.floats import in_backend_fake_mode, tensorify_own_floats
from regionc.compiler.guards import GuardMark, ShapeGuards, guard_mark, guards_added
from regionc.compiler.reductions import persistent_rows
from regionc.config import PDL
from regionc.logs import log_once
from regionc.passes.decisions import SMALL_ROWS
from regionc.report import first_line

log = logging.getLogger("regionc")


#: Inductor settings every piece is compiled with, under the user's ``inductor_config`` (which
#: overrides them). Pointwise kernels take Inductor's first heuristic config instead of two configs,
#: each compiled and then benchmarked on the first call: on an H100 that benchmarking alone cost
#: 0.2 s of a 32-layer cold start (on the critical path), and the prefill was no slower without it
#: (benchmarks/results/compile_time/h100-2026-11-25-pointwise-autotune-ab.json). Inductor's full-graph
#: default keeps the second config; regionc compiles few pieces, so their first call matters more.
PIECE_DEFAULTS: dict[str, Any] = {"triton.autotune_pointwise": False}

#: Added for a decode step's pieces on CUDA: Inductor's combo kernels, which launch independent
#: kernels as one. A decoder layer's q RoPE, k RoPE with its cache write and v's cache write are
#: three small kernels of different sizes that read different tensors; as one launch, an HF Llama
#: 32 × 2048 decode step at batch 8 runs 390 kernels instead of 458 and its GPU span is 2110 µs
#: instead of 2241 on an H200 (benchmarks/results/decode_profile/h200-2026-12-03-hf-llama-b8-combo-kernels.log).
#: Their sinks join the last combo kernel (``regionc/compiler/combo.py``). Prefill pieces keep
#: Inductor's default: their kernels are large, and combo kernels were not measured there.
#: And Inductor's programmatic dependent launch (Hopper and newer; ``regionc/ops/pdl.py``): each
#: kernel of the piece is scheduled while the one before it finishes, as regionc's decode kernels are.
DECODE_DEFAULTS: dict[str, Any] = {"combo_kernels": True, "triton.enable_pdl": PDL}

_LINEARS = frozenset({torch._C._nn.linear, torch.nn.functional.linear, torch.matmul, torch.mm, torch.addmm,
                      operator.matmul})


#: Inductor settings no piece compiles with, whatever the user's. ``freezing`` folds a graph's
#: weights into its code; a piece takes its weights as inputs (one compiled code serves every layer,
#: each with its own), and what freezing compiles cannot be serialized for the disk cache
#: (``regionc.compile`` could not load it at all). The option is refused by name (``regionc/config.py``);
#: Inductor's global flag is overridden here, with a log line. Under that flag Dynamo still puts
#: the weights in its graph as constants: those traces are never shared (``regionc/tracing/saved.py``).
PIECE_OVERRIDES: dict[str, Any] = {"freezing": False}


def piece_defaults(gm: torch.fx.GraphModule, device: torch.device) -> dict[str, Any]:
    """The Inductor settings ``gm`` compiles with before the user's: :data:`PIECE_DEFAULTS`, and
    :data:`DECODE_DEFAULTS` for a decode step's piece (:func:`is_decode_step`) on CUDA."""
    if device.type == "cuda" and is_decode_step(gm):
        log.debug("regionc: a decode step's piece: compiling it with %s", DECODE_DEFAULTS)
        return {**PIECE_DEFAULTS, **DECODE_DEFAULTS}
    return PIECE_DEFAULTS


def piece_config(gm: torch.fx.GraphModule, device: torch.device, user: dict[str, Any],
                 passes: dict[str, Any]) -> dict[str, Any]:
    """The Inductor config patches ``gm`` compiles with: its defaults, then the user's
    ``inductor_config``, then the passes' own settings, then :data:`PIECE_OVERRIDES`."""
    if torch._inductor.config.freezing:
        log_once("freezing", "regionc: Inductor's freezing is on; regionc compiles its pieces without it (what "
                 "freezing compiles cannot be cached), and a block traced with a layer's weights in its graph "
                 "runs for that layer only", level=logging.WARNING)
    return {**piece_defaults(gm, device), **user, **passes, **PIECE_OVERRIDES}


#: Whether this torch's Inductor computes a wrong gradient for some pieces that return a non-contiguous
#: tensor requiring grad. HF T5's first decoder block returns its relative position bias as a permuted view
#: (``[1, H, S, S]``, strides ``(H, 1, S·H, H)``); that piece compiled by torch 2.13's Inductor on its own
#: (regionc not involved) gives the bias embedding a wrong gradient, while ``aot_eager``, torch 2.11 and the
#: same piece returning a contiguous tensor are right. 2.12 is unchecked, so it counts as affected.
STRIDED_GRAD_OUTPUT_BUG = torch.__version__ >= (2, 12)


#: Whether this torch's Inductor can compute wrong values for a piece that assigns into a slice of one of its
#: inputs after reading that input. HF RWKV's block reads its layer's slice of the recurrent state (a tensor
#: the model makes before the blocks, an input of each block's piece) and assigns the new state into it;
#: compiled by torch 2.11's Inductor on its own (``compile_fx`` or ``standalone_compile``, regionc not
#: involved), that piece computed a wrong key at the first time step, and it compiled right without the
#: assignment; torch 2.13 compiles it right. Smaller pieces of the same shape compiled right, so the check
#: below is wider than the bug: such a piece runs eagerly. 2.12 is unchecked, so it counts as affected.
INPUT_SLICE_WRITE_BUG = torch.__version__ < (2, 13)


def known_miscompile(gm: torch.fx.GraphModule) -> str | None:
    """Why Inductor would compile ``gm`` (a piece as Dynamo traced it) wrong here, or None: the piece then
    runs eagerly. A full graph never takes such an input or returns such an intermediate; a split at block
    boundaries may."""
    if INPUT_SLICE_WRITE_BUG and (name := input_slice_written_after_read(gm)) is not None:
        return (f"it assigns into a slice of its input {name} after reading it (a recurrent state, as RWKV's), "
                f"which torch {torch.__version__}'s Inductor can compile wrong")
    if not STRIDED_GRAD_OUTPUT_BUG:
        return None
    from torch.fx.experimental.symbolic_shapes import guard_or_true

    output = next(iter(gm.graph.find_nodes(op="output")))
    for i, node in enumerate(torch.utils._pytree.tree_leaves(output.args[0])):
        value = node.meta.get("example_value") if isinstance(node, torch.fx.Node) else None
        if isinstance(value, torch.Tensor) and value.requires_grad and not guard_or_true(value.is_contiguous()):
            return (f"output {i} is a non-contiguous tensor that requires grad (strides {tuple(value.stride())}), "
                    f"for which torch {torch.__version__}'s Inductor can compute a wrong gradient")
    return None


def input_slice_written_after_read(gm: torch.fx.GraphModule) -> str | None:
    """The name of an input that ``gm`` assigns into (``x[...] = y``, directly or through a view) after a node
    before the assignment read it, or None."""
    read: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        written = written_args(node)
        if node.target is operator.setitem and isinstance(written[0], torch.fx.Node):
            base = base_of(written[0])
            if base.op == "placeholder" and base in read:
                return base.name
        if is_view(node):
            continue
        read.update(base for arg in node.all_input_nodes if arg not in written
                    and (base := base_of(arg)).op == "placeholder")
    return None


def bound_as_renamed(example_inputs: Sequence[Any]) -> list[Any]:
    """Each symbolic int or float input as the symbol the ShapeEnv renamed it to, where that is one symbol.

    Inductor's code binds a symbolic scalar input to the symbol it was traced with (``SymNode._expr``),
    and computes with the ShapeEnv's renaming of it (two values Dynamo found equal are one symbol). In
    Dynamo's whole graph some input always carries the renamed symbol too; a piece may get the scalar
    alone, and its code then reads a symbol nothing bound (``NameError: name 's40' is not defined``:
    Gemma 2's sliding-window ``cumulative_length``, renamed to its layer's cache length, in the glue that
    builds the masks). Handed the renamed symbol, Inductor binds it."""
    inputs = list(example_inputs)
    for i, value in enumerate(inputs):
        if not isinstance(value, (torch.SymInt, torch.SymFloat)):
            continue
        node = value.node
        renamed = node.expr
        if renamed != node._expr and isinstance(renamed, sympy.Symbol):
            make = node.shape_env.create_symintnode if isinstance(value, torch.SymInt) else \
                node.shape_env.create_symfloatnode
            inputs[i] = make(renamed, hint=node.hint)
    return inputs


def is_decode_step(gm: torch.fx.GraphModule) -> bool:
    """Whether ``gm`` (a piece as Dynamo traced it) calls a linear and every linear reads a known
    number of rows, at most the decision table's ``SMALL_ROWS`` (rows: all but the input's last dim)."""
    found = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _LINEARS or not node.args:
            continue
        x = node.args[1] if node.target is torch.addmm else node.args[0]
        value = x.meta.get("example_value", x.meta.get("val")) if isinstance(x, torch.fx.Node) else None
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            return False
        rows = 1
        for size in value.shape[:-1]:
            if not isinstance(size, int):
                return False
            rows *= size
        if rows > SMALL_ROWS:
            return False
        found = True
    return found


@dataclasses.dataclass
class CompiledPiece:
    fn: Callable[..., Any]
    payload: bytes | None  # None when the artifact cannot be serialized (then it is not cached)
    serialize_s: float  # of the compile's time, what turning the artifact into ``payload`` took
    guards: ShapeGuards | None  # what the compile assumed of symbolic sizes (regionc/compiler/guards.py)
    pass_matches: dict[str, int] = dataclasses.field(default_factory=dict)  # regionc's swaps, per pattern
    pass_skips: list[str] = dataclasses.field(default_factory=list)  # patterns seen but not swapped, and why


def compile_piece(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config_patches: dict[str, Any],
                  guards_since: GuardMark | None = None, passes=None) -> CompiledPiece:
    """Compile ``gm`` for inputs like ``example_inputs`` (fake tensors / SymInts of Dynamo's trace).

    Symbolic dims come from the ambient Dynamo tracing context, so one artifact serves
    every size the guards admit. The guards added on them since ``guards_since`` (by default: since
    this call) come back with the artifact, and in its payload; so does what ``passes`` (the
    ``regionc.passes.PassManager`` in ``config_patches``) did in this compile.
    """
    since = guard_mark(example_inputs) if guards_since is None else guards_since
    guards_of = example_inputs  # as traced: the guards bind the symbols the inputs were traced with

    example_inputs = bound_as_renamed(in_backend_fake_mode(example_inputs))
    on_cuda = any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in example_inputs)
    if on_cuda:
        start_compile_workers()

    def standalone_compile(mode: dict[str, Any]):
        return torch._inductor.standalone_compile(
            gm, example_inputs, dynamic_shapes="from_tracing_context",
            options={"config_patches": config_patches}, **mode)

    grouping = sinks_last() if config_patches.get("combo_kernels") else nullcontext()
    rows = persistent_rows() if on_cuda else nullcontext()
    try:
        with _recording_cpp_libraries() as libraries, tensorify_own_floats(gm, example_inputs), grouping, rows:
            try:
                artifact = standalone_compile(_AOT_MODE)
            except RuntimeError as exc:
                if not _AOT_MODE or "aot" not in str(exc):
                    raise
                # aot mode needs AOTAutograd's bundled cache entry, which some graphs do not get (an op
                # the cache bypasses): the default mode may still compile them
                log.warning("regionc: aot-mode compile failed (%s: %s); compiling again in the default mode",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                libraries.clear()
                artifact = standalone_compile({})
    finally:  # a failed compile's matches are dropped with it: they must not count for the next piece
        notes = {"pass_matches": passes.take_matches(), "pass_skips": passes.take_skips()} if passes else {}
    guards = guards_added(guards_of, since)
    start = time.perf_counter()
    payload = _serialize(artifact, gm)
    if payload is not None:
        payload = _bundle(libraries, payload, guards, notes)
    return CompiledPiece(artifact, payload, time.perf_counter() - start, guards, **notes)


_AOT_MODE = {"aot": True} if "aot" in inspect.signature(torch._inductor.standalone_compile).parameters else {}


def start_compile_workers() -> None:
    """Start Inductor's Triton compile workers now, if they are not running yet.

    Inductor compiles a graph's Triton kernels in its subprocess pool only once the pool is up;
    until then it compiles them one by one in this process. Its own Dynamo backend starts the
    pool the moment it is called, so the workers are up by the time the kernels are generated;
    ``standalone_compile`` does not. Without this, a cold regionc compile on the H100 spent ~2 s
    more in Triton's front end than per-block ``torch.compile``. Idempotent and cheap once started.
    """
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:  # pragma: no cover - a torch without the pool
        return
    maybe_warm_pool()


#: How a compiled piece names a regionc op: the Python wrapper calls ``torch.ops.regionc.<op>``, the
#: C++ wrapper passes ``regionc::<op>`` to its proxy executor.
_OP_REFERENCES = (b"torch.ops.regionc.", b"regionc::")


def load_piece(payload: bytes) -> tuple[Callable[..., Any], ShapeGuards | None, dict[str, Any]]:
    """Rebuild a compiled piece from :func:`compile_piece`'s payload, with the size guards its code
    carries and what the passes did in its compile (raises if it is unusable).

    regionc's ops are registered first only if the piece calls one: a warm start whose pieces swap
    nothing never imports the passes or the ops (see regionc/passes/version.py)."""
    if any(reference in payload for reference in _OP_REFERENCES):
        import regionc.ops  # noqa: F401
    artifact, guards, notes = _unbundle(payload)
    with tempfile.TemporaryDirectory(prefix="regionc-load-") as tmp:
        path = os.path.join(tmp, "artifact.bin")
        with open(path, "wb") as f:
            f.write(artifact)
        return torch._inductor.CompiledArtifact.load(path=path, format="binary"), guards, notes


def load_stored_piece(store, key: str, record, report,
                      example_inputs: Sequence[Any] | None = None) -> tuple[Callable[..., Any], ShapeGuards | None] | None:
    """The compiled piece stored under ``key`` and its size guards, its load timed into the piece's
    ``record`` and the graph's ``report``; None when the store has none, or when its guards fail for
    ``example_inputs`` (Inductor specialized it on sizes other than the graph's; logged). Raises if the
    stored artifact is unusable."""
    start = time.perf_counter()
    payload = store.load(key)
    if payload is None:
        return None
    fn, guards, notes = load_piece(payload)
    if guards is not None and example_inputs is not None and not guards.holds(example_inputs):
        log.info("regionc: cache entry %s for %s assumes %s, which this graph's sizes break: compiling it for "
                 "them", key[:12], record.block or record.name, guards.code)
        return None
    record.seconds = time.perf_counter() - start
    record.source = store.origin(key)
    record.pass_matches, record.pass_skips = notes.get("pass_matches", {}), notes.get("pass_skips", [])
    report.add_cache(hits=1, load_s=record.seconds, bytes_loaded=len(payload))
    report.phases["load"] += record.seconds
    return fn, guards


def _serialize(artifact: Any, gm: torch.fx.GraphModule) -> bytes | None:
    saveable = getattr(artifact, "is_saveable", None)
    if saveable is not None and not saveable():
        return None
    with tempfile.TemporaryDirectory(prefix="regionc-save-") as tmp:
        path = os.path.join(tmp, "artifact.bin")
        try:
            artifact.save(path=path, format="binary")
        except Exception as exc:  # noqa: BLE001 - not serializable: the caller keeps it in memory only
            log.warning("regionc: a compiled piece cannot be serialized, so it is not cached (%s)",
                        _refused_by_aot_cache(gm) or first_line(exc))
            return None
        with open(path, "rb") as f:
            return f.read()


def _refused_by_aot_cache(gm: torch.fx.GraphModule) -> str | None:
    """Why AOTAutograd's cache refuses ``gm`` (a call off its allowlist, named), or None. Without its entry
    the artifact has nothing to save, and torch's own error says only that (``'NoneType' object is not
    callable``)."""
    from torch._functorch._aot_autograd.autograd_cache import BypassAOTAutogradCache, check_cacheable

    try:
        check_cacheable(gm)
    except BypassAOTAutogradCache as exc:
        return f"AOTAutograd's cache refuses it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    except Exception:  # noqa: BLE001 - the check itself failed: the artifact's own error is the message
        return None
    return None


# ---------------------------------------------------------------------------- C++ libraries in the payload
#: payload = MAGIC | u32 notes length | notes | u32 guards length | guards | u32 count | count x (u32 name
#: length | name | u64 size | library) | artifact; a name is the library's path under Inductor's cache
#: directory, the guards are :meth:`ShapeGuards.to_bytes` (empty when the code carries none), the notes
#: what the passes did (JSON).
_BUNDLE_MAGIC = b"RGNCLIB3"
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
#: Where Inductor keeps a built library under its cache directory: <2 characters of its hash>/<hash...>.so
_LIBRARY_NAME = re.compile(r"[0-9a-z_]{2}/[0-9a-z_][0-9a-z_.]*\.so")


@contextmanager
def _recording_cpp_libraries() -> Iterator[list[Callable[[], Any]]]:
    """Collects the loader of every C++ library Inductor builds or reuses meanwhile: each C++ kernel
    and wrapper goes through ``CppCodeCache.load_async`` (the class its other C++ caches inherit it
    from), also one this process already built for another piece."""
    from torch._inductor.codecache import CppCodeCache

    original = CppCodeCache.__dict__["load_async"]
    loaders: list[Callable[[], Any]] = []

    def load_async(cls, *args: Any, **kwargs: Any) -> Any:
        loader = original.__func__(cls, *args, **kwargs)
        loaders.append(loader)
        return loader

    CppCodeCache.load_async = classmethod(load_async)
    try:
        yield loaders
    finally:
        CppCodeCache.load_async = original


def _bundle(loaders: list[Callable[[], Any]], artifact: bytes, guards: ShapeGuards | None,
            notes: dict[str, Any]) -> bytes:
    """``artifact`` with the passes' ``notes``, its size guards and the C++ libraries ``loaders`` load in
    front of it (see the module docstring)."""
    from torch._inductor.codecache import cache_dir

    base = Path(cache_dir()).resolve()
    files: dict[str, bytes] = {}
    for loader in loaders:
        library = loader()  # loaded already: the compile ran the generated code
        path = Path(getattr(library, "__file__", None) or getattr(library, "_name", "")).resolve()
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else ""
        if not _LIBRARY_NAME.fullmatch(name):
            log.debug("regionc: C++ library %s is not in Inductor's cache: not carried in the entry", path)
            continue
        if name not in files:
            files[name] = path.read_bytes()
    guard_bytes = guards.to_bytes() if guards is not None else b""
    note_bytes = json.dumps(notes, sort_keys=True).encode()
    parts = [_BUNDLE_MAGIC, _U32.pack(len(note_bytes)), note_bytes, _U32.pack(len(guard_bytes)), guard_bytes,
             _U32.pack(len(files))]
    for name, data in sorted(files.items()):
        parts += [_U32.pack(len(name)), name.encode(), _U64.pack(len(data)), data]
    return b"".join(parts) + artifact


def _unbundle(payload: bytes) -> tuple[memoryview, ShapeGuards | None, dict[str, Any]]:
    """The artifact of ``payload``, its size guards and the passes' notes, once its C++ libraries are
    where Inductor looks for them."""
    from torch._inductor.codecache import cache_dir

    from regionc.cache.store import make_private_dir

    view = memoryview(payload)
    if view[:len(_BUNDLE_MAGIC)] != _BUNDLE_MAGIC:
        raise ValueError("not a regionc payload (no C++ library table)")
    offset = len(_BUNDLE_MAGIC)
    (notes_len,) = _U32.unpack_from(view, offset)
    notes = json.loads(bytes(view[offset + _U32.size:offset + _U32.size + notes_len]))
    offset += _U32.size + notes_len
    (guards_len,) = _U32.unpack_from(view, offset)
    offset += _U32.size
    guards = ShapeGuards.from_bytes(bytes(view[offset:offset + guards_len])) if guards_len else None
    offset += guards_len
    (count,) = _U32.unpack_from(view, offset)
    offset += _U32.size
    base = Path(cache_dir())
    for _ in range(count):
        (name_len,) = _U32.unpack_from(view, offset)
        name = bytes(view[offset + _U32.size:offset + _U32.size + name_len]).decode()
        offset += _U32.size + name_len
        (size,) = _U64.unpack_from(view, offset)
        data = view[offset + _U64.size:offset + _U64.size + size]
        offset += _U64.size + size
        if not _LIBRARY_NAME.fullmatch(name) or len(data) != size:
            raise ValueError(f"bad C++ library entry {name!r} in the payload")
        dest = base / name
        if dest.exists():
            continue
        try:
            base.mkdir(parents=True, exist_ok=True)
            make_private_dir(dest.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:  # Inductor builds it again, as without the bundle
            log.info("regionc: C++ library %s of a cached piece not placed in Inductor's cache (%s); it is built "
                     "again", name, exc.strerror or exc)
    return view[offset:], guards, notes
