"""Host time of copying a decode step's small inputs into a CUDA graph's input buffers.

A replay first copies each activation argument into the buffer the graph reads
(``regionc/cudagraph/staging.py``). An HF decode step has two: the token ids (``[8, 1]`` int64) and
the cache position (``[1]`` int64). The host time of those copies is spent before the launch on
every step. This asks what one ``copy_`` per input costs against one ``torch._foreach_copy_`` for
all of them, with the GPU idle (as after the previous step's synchronisation) and with work queued,
and, for scale, what the replay of a 327-kernel graph costs the host.

    python benchmarks/experiments/input_copy_host_time.py
"""

from __future__ import annotations

import statistics
import time

import torch


def host_us(fn, gpu_busy: bool, busy_work: torch.Tensor, iters: int = 400) -> float:
    """Median host time of ``fn()`` in µs (the first 50 calls are warm-up)."""
    times = []
    for _ in range(iters):
        if gpu_busy:
            busy_work.mul_(1.0)  # the GPU has work queued, as after a replay
        else:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if gpu_busy:
            torch.cuda.synchronize()
    return statistics.median(times[50:]) * 1e6


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 0
    ids = torch.ones(8, 1, dtype=torch.long, device="cuda")
    position = torch.tensor([3900], device="cuda")
    ids_buffer, position_buffer = torch.empty_like(ids), torch.empty_like(position)
    busy_work = torch.randn(8192, 8192, device="cuda")
    cases = {
        "two copy_": lambda: (ids_buffer.copy_(ids), position_buffer.copy_(position)),
        "one copy_": lambda: ids_buffer.copy_(ids),
        "_foreach_copy_ of two": lambda: torch._foreach_copy_([ids_buffer, position_buffer], [ids, position]),
        "empty (python call)": lambda: None,
    }
    for gpu_busy in (False, True):
        for name, fn in cases.items():
            print(f"{'busy' if gpu_busy else 'idle'} {name:25s} {host_us(fn, gpu_busy, busy_work):6.1f} us host")

    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    x = torch.randn(8, 2048, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x * 2
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        y = x
        for _ in range(327):
            y = y * 1.0001
    print(f"idle replay of a 327-kernel graph {host_us(graph.replay, False, busy_work):6.1f} us host")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
