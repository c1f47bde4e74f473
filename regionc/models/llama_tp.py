"""Tensor-parallel version of the demo decoder (gpt-fast's ``tp.py`` pattern), on ``torch.distributed``.

:func:`shard_llama` turns a single-device :class:`~regionc.models.llama.LlamaDecoder` into this
rank's shard, in place on a copy: q/k/v and gate/up are column-parallel (this rank keeps its
heads / its ffn columns), o and down are row-parallel (this rank keeps the matching input
columns) and their partial sums are added across ranks by an all-reduce. Embedding, norms and
lm_head stay replicated, so every rank returns the full logits.

The all-reduce is the functional collective (``torch.distributed._functional_collectives``):
Dynamo traces it into the graph as ``_c10d_functional.all_reduce`` + ``wait_tensor`` with the
group's name (the same string on every rank), so it lands inside the block's piece and every
rank's block fingerprint is the same.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from regionc.models.llama import LlamaDecoder


class RowParallelLinear(nn.Linear):
    """``nn.Linear`` on this rank's input columns, followed by a sum over the ranks of ``group``."""

    def __init__(self, in_features: int, out_features: int, group=None):
        super().__init__(in_features, out_features, bias=False)
        self.group = group if group is not None else dist.group.WORLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(F.linear(x, self.weight), "sum", self.group)


def _shard(weight: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    size = weight.shape[dim]
    if size % world:
        raise ValueError(f"regionc: dimension {dim} of size {size} does not split over {world} ranks")
    return weight.narrow(dim, rank * (size // world), size // world).clone()


def _column(linear: nn.Linear, rank: int, world: int) -> nn.Linear:
    out = nn.Linear(linear.in_features, linear.out_features // world, bias=False)
    out.weight = nn.Parameter(_shard(linear.weight.detach(), 0, rank, world), requires_grad=False)
    return out


def _row(linear: nn.Linear, rank: int, world: int, group) -> RowParallelLinear:
    out = RowParallelLinear(linear.in_features // world, linear.out_features, group)
    out.weight = nn.Parameter(_shard(linear.weight.detach(), 1, rank, world), requires_grad=False)
    return out


def shard_llama(model: LlamaDecoder, rank: int | None = None, world_size: int | None = None,
                group=None) -> LlamaDecoder:
    """This rank's tensor-parallel shard of ``model`` (a copy; ``model`` is left as it is)."""
    rank = dist.get_rank(group) if rank is None else rank
    world = dist.get_world_size(group) if world_size is None else world_size
    cfg = model.cfg
    if cfg.n_heads % world or cfg.n_kv_heads % world or cfg.ffn_dim % world:
        raise ValueError(f"regionc: heads {cfg.n_heads}/{cfg.n_kv_heads} and ffn {cfg.ffn_dim} "
                         f"must divide by the world size {world}")
    tp = copy.deepcopy(model)
    for layer in tp.layers:
        attn, mlp = layer.attn, layer.mlp
        attn.q_proj = _column(attn.q_proj, rank, world)
        attn.k_proj = _column(attn.k_proj, rank, world)
        attn.v_proj = _column(attn.v_proj, rank, world)
        attn.o_proj = _row(attn.o_proj, rank, world, group)
        attn.n_heads, attn.n_kv_heads = cfg.n_heads // world, cfg.n_kv_heads // world
        if attn.kv_cache is not None:  # keep only this rank's kv heads
            attn.kv_cache.k = _shard(attn.kv_cache.k, 1, rank, world)
            attn.kv_cache.v = _shard(attn.kv_cache.v, 1, rank, world)
        mlp.gate_proj = _column(mlp.gate_proj, rank, world)
        mlp.up_proj = _column(mlp.up_proj, rank, world)
        mlp.down_proj = _row(mlp.down_proj, rank, world, group)
    return tp
