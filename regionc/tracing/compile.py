"""``regionc.compile(model)``: ``torch.compile(model, backend="regionc")`` that traces each block once.

Dynamo traces every layer of a 32-layer model before regionc sees the graph (about 5 s on an
H100 host for the demo decoder), so even a compile-once backend pays for depth, cold and warm.
Keeping Dynamo from re-tracing identical blocks needs the model before tracing starts, hence
this helper; the backend underneath is the same. How (option ``block_tracing``):

- ``nested_region``: the blocks' forward becomes a ``torch.compiler.nested_compile_region``.
  On torch >= 2.12 Dynamo traces it once and stamps out one ``invoke_subgraph`` call per
  instance; regionc's backend expands those calls again (blocks/inline.py), so it gets the
  graph of a full trace for the cost of one block, and the model stays one compiled graph.
  The wrapped forward is installed on a subclass that only these instances are switched to:
  the user's class is left alone, and (torch 2.13) a forward bound per instance would make
  Dynamo reuse the first instance's weights for all of them.
- ``per_block``: each block instance is compiled as its own Dynamo frame (``block.compile``).
  Instances share Dynamo's code cache entry, so one block is traced and compiled; the code
  between blocks (embedding, final norm, head) runs eagerly. With CUDA graphs, the model's whole
  forward (compiled blocks and eager glue) is captured as one graph per input shape
  (regionc/cudagraph/module.py) and the blocks run without graphs of their own. Torch 2.11's
  nested regions re-trace every call, so this is the best it offers.
- ``full``: plain ``torch.compile(model, backend="regionc")``.

``auto`` picks ``nested_region`` where Dynamo can reuse a traced region, else ``per_block``;
a model without repeated blocks is compiled whole. The choice is logged. A first call that shows
Dynamo would trace the regions once per block anyway goes on to ``per_block``
(:meth:`CompiledForward.check_region_reuse`).

With the cache on and ``trace_cache`` (the default), the compiled forward (the model's, or each
block's under ``per_block``) goes through a :class:`~regionc.tracing.saved.TraceSet`: Dynamo's
trace is saved next to the pieces and the next process loads it instead of tracing.
"""

from __future__ import annotations

import copy
import inspect
import logging
import pydoc
import re
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from regionc.blocks.detect import Stack, find_repeated_blocks, mixed_stack_around, share_in_blocks
from regionc.blocks.inline import region_copy
from regionc.blocks.signature import name_of
from regionc.compiler import background
from regionc.config import Config, with_mode
from regionc.cudagraph.module import ModuleGraphs
from regionc.logs import log_once
from regionc.report import Report, first_line, reports
from regionc.tracing.caches import set_up_caches
from regionc.tracing.saved import RecompileRefused, TraceSet, traces_can_be_saved

log = logging.getLogger("regionc")

#: (A block class, a kind of its code) -> their nested-region subclass, which this module hands out by
#: name (``__getattr__``). One subclass per kind: torch reuses a nested region's trace for every call of
#: its function, so blocks that run other code (``regionc/blocks/signature.py``) need another function.
_REGION_CLASSES: dict[tuple[type, str], type] = {}


def __getattr__(name: str) -> type:
    """A nested-region subclass by its name: a saved trace's guards name a block's type, and a pickled model
    (``torch.save`` of the whole module) its blocks' class, so the subclass must be importable from here. It is
    the newest one of that name this process made (a reloaded model module makes a new class under the same
    name), else it is made now from the block class its name spells (:func:`_region_name`)."""
    for region_class in reversed(_REGION_CLASSES.values()):
        if region_class.__name__ == name:
            return region_class
    block = _block_class_named(name)
    if block is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _region_class(*block)


#: Traces one nested region may keep in one model trace (torch's default is 8). Blocks of one class come in
#: as many variants as they have input shapes and kinds: a UNet's resnets at each resolution and skip width
#: (a tiny ``UNet2DConditionModel`` already needs more than 8, and fell back to per-block frames). A
#: region traced per layer (a per-layer value) still works, at the cost of the full trace.
REGION_VARIANTS = 64

#: What ``regionc.compile`` tries next when a strategy's trace fails: never worse than the plain backend.
FALLBACKS = {"nested_region": ("per_block", "full"), "per_block": ("full",), "full": ()}


def compile(model: nn.Module, *, mode: str | None = None, options: dict[str, Any] | None = None,
            dynamic: bool | None = None) -> nn.Module:
    """Compile ``model`` with regionc, tracing each repeated block once; returns ``model``.

    ``mode`` and ``options`` are those of ``torch.compile(backend="regionc")``. The model's
    ``forward`` becomes a :class:`CompiledForward`, and its block instances are changed in place
    (their class, or their compiled call). A module's own ``forward`` may be passed instead, as in
    Hugging Face's ``model.forward = torch.compile(model.forward, ...)``: the module is compiled and
    its new ``forward`` returned. Blocks are found in a module, so anything else is refused.
    """
    owner = getattr(model, "__self__", None)
    if isinstance(owner, nn.Module) and getattr(model, "__func__", None) is type(owner).forward:
        return compile(owner, mode=mode, options=options, dynamic=dynamic).forward
    if not isinstance(model, nn.Module):
        raise TypeError(f"regionc.compile takes an nn.Module (or its forward), got {type(model).__name__}; "
                        "compile a function with torch.compile(fn, backend='regionc')")
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):  # its forward is torch.compile's, not the model's
        raise TypeError(f"regionc.compile takes the model, not torch.compile's wrapper of it; pass the model "
                        f"({type(model._orig_mod).__name__}, the wrapper's _orig_mod), or call "
                        "torch.compile(model, backend='regionc')")
    config = Config.build(options, mode)
    previous = vars(model).get("forward")
    if isinstance(previous, CompiledForward):  # compiled before (a notebook cell run again, a second setup step)
        if (previous.options, previous.dynamic) == (with_mode(options, mode), dynamic):
            log.info("regionc: %s is compiled already, with these options; keeping it", type(model).__name__)
            return model
        log.info("regionc: %s was compiled with other options; compiling it anew", type(model).__name__)
        previous.remove()
    stacks = find_repeated_blocks(model, config.min_instances)
    strategy = config.block_tracing
    if strategy == "auto":
        strategy = "nested_region" if nested_regions_reuse_traces() else "per_block"
    described = _describe(stacks)
    if not stacks:
        strategy = "full"
    log.info("regionc: compile with block_tracing=%s (repeated blocks: %s; torch %s)",
             strategy, described, torch.__version__)
    model.forward = CompiledForward(model, stacks, strategy, config, mode, options, dynamic)
    return model


#: under per-block frames the code between blocks runs eagerly. Where the blocks sit inside layers of several
#: classes, that is worth it only if they hold most of the weights: a UNet's resnets and attentions do, a
#: hybrid model's adapters (Zamba2's, about 1% of its weights) do not.
MIN_SHARE_IN_BLOCKS = 0.5


def _describe(stacks: list[Stack]) -> str:
    """``layers×32, encoder.block×6 (2 kinds)``: each stack's path, its blocks and, if several, its kinds."""
    kinds: dict[str, list[Stack]] = {}
    for stack in stacks:
        kinds.setdefault(stack.path, []).append(stack)
    described = []
    for path, group in kinds.items():
        blocks = sum(len(stack.instances) for stack in group)
        described.append(f"{path}×{blocks}" + (f" ({len(group)} kinds)" if len(group) > 1 else ""))
    return ", ".join(described) or "none"


class CompiledForward:
    """A model's ``forward`` under ``regionc.compile``: one block tracing strategy, and the next one when
    Dynamo cannot trace with it.

    Torch's nested regions refuse some real blocks (a block returning two slices of one tensor, or an input;
    an HF ``StaticCache`` setting up its layers in the call, where :func:`set_up_caches` cannot set it up
    first), Dynamo may not trace a block frame on its own,
    and so on. Such a failure is raised by Dynamo before the traced code runs (whole-forward traces are full
    graphs), so the call is simply made again with the next strategy in :data:`FALLBACKS`, with one warning
    naming the error. Calls are made one at a time until one has succeeded (``regionc.warmup`` makes the first
    in another thread; a call meanwhile waits, then finds the compiled code). Per-block frames run one after
    another, so a failure there is retried only before the first call succeeded (later ones could come after
    blocks already wrote a cache). After that, a call no trace fits whose code Dynamo refuses to trace in one
    graph (HF's ``output_hidden_states``) runs eagerly where it would be traced (see
    :class:`~regionc.tracing.saved.TraceSet`), without changing the strategy, and a whole-forward call that
    fails otherwise (Dynamo failing in its own machinery among them) is run eagerly before any fallback
    (:meth:`_eager_then_fall_back`). A strategy that would run the blocks other than eager does is passed
    over before it is applied (:meth:`_unusable`). Per-block tracing also gives way
    after its first call if Dynamo compiled the block frame again and again in it (it specializes on a
    per-layer value): the blocks would compile per layer, or run eagerly past Dynamo's recompile limit. Once
    that is plain within the first call (more compiles than the three variants per block class), the rest of
    the call's blocks run eagerly (:class:`_FirstCallGate`) instead of compiling each layer, so the call costs
    a few block compiles, not one per layer.
    """

    def __init__(self, model: nn.Module, stacks: list[Stack], strategy: str, config: Config,
                 mode: str | None, options: dict[str, Any] | None, dynamic: bool | None):
        self.model = model
        self.stacks = stacks
        self.config = config
        self.original = model.forward
        self.options, self.dynamic = with_mode(options, mode), dynamic  # one of them: torch 2.11 takes not both
        self.save_traces = config.trace_cache and config.cache and traces_can_be_saved()
        self.next = list(FALLBACKS[strategy])
        self.fallbacks: list[str] = []  # "<strategy>: <error>" for each strategy given up
        self.settled = False
        self._log_key = object()  # log_once: this model's messages
        self.first_calls = threading.RLock()
        self._apply(strategy)

    @torch.compiler.disable(reason="regionc.compile runs this model's compiled code itself")
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Opaque to an outer ``torch.compile`` (HF ``generate`` compiles the model's call by default on
        CUDA): traced into, regionc's own machinery broke the outer trace in many places and a nested
        region's trace failed inside it ("'method' object has no attribute '__dict__'"), so the model fell
        back to per-block frames; the outer compile now calls the model as one opaque call."""
        if self.run is None:  # a copy: its first call compiles its own modules
            with self.first_calls:
                if self.run is None:
                    self._rebuild()
        if self.settled:
            return self._call(*args, **kwargs)
        # one at a time until one succeeded (a call during a warm-up waits for it); background compiles
        # start after it, so its later block frames trace without waiting for the first frame's compile
        with self.first_calls, background.held():
            self.check_region_reuse(args, kwargs)  # may move the first call on to the next strategy
            return self._call(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        """The model's own forward's signature: callers read it to decide what to pass. HF ``generate``
        passes ``attention_mask``, ``position_ids`` and ``logits_to_keep`` only to a forward that names
        them; behind a bare ``(*args, **kwargs)`` it dropped a padded batch's attention mask, and the
        tokens differed from eager's."""
        return inspect.signature(self.original)

    def __getstate__(self) -> dict[str, Any]:
        # A copy of the model (copy.deepcopy, pickle; Dynamo pickles the model, this forward among its
        # attributes, into a saved trace's guard state) takes none of this process's compiled code, graphs
        # or traces: they run the original's modules
        return {name: value for name, value in self.__dict__.items() if name not in ("first_calls", "trace_sets", "run")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, first_calls=threading.RLock(), trace_sets=[], run=None)

    def _rebuild(self) -> None:
        """Compile a copy of a compiled model for its own modules, under the strategy the original settled on
        (the original's saved traces and pieces come from the store). Until then a deep copy's blocks run
        eagerly (:meth:`_FirstCallGate.__deepcopy__`). Called while the copy is made, this could not see its
        modules: a module's attributes are copied into it after the objects they hold."""
        self._undo()
        self._apply(self.strategy)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        if self.strategy == "nested_region":
            set_up_caches(self.model, args, kwargs, self._log_key)
        while True:
            try:
                result = self.run(*args, **kwargs)
            except Exception as exc:
                if not self._may_retry(exc):
                    raise
                if self.settled:
                    return self._eager_then_fall_back(exc, args, kwargs)
                self._fall_back(first_line(exc))
                continue
            ran = self.strategy
            if not self.settled:
                self.settled = True
                self._check_first_call()
            if not self.warm and self.strategy == ran:  # a whole call ran on these traces (not on given-up ones)
                self.warm = True
                for traces in self.trace_sets:
                    traces.warm = True
            return result

    def _specializes_per_layer(self) -> bool:
        """Under per-block tracing, in or after the first call (one input shape): a first, a middle and a
        last variant per block class are expected (input layouts differ at the ends of a stack); more
        compiles mean the trace specializes per layer."""
        return self.strategy == "per_block" and bool(self.next) and len(self.reports) > 3 * len(self.stacks)

    def _check_first_call(self) -> None:
        if self._specializes_per_layer():
            self._fall_back(f"its block frames were compiled {len(self.reports)} times for {len(self.stacks)} "
                            "block class(es) in one call: a per-layer value read in the block (HF's layer_idx "
                            "into a cache, say) specializes each trace")

    def check_first_block(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Before the first block of the first call under per-block tracing: a block handed a Hugging Face
        cache picks its layer's state by its layer number (``layer_idx``), so Dynamo would compile its frame
        per layer. Nothing of a block has run yet, so the call is made again at once with the next strategy
        (:class:`PerLayerState`) and no block frame is compiled for nothing: the compile count of
        :meth:`_check_first_call` tells only after four of them. On torch 2.11 this is every HF decoder
        with a cache, ``generate``'s among them. HF Llama 8 × 1024 over its first two calls: on an H100
        13.75 against 14.16 s, on the 2-core CPU 43.9 against 47.7 s, half the graphs compiled or fewer
        (``benchmarks/experiments/per_layer_cache_ab.py``); the first call alone takes longer (13.7 against
        7.6 s on the H100), since it compiles the full trace where the count would have run the last
        blocks eagerly and left that compile to the second call. Under ``strict`` the error is raised instead."""
        if self.settled or self.block_called or self.strategy != "per_block" or not self.next:
            return
        self.block_called = True
        cache = _hf_cache(args, kwargs)
        if cache is not None:
            raise PerLayerState(f"its blocks are handed a {cache}, whose layers they pick by their layer number "
                                "(HF's layer_idx): each block frame would compile per layer")

    def check_region_reuse(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Before the first call under nested regions: Dynamo reuses a region's trace only for a block without
        Python side effects whose inputs are tensors, and traces the others once per block, which costs more
        than the full trace (HF Llama 32 layers on the 2-core CPU, torch 2.13: Dynamo 5.5 against 3.7 s
        without a cache, 6.3 against 4.7 with one; ``benchmarks/experiments/region_reuse_ab.py``). What tells
        before anything is traced: a Hugging Face cache handed to the model (an input Dynamo cannot compare),
        or made by it for the call (``use_cache``: updating it is a side effect), and blocks that route hub
        kernels through ``kernels`` (transformers' ``use_kernelized_func``, on Llama's attention and 113 other
        models': a global routing table set and reset around each call while compiling). Then the call takes
        the next strategy: per-block frames trace the block once whatever it does, and their first-block
        check sends a call whose blocks are handed a cache on to the full trace. Only a strategy regionc
        chose (``auto``) gives way here, and not under ``strict``."""
        if (self.settled or self.strategy != "nested_region" or not self.next or self.config.strict
                or self.config.block_tracing != "auto"):
            return
        why = self._region_reuse_breaker(args, kwargs)
        if why is not None:
            self._fall_back(f"Dynamo would trace its nested region once per block: {why}")

    def _region_reuse_breaker(self, args: tuple, kwargs: dict[str, Any]) -> str | None:
        """What makes Dynamo trace this call's regions once per block, or None. ``use_cache`` (the config's
        by default) counts for a model whose forward takes it: an encoder whose config carries it (BERT: its
        cache is a decoder's) takes per-block frames too, which trace its block once as well."""
        cache = _hf_cache(args, kwargs)
        if cache is not None:
            return f"it is handed a {cache}"
        for stack in self.stacks:
            if _routes_hub_kernels(stack.instances[0]):
                return f"the blocks of {stack.path} route hub kernels through `kernels` (a side effect on every call)"
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(getattr(self.model, "config", None), "use_cache", False)
        if use_cache and "use_cache" in inspect.signature(self.original).parameters:
            return "use_cache is on, so the model hands its blocks a cache it makes"
        return None

    def eager_rest_of_first_call(self) -> bool:
        """Whether a block frame of the first call should run eagerly: the call has shown the trace
        specializes per layer (it falls back after the call), so compiling the remaining layers one by
        one would only cost time."""
        if self.settled or not self._specializes_per_layer():
            return False
        log_once((self._log_key, "eager rest"), "regionc: %s's block frames specialize per layer; the rest of the "
                 "first call runs its blocks eagerly", type(self.model).__name__)
        return True

    @property
    def reports(self) -> list[Report]:
        """The reports of the graphs compiled under the strategy in use."""
        return reports()[self.first_report:]

    def _may_retry(self, exc: Exception) -> bool:
        if self.config.strict or not self.next or isinstance(exc, RecompileRefused):
            return False
        if self.strategy == "per_block":  # block frames run one by one: only a failure before any ran
            return not self.settled and isinstance(exc, (torch._dynamo.exc.TorchDynamoException, PerLayerState))
        return True  # a whole-forward full graph: its trace failed before anything ran

    def _eager_then_fall_back(self, exc: Exception, args: tuple, kwargs: dict) -> Any:
        """A call of a settled model failed compiled; eager tells whose fault that is. Where eager raises too,
        the call itself is wrong (a float ``input_ids``, a token past the vocabulary): eager's error is raised
        and the strategy kept, so one bad request does not cost a serving model its traces (it fell back to
        per-block frames, for good). Where eager runs, regionc's path failed (a LoRA scale's retrace whose
        piece cannot run): the call returns eager's result, and later calls take the next strategy."""
        try:
            result = self.original(*args, **kwargs)
        except Exception as eager_exc:
            log.info("regionc: a call of %s failed compiled (%s) and eagerly; raising eager's error, keeping "
                     "block_tracing=%s", type(self.model).__name__, first_line(exc), self.strategy)
            raise eager_exc from None
        self._fall_back(first_line(exc))
        return result

    def _fall_back(self, reason: str) -> None:
        following = self.next.pop(0)
        log.warning("regionc: block_tracing=%s failed for %s (%s); using block_tracing=%s",
                    self.strategy, type(self.model).__name__, reason, following)
        self.fallbacks.append(f"{self.strategy}: {reason}")
        self._undo()
        torch._dynamo.reset()  # drop the failed strategy's frames
        self._apply(following)

    def _apply(self, strategy: str) -> None:
        reason = self._unusable(strategy)
        if reason is not None:
            if self.config.strict or not self.next:
                raise RuntimeError(f"regionc: block_tracing={strategy} cannot compile {type(self.model).__name__}: "
                                   f"{reason}")
            following = self.next.pop(0)
            log.warning("regionc: block_tracing=%s cannot be used for %s (%s); using block_tracing=%s",
                        strategy, type(self.model).__name__, reason, following)
            self.fallbacks.append(f"{strategy}: {reason}")
            self._apply(following)
            return
        self.strategy = strategy
        self.block_called = False
        self.first_report = len(reports())
        self.warm, self.trace_sets = False, []
        args = {"backend": "regionc", "options": self.options, "dynamic": self.dynamic}
        if strategy == "per_block":
            module_graphs = self.config.cudagraphs is not False  # one graph over the whole forward
            options = {**(self.options or {}), "cudagraphs": False} if module_graphs else self.options
            args["options"] = options
            block_config = Config.build(options)
            for stack in self.stacks:
                if stack.kind and not self.save_traces:
                    log.warning("regionc: the %d block(s) of one kind in %s run eagerly: without saved traces their "
                                "frames share Dynamo's cache with the other kinds, and its guards do not tell "
                                "hooks apart", len(stack.instances), stack.path)
                    continue
                traces = TraceSet(stack.cls.forward, strategy, block_config, options, self.dynamic) \
                    if self.save_traces else None
                if traces is not None:
                    self.trace_sets.append(traces)
                for block in stack.instances:
                    if traces is not None:
                        block.forward = _FirstCallGate(self, SavedTraceForward(traces, block),
                                                       stack.cls.forward.__get__(block))
                    else:
                        block.compile(**args)
                        block._compiled_call_impl = _FirstCallGate(self, block._compiled_call_impl,
                                                                   block._call_impl)
            self.run = self._graphed(self.original) if module_graphs else self.original
            return
        if strategy == "nested_region":
            for stack in self.stacks:
                _mark_nested_region(stack)
        if not self.save_traces:  # a nested-region trace is a full graph: it fails before anything runs, or not at all
            self.run = torch.compile(self.original, fullgraph=strategy == "nested_region", **args)
            return
        traces = TraceSet(type(self.model).forward, strategy, self.config, self.options, self.dynamic)
        self.trace_sets.append(traces)
        run = SavedTraceForward(traces, self.model)
        # one graph over the forward, keyed by the saved trace whose guards the call passes: a replay skips
        # Dynamo's gathering of every weight as an argument and the program's own checks (about 0.1 ms of
        # an 8-row decode step's host time on an H200 host); the trace keeps its own graphs for the calls
        # this one does not take
        graphed = self.config.cudagraphs is not False and self.config.cudagraph_mode == "full"
        self.run = self._graphed(run, run.trace_for) if graphed else run

    def _unusable(self, strategy: str) -> str | None:
        """Why ``strategy`` does not suit this model, or None. Per-block frames run a block's class's forward
        in place of the forward set on an instance, a hook's (diffusers' caches, accelerate's offloading):
        under diffusers' FirstBlockCache every block then ran, never the cached residual (a relative error of
        1e-2 over 5 denoising steps); the full trace runs the hook. Nor do they suit blocks inside layers of
        several classes (``mixed_stack_around``) that hold a small part of the weights: the rest of each layer
        would run eagerly around them."""
        if strategy != "per_block":
            return None
        for stack in self.stacks:
            for block in stack.instances:
                if "forward" in vars(block):  # regionc's own per-block forwards are gone by now (_undo)
                    return f"the blocks of {stack.path} have a forward set on the instance ({name_of(block.forward)})"
        mixed = [(stack.path, around) for stack in self.stacks
                 if (around := mixed_stack_around(self.model, stack.path))]
        if mixed and (share := share_in_blocks(self.model, self.stacks)) < MIN_SHARE_IN_BLOCKS:
            path, around = mixed[0]
            return (f"its repeated blocks {path} are parts of the layers of {around}, which are of several "
                    f"classes, and hold {share:.0%} of its weights: per-block frames would run the rest eagerly")
        return None

    def _graphed(self, run: Callable[..., Any], trace_of: Callable[..., Any] | None = None) -> ModuleGraphs:
        return ModuleGraphs(self.model, run, self.config, settling=background.busy, trace_of=trace_of)

    def remove(self) -> None:
        """Give the model and its blocks back their own forwards (before the model is compiled anew)."""
        self._undo()
        original = self.original
        if getattr(original, "__self__", None) is self.model and \
                getattr(original, "__func__", None) is type(self.model).forward:
            vars(self.model).pop("forward", None)
        else:
            self.model.forward = original

    def _undo(self) -> None:
        for stack in self.stacks:
            for block in stack.instances:
                if self.strategy == "nested_region" and type(block) is _REGION_CLASSES.get((stack.cls, stack.kind)):
                    block.__class__ = stack.cls
                if self.strategy == "per_block":
                    block.__dict__.pop("forward", None)
                    block._compiled_call_impl = None


class PerLayerState(Exception):
    """The first block of a first per-block call is handed state it reads per layer (a Hugging Face cache)."""


def _routes_hub_kernels(block: nn.Module) -> bool:
    """Whether a module of ``block`` calls a function through ``kernels``' per-instance routing (``use_kernelized_func``
    gives each instance its ``_kernel_funcs``)."""
    return any("_kernel_funcs" in vars(module) for module in block.modules())


def _hf_cache(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The class name of the first Hugging Face cache among a block's arguments (a ``*Cache`` of
    transformers: ``DynamicCache``, ``StaticCache``, ``EncoderDecoderCache``, Mamba's), or None."""
    for value in (*args, *kwargs.values()):
        if any(cls.__name__.endswith("Cache") and cls.__module__.startswith("transformers.")
               for cls in type(value).__mro__):
            return type(value).__name__
    return None


class _FirstCallGate:
    """A block's compiled call under per-block tracing, or its eager one for the rest of a first call
    that has shown the trace specializes per layer (:meth:`CompiledForward.eager_rest_of_first_call`)."""

    def __init__(self, owner: CompiledForward, compiled, eager):
        self.owner, self.compiled, self.eager = owner, compiled, eager

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.owner.check_first_block(args, kwargs)
        run = self.eager if self.owner.eager_rest_of_first_call() else self.compiled
        return run(*args, **kwargs)

    def __reduce__(self):
        # pickled as the block's eager call, as __deepcopy__ copies it (looked up on the block while it is
        # loaded, before its attributes are set: its class's); no guard of a saved trace reads it
        return (getattr, (self.eager.__self__, self.eager.__name__))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # a copied model's block runs eagerly until the copy's first call compiles it (CompiledForward._rebuild)
        return copy.deepcopy(self.eager, memo)


class SavedTraceForward:
    """A module's ``forward``, run through the saved traces of its class's forward."""

    def __init__(self, traces: TraceSet, module: nn.Module):
        self.traces = traces
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.traces(self.module, *args, **kwargs)

    def trace_for(self, *args: Any, **kwargs: Any) -> Any:
        """The saved trace this call would run, or None (:meth:`TraceSet.fitting`)."""
        return self.traces.fitting(self.module, args, kwargs)

    def __reduce__(self):
        # Dynamo pickles the traced module, instance attributes included, into a saved trace's guard
        # state; this process's traces (compiled code, live guard managers) must not go with it, and no
        # guard reads a module's forward. It is saved as "no forward".
        return (type(None), ())


def nested_regions_reuse_traces() -> bool:
    """Whether Dynamo stamps out a traced nested region instead of re-tracing it (torch >= 2.12).

    The reuse cache arrived with ``nested_compile_region``'s ``max_reuse_entries`` parameter.
    """
    region = getattr(torch.compiler, "nested_compile_region", None)
    return region is not None and "max_reuse_entries" in inspect.signature(region).parameters


def _unaliased_region(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` as a nested compile region none of whose outputs is an input or views what another
    output views.

    Dynamo refuses a region whose outputs alias each other or its inputs ("Encountered aliasing during
    higher order op tracing"): Flux's and HunyuanVideo's single-stream blocks return the text and image
    halves of one tensor, and T5's blocks hand back the ``position_bias`` they were given. Such an output
    leaves the region through ``region_copy`` (a clone), so those models keep nested regions instead of
    falling back to per-block frames; blocks/inline.py removes the copies that would not change a
    tensor's layout once it has copied the regions into the graph (T5's, not Flux's half). Aliasing is
    read from the view relation (``_base``), which Dynamo traces; the reads stay in the graph unused until
    blocks/inline.py erases them. Views made under ``inference_mode`` keep no ``_base``, so there such a
    region is refused as before. Only outputs computed in the block are looked at: reading an input's
    ``_base`` would specialize the region on whether the input is a view, and the first block's input (a
    view made by the code before the blocks) would no longer share the others' trace. Inputs that alias
    each other (GPT-J's ``sin`` and ``cos``), and outputs that view an input, are still refused, and
    ``regionc.compile`` falls back (logged)."""
    def body(self, *args: Any, **kwargs: Any) -> Any:
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        return _unaliased(forward(self, *args, **kwargs), inputs)

    limit = {"max_reuse_entries": REGION_VARIANTS} if nested_regions_reuse_traces() else {}  # torch >= 2.12
    return torch.compiler.nested_compile_region(body, **limit)


def _unaliased(tree: Any, inputs: list[torch.Tensor]) -> Any:
    """``tree`` with each tensor that is one of ``inputs``, or views what an earlier one views, copied."""
    leaves, spec = torch.utils._pytree.tree_flatten(tree)
    roots: list[torch.Tensor] = []
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            continue
        if any(leaf is t for t in inputs):
            leaves[i] = region_copy(leaf)
            continue
        root = leaf if leaf._base is None else leaf._base
        if any(root is other for other in roots):
            leaves[i] = region_copy(leaf)
        else:
            roots.append(root)
    return torch.utils._pytree.tree_unflatten(leaves, spec)


def _mark_nested_region(stack: Stack) -> None:
    region_class = _region_class(stack.cls, stack.kind)
    for block in stack.instances:
        if type(block) is stack.cls:
            block.__class__ = region_class


def _region_class(cls: type, kind: str) -> type:
    """The nested-region subclass of block class ``cls`` for blocks of ``kind`` of code, made once."""
    region_class = _REGION_CLASSES.get((cls, kind))
    if region_class is None:
        name = _region_name(cls, kind)  # the next process finds it by this name
        region_class = type(name, (cls,), {
            "forward": _unaliased_region(cls.forward),
            "regionc_block_class": cls,  # blocks of every kind are one stack in the graph (blocks/detect.py)
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": cls.__doc__,
        })
        _REGION_CLASSES[(cls, kind)] = region_class
    return region_class


def _region_name(cls: type, kind: str) -> str:
    """``region_of_`` and the block class's module and qualified name (and kind), written so that
    :func:`_block_class_named` reads them back: ``_`` as ``_0`` and ``.`` as ``_1``, then ``_2`` before the
    qualified name and ``_3`` before the kind."""
    def escaped(text: str) -> str:
        return text.replace("_", "_0").replace(".", "_1")

    return f"region_of_{escaped(cls.__module__)}_2{escaped(cls.__qualname__)}" + (f"_3{kind}" if kind else "")


def _block_class_named(name: str) -> tuple[type, str] | None:
    """(block class, kind) that :func:`_region_name` wrote as ``name``, or None (another name, a class that
    cannot be imported: one defined inside a function)."""
    match = re.fullmatch(r"region_of_(\w+?)_2(\w+?)(?:_3([0-9a-f]+))?", name)
    if match is None:
        return None
    path = ".".join(re.sub(r"_([01])", lambda m: "_."[int(m.group(1))], part) for part in match.group(1, 2))
    try:
        found = pydoc.locate(path)  # imports the module, then walks the qualified name; None where it is not
    except pydoc.ErrorDuringImport:
        return None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        return None
    return found, match.group(3) or ""
