"""A fake CUDA-graph backend that behaves like the real one, so the runner's logic is testable on the CPU.

``FakeBackend.capture`` records fn and its static args and, like a real capture, leaves no effect
on data (it undoes in-place writes); ``FakeGraph.replay`` re-runs fn on the *captured* args (their
storage at capture) and writes the results into the *captured* output tensors — so stale inputs, skipped copies, lost
in-place updates and overwritten outputs show up exactly as they would on a GPU.
"""

from __future__ import annotations

import contextlib

import torch

from regionc.cudagraph.sizes import as_output_list


class FakeGraph:
    def __init__(self, backend, fn, args, outputs):
        self.backend, self.fn, self.args, self.outputs = backend, fn, args, outputs

    def replay(self):
        self.backend.replays += 1
        _capturing[0] += 1  # what it runs is the captured work: code inside keeps its own graphs' state
        try:
            fresh, _ = as_output_list(self.fn(*self.args))
        finally:
            _capturing[0] -= 1
        for kept, new in zip(self.outputs, fresh):
            if isinstance(kept, torch.Tensor) and kept.data_ptr() != new.data_ptr():
                kept.copy_(new)


#: captures under way in any fake backend (a real capture is a property of the stream, seen by every pool)
_capturing = [0]


class FakeBackend:
    def __init__(self, fail: Exception | None = None, accepts=lambda t: True, state=()):
        """``state``: tensors the captured function writes besides its args (a module's buffers);
        capture restores them too."""
        self.fail, self._accepts, self.state = fail, accepts, list(state)
        self.captures, self.replays, self.handles = 0, 0, []
        self._shared = object()

    def accepts(self, t):
        return self._accepts(t)

    def capturing(self):
        return _capturing[0] > 0

    def pool_handle(self, private):
        return object() if private else self._shared

    @contextlib.contextmanager
    def warmup(self):
        yield

    def capture(self, fn, args, pool):
        self.handles.append(pool)
        if self.fail is not None:
            raise self.fail
        written = [*args, *self.state]
        snapshot = [a.clone() if isinstance(a, torch.Tensor) else None for a in written]
        _capturing[0] += 1
        try:
            out = fn(*args)
        finally:
            _capturing[0] -= 1
        for a, saved in zip(written, snapshot):
            if saved is not None and not torch.equal(a, saved):
                a.copy_(saved)  # a capture records work, it does not do it
        self.captures += 1
        outputs, _ = as_output_list(out)
        # a graph reads the storage its inputs had at capture: a tensor whose storage is swapped later
        # (``p.data = ...``) is read where it was, as on a GPU
        captured = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        return FakeGraph(self, fn, captured, outputs), out

    def memory_reserved(self):
        return 1000 * self.captures
