"""Compiling in the background: a graph's pieces compile (or load) off the calling thread while
the graph runs eagerly, then the calls switch to the compiled code.

With ``background_compile`` on, the backend hands Dynamo its program as soon as the graph is split:
the first output costs Dynamo's trace plus one eager forward instead of the trace plus every
unique piece's compile, and a server answers its first requests at eager speed instead of waiting
seconds for Inductor. Each piece is swapped for its compiled code the moment that code is ready;
CUDA graphs start once the whole process has nothing left compiling. Inductor's experimental
async mode (``TORCHINDUCTOR_FX_COMPILE_MODE=async+subprocess``) runs graphs eagerly while they
compile in the same way, but it bypasses the caches regionc's store is built on, so regionc
does it per piece, around its own store.

What keeps it safe, and what it costs:

* One worker thread for the process, so jobs run one after another in the order their graphs were
  traced (the first graph's pieces first), and each piece's compile holds Dynamo's compile lock:
  Dynamo and Inductor keep process-wide state (config patches, counters, metrics) that expects one
  compile at a time. A new Dynamo trace in the caller's thread waits for the piece being compiled
  at that moment, not for the whole job; ``regionc.compile`` therefore holds the jobs back until a
  model's first call has returned (:func:`held`), so that call's later block frames never wait.
* Dynamo has installed the graph's guards by the time a background compile runs, so a guard Inductor
  adds on a symbolic size would be missed: the piece checks it on each call instead, and runs eagerly
  where it fails (regionc/compiler/guards.py). A graph traced under autocast, a global state Inductor
  reads, compiles in the calling thread (logged).
* Nothing is captured as a CUDA graph while a job runs anywhere in the process (:func:`busy`): a
  capture must be the only CUDA work of the process, and a piece captured while still eager would
  keep its eager code for good.
* The eager forward does not get regionc's fusion passes or Inductor's fusion: until the switch a
  call costs what eager PyTorch costs, and the GIL is shared with the compile (Python's switch
  interval is :data:`SWITCH_INTERVAL_S` while jobs run, so the caller gets it back sooner).

:func:`wait` blocks until every job submitted so far is done (``regionc.wait_compiled``). A process
that exits while a job runs waits for it (the worker is joined at exit), so what it compiled is in the
cache for the next start.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import torch

#: Python's thread switch interval while background work runs (the default is 5 ms).
SWITCH_INTERVAL_S = 0.0005

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_jobs: set[Future] = set()
_short_interval = contextlib.ExitStack()  # holds switch_interval() from the first queued job to the last
_holds = 0  # open held() blocks
_open = threading.Event()  # set when no held() block is open: queued jobs may start
_open.set()


def submit(job: Callable[[], Any]) -> Future:
    """Run ``job`` on the background compile thread; its future holds what it returned or raised."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regionc-compile")
        if not _jobs:
            _short_interval.enter_context(switch_interval(SWITCH_INTERVAL_S))
        future = _executor.submit(_when_open, job)
        _jobs.add(future)
    future.add_done_callback(_finished)
    return future


def _when_open(job: Callable[[], Any]) -> Any:
    _open.wait()
    return job()


@contextlib.contextmanager
def held():
    """Jobs submitted inside start only once the block exits (they queue meanwhile, and :func:`busy`
    counts them). ``regionc.compile`` holds them over a model's first call: under per-block tracing
    each block class is its own Dynamo frame, and a frame traced (or a saved trace loaded) while a job
    compiles waits for that compile, so without the hold the first output of a model with two block
    classes (Flux) waited for the first class's compile. Never wait for a job inside (it cannot start)."""
    global _holds
    with _lock:
        _holds += 1
        _open.clear()
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            if not _holds:
                _open.set()


def _finished(future: Future) -> None:
    with _lock:
        _jobs.discard(future)
        if not _jobs:
            _short_interval.close()


def busy() -> bool:
    """Whether a background job is queued or running anywhere in this process."""
    return bool(_jobs)


def wait(timeout: float | None = None) -> bool:
    """Block until every background compile submitted so far has finished (or ``timeout`` seconds
    passed); True when none is left. Failures are not raised here: they were logged, and the pieces
    concerned run eagerly (or, with ``strict``, their graph's next call raises)."""
    with _lock:
        jobs = list(_jobs)
    return not wait_futures(jobs, timeout=timeout).not_done


@contextlib.contextmanager
def switch_interval(seconds: float):
    """Python's thread switch interval at most ``seconds`` inside; put back after, unless changed meanwhile."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        if sys.getswitchinterval() == min(before, seconds):
            sys.setswitchinterval(before)


def compile_lock() -> threading.RLock:
    """Dynamo's lock around a frame's trace and compile, which regionc also holds wherever it traces,
    compiles or loads outside Dynamo's own call (saved traces, background jobs): torch.fx's symbolic
    tracing, Inductor's config patches and Dynamo's metrics are process-wide and expect one at a time
    (a background compile beside a saved-trace load failed in ``torch.fx``'s ``CURRENT_PATCHER``)."""
    from torch._dynamo.convert_frame import compile_lock as lock

    return lock


def callers_state() -> Callable[[], contextlib.AbstractContextManager]:
    """A context (to enter in another thread) with this thread's grad and inference mode, CUDA device
    and Dynamo tracing context (all per thread in torch, all read by a compile), and Dynamo's compile lock."""
    from torch._guards import TracingContext, tracing

    lock = compile_lock()

    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    context = TracingContext.try_get()

    @contextlib.contextmanager
    def state():
        with (torch.inference_mode() if inference else torch.set_grad_enabled(grad),
              torch.cuda.device(device) if device is not None else contextlib.nullcontext(),
              tracing(context), lock):
            yield

    return state
