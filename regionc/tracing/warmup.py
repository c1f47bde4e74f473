"""``regionc.warmup(model, *args, **kwargs)``: compile (or load) a ``regionc.compile`` model in the background.

What a compile needs from a forward is the module structure and the input shapes, not the weights'
values: weights are graph inputs. A server spends seconds reading its checkpoint before the first
request, so it can build the model with uninitialized weights (``torch.device("meta")`` then
``to_empty``, as ``from_pretrained`` does), start the warm-up on example inputs, and read the weights
into the parameters *in place* (``copy_``, ``load_state_dict``) while the warm-up traces, compiles or
loads the pieces from the cache. The first real call then finds everything compiled.

The warm-up is one forward call in a daemon thread, run under the caller's grad and inference mode
and CUDA device (they are per thread in torch, and part of what Dynamo guards on), on whatever values
the weights hold at that moment; its output is dropped. A real call that arrives while it runs waits
for it (:class:`~regionc.tracing.compile.CompiledForward` serializes calls until one has succeeded).
While it runs, Python's thread switch interval is
:data:`~regionc.compiler.background.SWITCH_INTERVAL_S` instead of 5 ms: the
compile holds the GIL almost throughout, and a weight reader waits up to one interval each time it
asks for the GIL again, which is several times per tensor (Wan2.2-5B's 10 GB read beside a warm-up:
3.7–4.9 s at 5 ms, 2.5–3.9 s at 0.5 ms, 1.7–3.1 s alone; ``benchmarks/results/compile_time/``).

A CUDA build of torch that sees no CUDA device warms up in the calling thread instead (logged):
there, Dynamo tracing in the warm-up thread while the caller's thread loaded a state dict crashed
the process (torch 2.11, in ``FakeTensorMode.__enter__``, whose device-less set-up changes
process-wide state). No CUDA graph is captured in a warm-up: the first call of an input shape only
warms up (``regionc/cudagraph/module.py``), so nothing is captured while another thread copies
weights.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch
from torch import nn

from regionc.compiler.background import SWITCH_INTERVAL_S, switch_interval
from regionc.report import first_line
from regionc.tracing.compile import CompiledForward

log = logging.getLogger("regionc")

def warmup(model: nn.Module, *args: Any, **kwargs: Any) -> Future:
    """Run ``model(*args, **kwargs)`` once in a background thread; returns a future of the elapsed seconds.

    ``model`` must come from ``regionc.compile``. The future's ``result()`` re-raises what the forward
    raised (the failure is also logged); the model stays usable either way.
    """
    if not isinstance(model, nn.Module) or not isinstance(model.__dict__.get("forward"), CompiledForward):
        raise TypeError(f"regionc.warmup: expected a model returned by regionc.compile, got {type(model).__name__}; "
                        "call regionc.compile(model) first")
    future: Future = Future()
    future.set_running_or_notify_cancel()
    # grad mode, inference mode and the current CUDA device are per thread: the warm-up takes the caller's
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    name = type(model).__name__

    def run() -> None:
        start = time.perf_counter()
        try:
            with (torch.inference_mode() if inference else torch.set_grad_enabled(grad),
                  torch.cuda.device(device) if device is not None else contextlib.nullcontext(),
                  switch_interval(SWITCH_INTERVAL_S)):
                model(*args, **kwargs)
        except Exception as exc:  # handed to the caller through the future
            log.warning("regionc: warm-up of %s failed (%s); the first call compiles instead", name, first_line(exc))
            future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        log.info("regionc: warm-up of %s done in %.2fs", name, seconds)
        future.set_result(seconds)

    if torch.version.cuda is not None and not torch.cuda.is_available():
        log.warning("regionc: warming up %s in the calling thread: this CUDA build of torch sees no CUDA "
                    "device, and a trace in another thread beside eager work crashed there", name)
        run()
        return future

    def in_thread() -> None:
        try:
            run()
        except BaseException as exc:  # SystemExit and the like: the caller's result() must not wait forever
            future.set_exception(exc)

    log.info("regionc: warming up %s in the background", name)
    threading.Thread(target=in_thread, name=f"regionc-warmup-{name}", daemon=True).start()
    return future
