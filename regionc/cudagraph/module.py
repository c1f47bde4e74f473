"""One CUDA graph per input shape over a module's whole forward: compiled blocks and eager glue together.

``regionc.compile`` on torch 2.11 compiles each block as its own Dynamo frame (``per_block``); the
code between the blocks (embedding, final norm, head) is plain Python. A graph per block would
leave that glue, and a launch per block, on the host of every decode step: 4.4 ms against 3.2 ms
for ``backend="regionc"``'s one graph over all pieces (32-layer demo decoder, H100,
``benchmarks/results/decode/h100-2026-11-25.json``). Capturing the forward as a whole (the way
vLLM and SGLang capture their model runners) gives one launch per step instead.

A replay runs no Python, so the forward's own checks are skipped. What keeps it correct:

- tensor arguments are copied into the graph's input buffers; each argument's shape, dtype and
  device, every other argument's value, the keyword names, grad mode, inference mode, autocast and
  the module's ``training`` flag choose the graph (a new combination warms up, then captures);
- a forward that writes in place to one of its tensor arguments is not graphed (one log line), since
  a replay would lose the write; nor is one whose result (a tensor, nested tuples/lists/dicts, a
  dataclass or a Hugging Face ``ModelOutput``) holds anything but tensors, None and the call's own
  argument objects (an HF cache passed in is handed back as is), since a replay returns what capture saw;
- weights and buffers (a KV cache among them) are read and written where they were at capture:
  update them in place (``copy_``), never by assigning new tensors. ``cudagraph_check_addresses``
  checks this on every call and raises :class:`~regionc.cudagraph.runner.CudaGraphAddressError`;
- Python state the forward reads (other than the above) is frozen into the graph at capture, as
  in every model-runner CUDA graph: a forward whose control flow depends on such state should
  not be compiled with graphs (``cudagraphs=False``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from regionc.config import Config
from regionc.cudagraph.runner import CudaGraphAddressError, GraphPool, PieceGraphRunner, should_use_cudagraphs
from regionc.cudagraph.sizes import as_output_list
from regionc.report import new_report

log = logging.getLogger("regionc")

class ModuleGraphs:
    """``module``'s ``forward`` under one CUDA graph per input key; plain ``forward`` off CUDA."""

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any], config: Config, *, backend=None):
        self.module = module
        self.forward = forward
        self.config = config
        self._backend = backend  # tests pass a fake
        self.runner: PieceGraphRunner | None = None
        self.report = None
        self._addresses: list[int] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.runner is None:
            # a fake backend (tests) graphs CPU tensors too
            if self._backend is None and not should_use_cudagraphs(self.config, [*args, *kwargs.values()]):
                return self.forward(*args, **kwargs)
            self._start()
        if self.config.cudagraph_check_addresses:
            self._check_addresses()
        context = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                   torch.is_autocast_enabled(), self.module.training)
        values = (*args, *kwargs.values())
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        versions = [t._version for t in tensors]
        with self.runner.pool.forward():
            out = self.runner(context, tuple(kwargs), len(args), *values)
        if self.runner.capturable:  # a replay leaves the arguments alone; an eager run may not
            self._refuse_what_a_replay_would_break(tensors, versions, values, out)
        return out

    def _run_forward(self, _context: tuple, names: tuple[str, ...], positional: int, *values: Any) -> Any:
        return self.forward(*values[:positional], **dict(zip(names, values[positional:])))

    def _start(self) -> None:
        self.report = new_report()
        self.report.trace_source = f"{type(self.module).__name__}.forward under one CUDA graph per input shape"
        pool = GraphPool(self.config, self.report, backend=self._backend, name="module forward")
        self.runner = PieceGraphRunner(
            self._run_forward, name=f"{type(self.module).__name__}.forward", pool=pool, config=self.config,
            report=self.report, static_input_indices=(), is_last=True)
        self.report.note_cudagraphs(mode="module forward")
        self._addresses = self._current_addresses()

    def _refuse_what_a_replay_would_break(self, tensors: list[torch.Tensor], versions: list[int],
                                          arguments: tuple, out: Any) -> None:
        written = [i for i, (t, before) in enumerate(zip(tensors, versions)) if t._version != before]
        if written:
            self.runner.disable(f"the forward writes in place to its tensor argument(s) {written}")
            return
        leaves, _ = as_output_list(out)
        other = [v for v in leaves if not (v is None or isinstance(v, torch.Tensor) or any(v is a for a in arguments))]
        if other:
            self.runner.disable(f"the forward returns a {type(other[0]).__name__} computed in Python, which a "
                                "replay would not recompute; graphs need tensors, None or the call's own arguments")

    def _current_addresses(self) -> list[int]:
        return [t.data_ptr() for t in (*self.module.parameters(), *self.module.buffers())]

    def _check_addresses(self) -> None:
        if self._current_addresses() != self._addresses:
            raise CudaGraphAddressError(
                f"regionc: a parameter or buffer of {type(self.module).__name__} moved since its CUDA graphs "
                "were captured; weights and buffers must stay in place (update them with copy_())")

