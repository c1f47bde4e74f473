"""What the end-to-end tests share: assertions, and a profiled decode step of an HF model on the GPU."""

from __future__ import annotations

import torch

import regionc

#: In-memory compiles only: counts in the report are then real Inductor compiles.
NO_CACHE = {"cache": False, "strict": True}
#: Whether Inductor's tensorify pass counts a float read only within a product (``scale * scaling``) as
#: tensorified; torch 2.11's counts the product's expression, so it specializes the float.
TENSORIFIES_PRODUCTS = torch.__version__ >= (2, 13)


def compile_regionc(model, options=None):
    return torch.compile(model, backend="regionc", options={**NO_CACHE, **(options or {})})


def assert_close(actual, expected, atol=1e-5, rtol=1e-4):
    actual_leaves, expected_leaves = _leaves(actual), _leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)


def lora_scalings(model: torch.nn.Module) -> list[dict]:
    """Every module's ``scaling`` dict (PEFT's LoRA layers keep their scales so), in module order."""
    return [module.scaling for module in model.modules() if isinstance(getattr(module, "scaling", None), dict)]


def block_compiles(report: regionc.Report) -> int:
    return report.count("compiled", "block")


def _leaves(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        return _leaves(value.to_tuple())
    return []


def profiled_hf_decode_step(model, cache_dir) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """One 8-row decode step of an HF decoder on a CUDA ``StaticCache`` through the backend (no CUDA graphs,
    so every launch shows), after a first compiled step at the same position: the names of the step's CUDA
    kernels, its output and eager's output for the same step."""
    from transformers import StaticCache

    torch._dynamo.reset()
    vocab = model.config.vocab_size
    cache = StaticCache(config=model.config, max_cache_len=64)
    prompt = torch.randint(0, vocab, (8, 5), device="cuda")
    token = torch.randint(0, vocab, (8, 1), device="cuda")
    position = torch.tensor([5], device="cuda")
    fn = torch.compile(model, backend="regionc", options={"cache_dir": str(cache_dir), "cudagraphs": False})

    def step(call):
        out = call(input_ids=token, past_key_values=cache, cache_position=position).last_hidden_state
        for layer in cache.layers:  # back to position 5 for the next step
            layer.cumulative_length.fill_(5)
        return out

    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
        model(input_ids=prompt, past_key_values=cache)
        step(fn)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = step(fn)
            torch.cuda.synchronize()
        expected = step(model)
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return kernels, out, expected
