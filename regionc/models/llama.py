"""A Llama-style decoder: the built-in demo model and the benchmark model.

Written the way models in the wild are (Hugging Face Llama, gpt-fast), so regionc's
block detection and fusion passes see the patterns they will meet in production:
fp32-upcast RMSNorm, rotate-half RoPE from cos/sin tables, GQA through
``repeat_interleave`` in front of ``scaled_dot_product_attention``, SwiGLU, and the
layers in an ``nn.ModuleList``. With ``max_batch``/``max_seq`` set, each layer owns a
static KV cache (gpt-fast style) updated in place at ``input_pos``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    dim: int = 2048
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn_dim: int = 8192
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq: int = 4096
    #: >0 turns on the static per-layer KV cache (decode with ``input_pos``).
    max_batch: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def tiny(cls, n_layers: int = 2, **overrides) -> LlamaConfig:
        """A CPU-test-sized config: hidden 64, 4 heads, 2 KV heads."""
        base = dict(vocab_size=128, dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq=64)
        return cls(**{**base, **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q, k, cos, sin):
    """q, k: [B, H, S, D]; cos, sin: [B, S, D] (the Hugging Face convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class KVCache(nn.Module):
    def __init__(self, batch: int, heads: int, seq: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (batch, heads, seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, input_pos=None):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= input_pos[:, None]
            attn_kwargs = {"attn_mask": mask[None, None]}
        else:
            attn_kwargs = {"is_causal": True}
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, **attn_kwargs)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, cos, sin, input_pos=None):
        x = x + self.attn(self.input_norm(x), cos, sin, input_pos)
        return x + self.mlp(self.post_attn_norm(x))


class LlamaDecoder(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def setup_kv_cache(self, max_batch: int, dtype: torch.dtype) -> None:
        """Give every layer a static KV cache of ``max_batch`` × ``cfg.max_seq`` (gpt-fast style)."""
        device = self.embed.weight.device
        for layer in self.layers:
            cache = KVCache(max_batch, self.cfg.n_kv_heads, self.cfg.max_seq, self.cfg.head_dim, dtype)
            layer.attn.kv_cache = cache.to(device)

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        b, s = tokens.shape
        x = self.embed(tokens)
        positions = input_pos if input_pos is not None else torch.arange(s, device=tokens.device)
        cos, sin = self.rope_tables(positions.expand(b, s), x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos)
        return self.lm_head(self.norm(x))


def build_demo_model(cfg: LlamaConfig, dtype: torch.dtype = torch.float32, device: str = "cpu",
                     seed: int = 0) -> LlamaDecoder:
    """Random weights scaled so activations stay O(1) through many layers.

    Built directly on ``device``: initializing a 1B-parameter model on the host first takes
    longer than compiling it.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaDecoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".input_norm." in name or ".post_attn_norm." in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.02)
    return model.to(device=device, dtype=dtype).eval()
