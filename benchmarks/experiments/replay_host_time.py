"""Where does the host time of a replayed ``regionc.compile`` decode step go, outside the GPU?

``regionc.compile`` graphs an HF decoder's whole forward as one CUDA graph (``regionc/cudagraph/module.py``);
a step's host time before and after the launch is what a synchronising decode loop adds to the GPU's span.
On the CPU, with a backend whose replay launches nothing, this times a step of HF ``LlamaModel`` (narrow: the
host's work does not depend on width) on a ``StaticCache``, and the parts of ``ModuleGraphs.__call__``
back to back: the saved trace's guard check (``trace_of``), the weights' address check, the check that the
cache holds the tensors it held at capture, and the runner (graph key, input copies, outputs). The part a
step spends in a check inside the sequence is the step's time less its time with that check skipped
(later checks stay skipped, so each line is what one more check adds).

    python benchmarks/experiments/replay_host_time.py --out DIR [--layers 32]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import write_results  # noqa: E402


class _NoLaunch:
    """A CUDA-graph backend for CPU tensors whose capture runs the function once and whose replay does nothing."""

    class _Graph:
        def replay(self) -> None:
            pass

    def accepts(self, tensor) -> bool:
        return True

    def capturing(self) -> bool:
        return False

    def pool_handle(self, private: bool):
        return object()

    @contextlib.contextmanager
    def warmup(self):
        yield

    def capture(self, fn, args, pool):
        return self._Graph(), fn(*args)

    def memory_reserved(self) -> int:
        return 0


def median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(layers: int, calls: int) -> dict:
    import torch

    from benchmarks.common import compiled_hf_decoder
    from regionc.cudagraph import module
    from regionc.cudagraph.module import ModuleGraphs, moved_tensor
    from regionc.cudagraph.runner import at_addresses

    model, step = compiled_hf_decoder(layers)
    with torch.no_grad():
        model(**step)
        forward = model.forward
        graphed = forward.run = ModuleGraphs(model, forward.run.forward, forward.config, backend=_NoLaunch(),
                                             settling=forward.run.settling, trace_of=forward.run.trace_of)
        for _ in range(4):  # warm-up, capture, replays
            model(**step)
        assert graphed.runner.replays > 0, "the step is not replayed"
        trace = graphed.trace_of(**step)
        held = next(iter(graphed._held.values()))
        row = {"layers": layers, "step_us": median_us(lambda: model(**step), calls),
               "back_to_back_us": {
                   "guard check (trace_of)": median_us(lambda: graphed.trace_of(**step), calls),
                   "weights' addresses": median_us(
                       lambda: at_addresses(graphed._statics, graphed._addresses, graphed._indices), calls),
                   "cache holds its tensors": median_us(lambda: moved_tensor(held), calls)},
               "held_paths": len(held), "in_sequence_us": {}}
        whole = median_us(lambda: graphed(**step), calls)
        skips = [("guard check (trace_of)", graphed, "trace_of", lambda *a, **k: trace),
                 ("weights' addresses", module, "at_addresses", lambda *a: True),
                 ("cache holds its tensors", module, "moved_tensor", lambda edges: None)]
        for name, owner, attribute, stand_in in skips:
            setattr(owner, attribute, stand_in)
            without = median_us(lambda: graphed(**step), calls)
            row["in_sequence_us"][name] = whole - without
            whole = without
        row["in_sequence_us"]["the rest (runner, keys, outputs)"] = whole
        module.at_addresses, module.moved_tensor = at_addresses, moved_tensor
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    row = measure(args.layers, args.calls)
    print(row, flush=True)
    print(write_results(args.out, "replay_host_time", {"rows": [row]}))


if __name__ == "__main__":
    main()
