"""The device side of one CUDA graph: capturing it and what that capture costs.

The runner (:mod:`regionc.cudagraph.runner`) decides when a piece warms up, captures or replays;
this module makes the CUDA calls that do it: the capture stream, the pool handles, a capture that
fails without leaving the allocator or the RNG believing it is still capturing. Kept apart so
that tests can swap in a fake with the same methods (``tests/cudagraph/fakes.py``) and run the
runner's logic on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch


class CudaGraphBackend:
    """The CUDA calls the runner makes; tests swap in a fake with the same methods."""

    def __init__(self, device: torch.device | int | None = None):
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._shared = None
        self._shared_graphs = weakref.WeakSet()  # the live graphs captured into ``_shared``
        self._stream = None

    def accepts(self, t: torch.Tensor) -> bool:
        return t.device == self.device

    def capturing(self) -> bool:
        """Whether the current stream is being captured into a graph (someone else's capture)."""
        return torch.cuda.is_current_stream_capturing()

    def pool_handle(self, private: bool):
        """A new pool, or the one the shared graphs use. A pool lives in the allocator only while a graph
        captured into it does: once they are all gone (a runner dropped its graphs), capturing into the
        old handle trips the allocator's ``use_count > 0`` assert, so the shared handle is renewed."""
        if private:
            return torch.cuda.graph_pool_handle()
        if not self._shared_graphs:
            self._shared = torch.cuda.graph_pool_handle()
        return self._shared

    @property
    def stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        return self._stream

    @contextlib.contextmanager
    def warmup(self):
        """Warm-up runs on the capture stream (per-stream lazy state, e.g. cuBLAS workspaces, is set up there)."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            current.wait_stream(self.stream)

    def capture(self, fn: Callable[..., Any], args: Sequence[Any], pool) -> tuple[Any, Any]:
        """Capture ``fn(*args)`` into a new graph in ``pool``; (graph, outputs). Kernels are not run."""
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            current = torch.cuda.current_stream()
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                graph.capture_begin(pool, capture_error_mode="thread_local")
                try:
                    out = fn(*args)
                except BaseException:
                    try:
                        graph.capture_end()  # ends the (invalidated) capture; its own error is expected
                    except Exception:
                        # some torch versions raise before telling the allocator the capture is over
                        end = getattr(torch._C, "_cuda_endAllocateToPool", None)
                        if end is not None:
                            with contextlib.suppress(Exception):
                                end(self.device.index, pool)
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize()
                    self._reset_generator_capture_state()
                    raise
                graph.capture_end()
            current.wait_stream(self.stream)
        if pool is self._shared:
            self._shared_graphs.add(graph)
        return graph, out

    def _reset_generator_capture_state(self) -> None:
        """A capture that fails in ``cudaStreamEndCapture`` never runs the RNG's capture epilogue, so
        the device's generator keeps believing it is capturing ("Offset increment outside graph
        capture" on the next random op). Swap in a clone of its state, which starts out idle."""
        generator = torch.cuda.default_generators[self.device.index]
        with contextlib.suppress(AttributeError, RuntimeError):  # torch without graph-safe RNG states
            generator.graphsafe_set_state(generator.clone_state())

    def memory_reserved(self) -> int:
        return torch.cuda.memory_reserved(self.device)


@dataclasses.dataclass
class Capture:
    """One capture's graph and outputs, and what it cost: the report's capture time and pool bytes."""

    graph: Any
    out: Any
    seconds: float
    pool_bytes: int  # memory the pool reserved for it (0 when it fit in segments the pool had)


def capture_graph(backend, fn: Callable[..., Any], args: Sequence[Any], private: bool) -> Capture:
    """Capture ``fn(*args)`` through ``backend`` into the shared pool, or a private one of its own."""
    reserved = backend.memory_reserved()
    start = time.perf_counter()
    graph, out = backend.capture(fn, args, backend.pool_handle(private))
    seconds = time.perf_counter() - start
    return Capture(graph, out, seconds, max(0, backend.memory_reserved() - reserved))
