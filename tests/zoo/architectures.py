"""Tiny random-weight models of real architectures, built from their libraries' own config classes.

Each entry builds a model at a given depth (the number of repeated blocks, per stack) and the
inputs its library's docs would pass. Widths are the smallest that keep the architecture's features
(grouped-query attention, MoE routing, sliding windows, softcapping, relative position bias, joint
text/image attention); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[int], tuple[torch.nn.Module, dict[str, Any]]]  # depth -> (model, forward kwargs)
    library: str


def _ids(vocab: int = 128, length: int = 8) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


_DECODER = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=128, max_position_embeddings=128)


def _transformers(config_name: str, model_name: str, module: str | None = None, inputs=None, **config):
    def build(depth: int):
        import transformers

        source = transformers if module is None else __import__(module, fromlist=[model_name])
        cfg = getattr(transformers, config_name)(**config)
        depths = {attribute: depth for attribute in ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")
                  if attribute in config or hasattr(cfg, attribute) and attribute != "num_layers"}
        cfg = getattr(transformers, config_name)(**{**config, **depths})  # what follows depth (layer_types) with it
        cfg._attn_implementation = "sdpa" if getattr(source, model_name)._supports_sdpa else "eager"
        model = getattr(source, model_name)(cfg).eval()
        return model, (inputs() if inputs else {"input_ids": _ids(cfg.vocab_size)})
    return build


def _decoder(prefix: str, **extra):
    return _transformers(f"{prefix}Config", f"{prefix}Model", **{**_DECODER, **extra})


TRANSFORMERS = [
    Architecture("llama", _decoder("Llama"), "transformers"),
    Architecture("mistral", _decoder("Mistral", sliding_window=None), "transformers"),
    Architecture("mixtral", _decoder("Mixtral", num_local_experts=4, num_experts_per_tok=2), "transformers"),
    Architecture("qwen2", _decoder("Qwen2"), "transformers"),
    Architecture("qwen3", _decoder("Qwen3", head_dim=16), "transformers"),
    Architecture("qwen3_moe", _decoder("Qwen3Moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=32, decoder_sparse_step=1), "transformers"),
    Architecture("gemma", _decoder("Gemma", head_dim=16), "transformers"),
    Architecture("gemma2", _decoder("Gemma2", head_dim=16, sliding_window=4), "transformers"),
    Architecture("gemma3_text", _transformers("Gemma3TextConfig", "Gemma3TextModel", **_DECODER, head_dim=16,
                                              sliding_window=4), "transformers"),
    Architecture("phi3", _decoder("Phi3", pad_token_id=0), "transformers"),
    Architecture("gpt2", _transformers("GPT2Config", "GPT2Model", n_embd=64, n_head=4, n_layer=2, vocab_size=128,
                                       n_positions=128), "transformers"),
    Architecture("gpt_neox", _decoder("GPTNeoX", num_key_value_heads=4), "transformers"),
    Architecture("falcon", _transformers("FalconConfig", "FalconModel", hidden_size=64, num_attention_heads=4,
                                         vocab_size=128, new_decoder_architecture=True, num_kv_heads=2),
                 "transformers"),
    Architecture("olmo2", _decoder("Olmo2"), "transformers"),
    Architecture("starcoder2", _decoder("Starcoder2", sliding_window=None), "transformers"),
    Architecture("granite", _decoder("Granite"), "transformers"),
    Architecture("mamba", _transformers("MambaConfig", "MambaModel", hidden_size=64, state_size=8, vocab_size=128,
                                        num_hidden_layers=2), "transformers"),
    Architecture("bert", _transformers("BertConfig", "BertModel", hidden_size=64, intermediate_size=128,
                                       num_attention_heads=4, vocab_size=128, max_position_embeddings=64),
                 "transformers"),
    Architecture("t5_encoder", _transformers("T5Config", "T5EncoderModel", d_model=64, d_kv=16, d_ff=128, num_heads=4,
                                             vocab_size=128, num_layers=2), "transformers"),
    Architecture("vit", _transformers("ViTConfig", "ViTModel", hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, image_size=32, patch_size=8,
                                      inputs=lambda: {"pixel_values": _randn(1, 3, 32, 32)}), "transformers"),
    Architecture("ministral", _decoder("Ministral", head_dim=16, sliding_window=4), "transformers"),
    Architecture("modernbert", _transformers("ModernBertConfig", "ModernBertModel", hidden_size=64,
                                             intermediate_size=128, num_attention_heads=4, vocab_size=128,
                                             max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=4,
                                             num_hidden_layers=2), "transformers"),
    Architecture("dinov2", _transformers("Dinov2Config", "Dinov2Model", hidden_size=64, intermediate_size=128,
                                         num_attention_heads=4, image_size=32, patch_size=8, num_hidden_layers=2,
                                         inputs=lambda: {"pixel_values": _randn(1, 3, 32, 32)}), "transformers"),
    Architecture("siglip_vision", _transformers("SiglipVisionConfig", "SiglipVisionModel", hidden_size=64,
                                                intermediate_size=128, num_attention_heads=4, image_size=32,
                                                patch_size=8, num_hidden_layers=2,
                                                inputs=lambda: {"pixel_values": _randn(1, 3, 32, 32)}),
                 "transformers"),
    Architecture("whisper_encoder", _transformers(
        "WhisperConfig", "WhisperEncoder", module="transformers.models.whisper.modeling_whisper", d_model=64,
        encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16, vocab_size=128,
        encoder_layers=2, inputs=lambda: {"input_features": _randn(1, 16, 32)}), "transformers"),
]


def _diffusers(model_name: str, inputs: Callable[[], dict[str, Any]], layers=("num_layers",), **config):
    def build(depth: int):
        import diffusers

        model = getattr(diffusers, model_name)(**config, **{name: depth for name in layers}).eval()
        return model, {**inputs(), "return_dict": False}
    return build


DIFFUSERS = [
    Architecture("flux", _diffusers(
        "FluxTransformer2DModel", layers=("num_layers", "num_single_layers"), patch_size=1, in_channels=16,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
        inputs=lambda: {"hidden_states": _randn(1, 16, 16), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "pooled_projections": _randn(1, 32, seed=2), "timestep": torch.tensor([0.5]),
                        "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3)}), "diffusers"),
    Architecture("wan", _diffusers(
        "WanTransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=16, ffn_dim=64, rope_max_seq_len=32,
        inputs=lambda: {"hidden_states": _randn(1, 4, 2, 8, 8), "timestep": torch.tensor([500]),
                        "encoder_hidden_states": _randn(1, 8, 32, seed=1)}), "diffusers"),
    Architecture("sd3", _diffusers(
        "SD3Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        out_channels=4, pos_embed_max_size=16,
        inputs=lambda: {"hidden_states": _randn(1, 4, 8, 8), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "pooled_projections": _randn(1, 32, seed=2), "timestep": torch.tensor([500])}), "diffusers"),
    Architecture("pixart", _diffusers(
        "PixArtTransformer2DModel", sample_size=8, attention_head_dim=16, num_attention_heads=2, in_channels=4,
        out_channels=8, cross_attention_dim=32, caption_channels=32, norm_type="ada_norm_single",
        inputs=lambda: {"hidden_states": _randn(1, 4, 8, 8), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "timestep": torch.tensor([500]),
                        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}), "diffusers"),
    Architecture("hunyuan_video", _diffusers(
        "HunyuanVideoTransformer3DModel", layers=("num_layers", "num_single_layers"), in_channels=4, out_channels=4,
        num_attention_heads=2, attention_head_dim=16, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        text_embed_dim=32, pooled_projection_dim=32, rope_axes_dim=(4, 6, 6),
        inputs=lambda: {"hidden_states": _randn(1, 4, 1, 4, 4), "timestep": torch.tensor([500]),
                        "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "encoder_attention_mask": torch.ones(1, 8), "pooled_projections": _randn(1, 32, seed=2),
                        "guidance": torch.tensor([3500.0])}), "diffusers"),
    Architecture("ltx_video", _diffusers(
        "LTXVideoTransformer3DModel", in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
        inputs=lambda: {"hidden_states": _randn(1, 16, 8), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "timestep": torch.tensor([500]), "encoder_attention_mask": torch.ones(1, 8),
                        "num_frames": 1, "height": 4, "width": 4}), "diffusers"),
    Architecture("cogvideox", _diffusers(
        "CogVideoXTransformer3DModel", num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        time_embed_dim=32, text_embed_dim=32, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        max_text_seq_length=8,
        inputs=lambda: {"hidden_states": _randn(1, 2, 4, 8, 8), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "timestep": torch.tensor([500])}), "diffusers"),
    Architecture("sana", _diffusers(
        "SanaTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
        sample_size=8, patch_size=1,
        inputs=lambda: {"hidden_states": _randn(1, 4, 8, 8), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "timestep": torch.tensor([500])}), "diffusers"),
]

DIFFUSERS += [
    Architecture("qwenimage", _diffusers(
        "QwenImageTransformer2DModel", patch_size=2, in_channels=16, out_channels=4, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        inputs=lambda: {"hidden_states": _randn(1, 16, 16), "encoder_hidden_states": _randn(1, 8, 16, seed=1),
                        "encoder_hidden_states_mask": torch.ones(1, 8, dtype=torch.long),
                        "timestep": torch.tensor([1.0]), "img_shapes": [(1, 4, 4)]}), "diffusers"),
    Architecture("skyreels_v2", _diffusers(
        "SkyReelsV2Transformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
        in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        inputs=lambda: {"hidden_states": _randn(1, 4, 2, 16, 16), "encoder_hidden_states": _randn(1, 12, 16, seed=1),
                        "timestep": torch.tensor([500])}), "diffusers"),
    Architecture("allegro", _diffusers(
        "AllegroTransformer3DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8,
        inputs=lambda: {"hidden_states": _randn(1, 4, 8, 8, 8), "encoder_hidden_states": _randn(1, 16, 8, seed=1),
                        "timestep": torch.tensor([500])}), "diffusers"),
    Architecture("cogview4", _diffusers(
        "CogView4Transformer2DModel", patch_size=2, in_channels=4, attention_head_dim=4, num_attention_heads=4,
        out_channels=4, text_embed_dim=8, time_embed_dim=8, condition_dim=4,
        inputs=lambda: {"hidden_states": _randn(1, 4, 8, 8), "encoder_hidden_states": _randn(1, 8, 8, seed=1),
                        "timestep": torch.tensor([500]), "original_size": torch.tensor([[64, 64]]),
                        "target_size": torch.tensor([[64, 64]]), "crop_coords": torch.tensor([[0, 0]])}), "diffusers"),
    # each block reads its own slices of one modulation tensor: glue that only moves data, per layer
    Architecture("chroma", _diffusers(
        "ChromaTransformer2DModel", layers=("num_layers", "num_single_layers"), patch_size=1, in_channels=4,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=3,
        inputs=lambda: {"hidden_states": _randn(1, 16, 4), "encoder_hidden_states": _randn(1, 8, 32, seed=1),
                        "img_ids": _randn(16, 3, seed=2), "txt_ids": _randn(8, 3, seed=3),
                        "timestep": torch.tensor([1.0])}), "diffusers"),
    # lists of images and captions; its RoPE runs with CUDA autocast turned off
    Architecture("z_image", _diffusers(
        "ZImageTransformer2DModel", layers=("n_layers", "n_refiner_layers"), in_channels=4, dim=64, n_heads=2,
        n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32],
        inputs=lambda: {"x": [_randn(4, 1, 8, 8)], "t": torch.tensor([0.5]), "cap_feats": [_randn(6, 32, seed=1)]}),
        "diffusers"),
]

ARCHITECTURES = {arch.name: arch for arch in TRANSFORMERS + DIFFUSERS}
