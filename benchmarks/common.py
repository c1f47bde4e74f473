"""Shared by the benchmark scripts: environment description, GPU timing, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def cuda_median_ms(fn, warmup: int = 5, iters: int = 30) -> float:
    """Median wall time of ``fn()`` on the GPU, timed with CUDA events around each call."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def write_results(out_dir: str | os.PathLike, name: str, payload: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=str))
    return path


def decode_ops_swapped() -> dict[str, Any]:
    """regionc options that swap in the decode ops (decode attention over the un-expanded cache, the
    skinny linears) whatever the decision table says, and leave every other pass's kernel out: the
    A/B that decides those table rows."""
    from regionc.config import PASS_NAMES

    return {"kernel_choice": "always",
            "passes": {name: name in ("decode_attention", "skinny_linear") for name in PASS_NAMES}}
