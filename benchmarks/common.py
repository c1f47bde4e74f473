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


def compiled_hf_decoder(layers: int):
    """(model, step): an HF ``LlamaModel`` of ``layers`` narrow layers (a step's host work does not depend on
    width) on a prefilled ``StaticCache``, under ``regionc.compile`` (its saved traces in a new cache directory),
    and the keyword arguments of one decode step, not yet run. The experiments on a step's host time use it."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaModel, StaticCache

    import regionc

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=layers, vocab_size=128)
    torch.manual_seed(0)
    model = LlamaModel(config).eval()
    cache = StaticCache(config=config, max_cache_len=64)
    step = dict(input_ids=torch.ones(2, 1, dtype=torch.long), past_key_values=cache, use_cache=True,
                cache_position=torch.tensor([6]))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (2, 6)), past_key_values=cache, use_cache=True)
    regionc.compile(model, options={"cache_dir": tempfile.mkdtemp()})
    return model, step
