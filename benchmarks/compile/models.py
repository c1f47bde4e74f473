"""The models the time-to-first-output benchmark compiles: real configs, real input sizes, random weights.

Each :class:`Workload` builds its model on the GPU in bf16, makes the inputs of one forward, names the
repeated blocks (what per-block compile compiles: diffusers' ``compile_repeated_blocks`` for the
diffusers models, ``layer.compile()`` per decoder layer, as accelerate's ``compile_regions`` does,
for the LLMs) and says how to read the output tensor.

* ``demo``: regionc's built-in Llama-style decoder (d=2048, 32/8 heads, FFN 8192), prefill 1×2048.
* ``hf_llama``: HF ``LlamaModel`` 32 × 2048 (32/8 heads, FFN 8192), prefill 1×2048 without a cache.
* ``flux``: FLUX.1-dev's transformer (19 double + 38 single blocks, 24 heads × 128), 1024² image:
  4096 image tokens + 512 text tokens, guidance on.
* ``wan``: Wan2.2-TI2V-5B's transformer (30 blocks, 24 heads × 128, FFN 14336, 48 latent channels),
  an 81×480×832 video: a 21×30×52 latent, 8190 tokens after the (1, 2, 2) patch, 512 text tokens.

``layers`` overrides the depth (each repeated stack's length), for quick runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

MODELS = ("demo", "hf_llama", "flux", "wan")


@dataclasses.dataclass
class Workload:
    model: Any
    inputs: dict[str, Any]
    blocks: Callable[[], list[Any]]  # the repeated blocks, for per-block compile
    output: Callable[[Any], Any]  # the forward's result -> its main tensor
    describe: str


def build(name: str, layers: int | None = None) -> Workload:
    import torch

    torch.manual_seed(0)
    with torch.device("cuda"):
        return _BUILDERS[name](layers)


def skeleton(name: str, layers: int | None = None) -> Workload:
    """The model as a server builds it before reading its checkpoint: on the meta device, then given
    uninitialized CUDA memory (``to_empty``), as ``from_pretrained`` does. Its inputs are meta tensors:
    take real ones from elsewhere."""
    import torch

    with torch.device("meta"):
        work = _BUILDERS[name](layers)
    work.model.to_empty(device="cuda")
    return work


def _demo(layers: int | None) -> Workload:
    import torch

    from regionc.models.llama import LlamaConfig, build_demo_model

    model = build_demo_model(LlamaConfig(n_layers=layers or 32), dtype=torch.bfloat16, device="cuda")
    return Workload(model, {"tokens": torch.randint(0, 32000, (1, 2048))}, lambda: list(model.layers),
                    lambda out: out, f"demo decoder {len(model.layers)} x 2048, prefill 1x2048")


def _hf_llama(layers: int | None) -> Workload:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers or 32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                   max_position_embeddings=8192)
    cfg._attn_implementation = "sdpa"
    model = transformers.LlamaModel(cfg).to(torch.bfloat16).eval()
    return Workload(model, {"input_ids": torch.randint(0, 32000, (1, 2048)), "use_cache": False},
                    lambda: list(model.layers), lambda out: out.last_hidden_state,
                    f"HF LlamaModel {cfg.num_hidden_layers} x 2048 (32/8 heads), prefill 1x2048")


def _flux(layers: int | None) -> Workload:
    import torch
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(num_layers=layers or 19, num_single_layers=2 * layers if layers else 38,
                                   guidance_embeds=True)
    _to_bf16(model)
    image, text = 4096, 512  # 1024² through the 8× VAE and 2×2 packing; T5's 512 tokens
    inputs = {"hidden_states": torch.randn(1, image, 64, dtype=torch.bfloat16),
              "encoder_hidden_states": torch.randn(1, text, 4096, dtype=torch.bfloat16),
              "pooled_projections": torch.randn(1, 768, dtype=torch.bfloat16),
              "timestep": torch.tensor([1.0], dtype=torch.bfloat16),
              "img_ids": torch.zeros(image, 3), "txt_ids": torch.zeros(text, 3),
              "guidance": torch.tensor([3.5]), "return_dict": False}
    return Workload(model, inputs, lambda: [*model.transformer_blocks, *model.single_transformer_blocks],
                    lambda out: out[0], f"FLUX.1-dev transformer {len(model.transformer_blocks)} + "
                                        f"{len(model.single_transformer_blocks)} blocks, 1024^2 (4096 + 512 tokens)")


def _wan(layers: int | None) -> Workload:
    import torch
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128,
                                  in_channels=48, out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336,
                                  num_layers=layers or 30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  eps=1e-6)
    _to_bf16(model)
    inputs = {"hidden_states": torch.randn(1, 48, 21, 30, 52, dtype=torch.bfloat16),  # 81x480x832 video
              "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, 512, 4096, dtype=torch.bfloat16), "return_dict": False}
    return Workload(model, inputs, lambda: list(model.blocks), lambda out: out[0],
                    f"Wan2.2-TI2V-5B transformer {len(model.blocks)} blocks, 81x480x832 video (8190 tokens)")


def _to_bf16(model) -> None:
    """bf16, except the modules the class keeps in float32, as ``from_pretrained(torch_dtype=bf16)`` loads it."""
    import torch

    keep = set(model._keep_in_fp32_modules or ())
    model.eval()
    for name, module in model.named_modules():
        if not module._parameters and not module._buffers:
            continue
        fp32 = any(part in keep for part in name.split("."))
        for param in module._parameters.values():
            if param is not None and param.is_floating_point():
                param.data = param.data.to(torch.float32 if fp32 else torch.bfloat16)
        for key, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[key] = buf.to(torch.float32 if fp32 else torch.bfloat16)


_BUILDERS: dict[str, Callable[[int | None], Workload]] = {
    "demo": _demo, "hf_llama": _hf_llama, "flux": _flux, "wan": _wan}
