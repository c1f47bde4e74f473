"""Tiny models for the tests: shapes of real architectures, sizes a 2-core CPU compiles quickly."""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- diffusion transformer (Flux-like)
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Modulation(nn.Module):
    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.lin = nn.Linear(dim, chunks * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.chunks, dim=-1)


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, joint attention (Flux's double block)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.img_mod, self.txt_mod = Modulation(dim, 6), Modulation(dim, 6)
        self.img_qkv, self.txt_qkv = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.img_proj, self.txt_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.img_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.txt_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))

    def _heads(self, x):
        b, s, _ = x.shape
        return x.view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, img, txt, vec):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        img_n = F.layer_norm(img, img.shape[-1:]) * (1 + i_scale1) + i_shift1
        txt_n = F.layer_norm(txt, txt.shape[-1:]) * (1 + t_scale1) + t_shift1
        iq, ik, iv = self._heads(self.img_qkv(img_n))
        tq, tk, tv = self._heads(self.txt_qkv(txt_n))
        q, k, v = torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        txt_a, img_a = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_proj(img_a)
        img = img + i_gate2 * self.img_mlp(F.layer_norm(img, img.shape[-1:]) * (1 + i_scale2) + i_shift2)
        txt = txt + t_gate1 * self.txt_proj(txt_a)
        txt = txt + t_gate2 * self.txt_mlp(F.layer_norm(txt, txt.shape[-1:]) * (1 + t_scale2) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over the concatenated tokens, parallel attention + MLP (Flux's single block)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.mod = Modulation(dim, 3)
        self.lin1 = nn.Linear(dim, 3 * dim + 2 * dim)
        self.lin2 = nn.Linear(dim + 2 * dim, dim)

    def forward(self, x, vec):
        shift, scale, gate = self.mod(vec)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        qkv, mlp = self.lin1(h).split([3 * self.dim, 2 * self.dim], dim=-1)
        b, s, _ = x.shape
        q, k, v = qkv.view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return x + gate * self.lin2(torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=-1))


class TinyDiT(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, n_double: int = 2, n_single: int = 3):
        super().__init__()
        self.dim = dim
        self.img_in, self.txt_in = nn.Linear(16, dim), nn.Linear(32, dim)
        self.time_in = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim, heads) for _ in range(n_double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(dim, heads) for _ in range(n_single))
        self.final = nn.Linear(dim, 16)

    def forward(self, img, txt, t):
        vec = self.time_in(timestep_embedding(t, self.dim))
        img, txt = self.img_in(img), self.txt_in(txt)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec)
        x = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            x = block(x, vec)
        return self.final(x[:, txt.shape[1]:])


# ---------------------------------------------------------------- models without reuse
class NoRepeats(nn.Module):
    """Layers of different widths held as plain attributes: nothing to share."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(32, 64), nn.Linear(64, 48), nn.Linear(48, 8)

    def forward(self, x):
        return self.c(torch.tanh(self.b(F.relu(self.a(x)))))


class HybridLayers(nn.Module):
    """A hybrid model's layers (Zamba2's Mamba and attention layers): two classes alternating, so no
    repeated blocks; the second kind holds a list of small adapters of one class, and, like each layer's
    empty list of dropouts, that is all the repeated blocks there are."""

    class Mixer(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            self.dropouts = nn.ModuleList([nn.Sequential(), nn.Sequential()])  # weightless: not blocks

        def forward(self, x):
            for dropout in self.dropouts:
                x = dropout(x)
            return x + torch.tanh(self.proj(x))

    class Attention(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            self.adapters = nn.ModuleList([nn.Sequential(nn.Linear(dim, 2, bias=False), nn.Linear(2, dim, bias=False))
                                           for _ in range(2)])  # low-rank: a small part of the weights

        def forward(self, x):
            h = torch.softmax(self.proj(x), dim=-1)
            for adapter in self.adapters:
                h = h + adapter(h)
            return x + h

    def __init__(self, dim: int = 16, pairs: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(kind(dim) for _ in range(pairs) for kind in (self.Mixer, self.Attention))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ScaledLayer(nn.Module):
    """A layer whose forward bakes its own index in: reuse across layers is impossible."""

    def __init__(self, dim: int, index: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.scale = 1.0 / (index + 1)

    def forward(self, x):
        return x + self.scale * torch.tanh(self.lin(x))


class PerLayerConstant(nn.Module):
    def __init__(self, dim: int = 32, n_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(ScaledLayer(dim, i) for i in range(n_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class GrowingStages(nn.Module):
    """Stages of one class, each as wide as or wider than the last: a block that takes other inputs than
    its siblings compiles apart."""

    def __init__(self, widths=(8, 16, 16, 16)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        for stage in self.stages:
            x = F.gelu(stage(x))
        return x


class WidthBlock(nn.Module):
    """A UNet resnet in miniature: a projection to its own width, with a shortcut."""

    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.proj = nn.Linear(width_in, width_out)
        self.shortcut = nn.Linear(width_in, width_out, bias=False)

    def forward(self, x):
        return F.silu(self.proj(x)) + self.shortcut(x)


class ManyWidths(nn.Module):
    """One block class at more widths than torch keeps traces of one nested region by default (8), as a
    UNet's resnets come at each resolution and skip width."""

    def __init__(self, widths=tuple(range(8, 30, 2))):
        super().__init__()
        self.blocks = nn.ModuleList(WidthBlock(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class VmapLayer(nn.Module):
    """Ends in a ``torch.vmap`` (HF Mamba's selective scan does): Dynamo records no module for the call
    that closes the transform, which falls after the block's last node. ``mapped=False``: no transform."""

    def __init__(self, dim: int, mapped: bool = True):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.mapped = mapped

    def forward(self, x):
        h = self.lin(x)
        if not self.mapped:
            return x + h.tanh()
        return torch.vmap(lambda row, skip: skip + row * row.sum().tanh())(h, x)


class VmapLayers(nn.Module):
    """A stack of :class:`VmapLayer`; ``over_stack`` maps the whole stack (of plain layers) over the batch."""

    def __init__(self, dim: int = 8, n_layers: int = 3, over_stack: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(VmapLayer(dim, mapped=not over_stack) for _ in range(n_layers))
        self.over_stack = over_stack

    def forward(self, x):
        return torch.vmap(self._stack)(x) if self.over_stack else self._stack(x)

    def _stack(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class StageLayer(nn.Module):
    """A residual MLP; a stage's first one also projects its input (as ResNet's first bottleneck does)."""

    def __init__(self, width: int, first: bool):
        super().__init__()
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.proj = nn.Linear(width, width) if first else None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return skip + self.down(F.gelu(self.up(x)))


class Stage(nn.Module):
    def __init__(self, width_in: int, width: int, depth: int):
        super().__init__()
        self.down = nn.Linear(width_in, width)
        self.layers = nn.ModuleList(StageLayer(width, first=i == 0) for i in range(depth))

    def forward(self, x):
        x = self.down(x)
        for layer in self.layers:
            x = layer(x)
        return x


class StagedLayers(nn.Module):
    """Stages of growing width, each a stack of identical layers (ConvNeXt, ResNet, Swin, SegFormer):
    the stages are no repeated blocks, the layers inside each are."""

    def __init__(self, widths=(8, 16), depth: int = 3):
        super().__init__()
        self.stages = nn.ModuleList(Stage(a, b, depth) for a, b in zip((widths[0], *widths), widths))

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


class ScaledBetweenLayers(nn.Module):
    """A float attribute multiplied in after every layer, in the glue: changed between calls, Dynamo reads
    it from a 0-d tensor once (``.item()``) and every piece after the first uses it."""

    def __init__(self, dim: int = 8, n_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.scale = 1.0

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x)) * self.scale
        return x


class ScaledPerCall(nn.Module):
    """diffusers' LoRA scale passed per call (``joint_attention_kwargs={"scale": s}``): the forward scales a
    float attribute of every layer by ``scale`` on entry and sets it again on exit, to a value that depends
    on ``scale`` (diffusers divides it back out; this one does not, so a wrong write-back shows).
    ``by_rows`` adds the input's row count to it: a size, under ``dynamic=True`` a symbol."""

    def __init__(self, dim: int = 8, n_layers: int = 3, by_rows: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(ScaledByAttribute(dim) for _ in range(n_layers))
        self.by_rows = by_rows

    def forward(self, x, scale: float):
        for layer in self.layers:
            layer.scaling["default"] *= scale
        for layer in self.layers:
            x = layer(x)
        for layer in self.layers:
            layer.scaling["default"] = layer.scaling["default"] / scale + scale * 0.5 \
                + (x.shape[0] if self.by_rows else 0)
        return x


class ScaledByAttribute(nn.Module):
    """A residual layer scaled by a float in a dict attribute, as PEFT's LoRA layers keep theirs."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.scaling = {"default": 1.0}

    def forward(self, x):
        return x + torch.relu(self.lin(x)) * self.scaling["default"]


class ResidualMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(x)))


class GraphBreakStack(nn.Module):
    """Four identical blocks with a graph break after the second: Dynamo hands over two graphs."""

    def __init__(self, dim: int = 32, n_layers: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(ResidualMLP(dim) for _ in range(n_layers))

    def forward(self, x):
        for layer in self.layers[:2]:
            x = layer(x)
        torch._dynamo.graph_break()
        for layer in self.layers[2:]:
            x = layer(x)
        return x


class CountingLayer(nn.Module):
    """A block that reads the step position and its own layer's counter, as HF's sliding-window cache layers do."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, position: int, counter: int):
        return x + self.proj(x) * position - counter * 0.5


class PerLayerCounters(nn.Module):
    """Blocks that each read a Python int of their own from the caller's state, layer 0's doubling as the
    position every block reads: Dynamo makes the ints symbolic (``dynamic=True``), one symbol per layer."""

    def __init__(self, dim: int = 16, n_layers: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(CountingLayer(dim) for _ in range(n_layers))

    def forward(self, x, counters: list[int]):
        for layer, counter in zip(self.layers, counters):
            x = layer(x, counters[0], counter)
        return x


class ScaledResidual(nn.Module):
    """A block made of ops that follow their input's layout (a channels-last input gives a channels-last output)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(channels, 1, 1))

    def forward(self, x):
        return F.gelu(x * self.scale) + x


class ChannelsLastBetweenBlocks(nn.Module):
    """Two blocks over an image, the second reading a channels-last view: a spatial attention's
    ``transpose(1, 2).reshape(b, c, h, w)``, as a diffusers VAE mid-block hands its second resnet."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList(ScaledResidual(channels) for _ in range(2))
        self.mix = nn.Linear(channels, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        x = self.blocks[0](x)
        x = self.mix(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        x = self.blocks[1](x)
        return x.sum(dim=(2, 3)) + x.amax(dim=(2, 3))


class PatchBlock(nn.Module):
    """A token block that ends in a projection, so it returns a dense tensor whatever it reads."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, scale):
        return self.proj(self.norm(x)) * scale


class PatchEmbeddedStack(nn.Module):
    """A DiT's entry: a patch embedding's ``flatten(2).transpose(1, 2)`` hands the first block a strided
    view, and every later block a dense tensor (PixArt, Sana)."""

    def __init__(self, channels: int = 8, dim: int = 16, depth: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, 2, stride=2)
        self.blocks = nn.ModuleList(PatchBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, channels)

    def forward(self, x, scale):
        h = self.patch(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            h = block(h, scale)
        return self.out(h)


class ModulatedBlock(nn.Module):
    """A DiT block scaled and shifted by the modulation vectors it is handed."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, modulation):
        shift, scale = modulation.unbind(1)
        return x + self.proj(x * (1 + scale[:, None]) + shift[:, None])


class SlicedModulations(nn.Module):
    """Chroma's single blocks: one network computes every block's modulation vectors at once, and each
    block is handed its own slice of them, a view with the same strides at another offset."""

    def __init__(self, dim: int = 16, depth: int = 3):
        super().__init__()
        self.modulations = nn.Linear(dim, 2 * depth * dim)
        self.blocks = nn.ModuleList(ModulatedBlock(dim) for _ in range(depth))

    def forward(self, x, t):
        modulations = self.modulations(t).view(t.shape[0], 2 * len(self.blocks), -1)
        for i, block in enumerate(self.blocks):
            x = block(x, modulations[:, 2 * i:2 * i + 2])
        return x


class ConcatenatedModulations(nn.Module):
    """Chroma's double blocks: every block's modulation vectors come from one network, and each block is
    handed a ``cat`` of two slices of them, at offsets of its own. The code between blocks only moves data,
    and its constants differ per layer."""

    def __init__(self, dim: int = 16, depth: int = 3):
        super().__init__()
        self.modulations = nn.Linear(dim, 2 * depth * dim)
        self.blocks = nn.ModuleList(ModulatedBlock(dim) for _ in range(depth))

    def forward(self, x, t):
        depth = len(self.blocks)
        modulations = self.modulations(t).view(t.shape[0], 2 * depth, -1)
        for i, block in enumerate(self.blocks):
            x = block(x, torch.cat([modulations[:, i:i + 1], modulations[:, depth + i:depth + i + 1]], dim=1))
        return x


class SlotWriter(nn.Module):
    """A block that stores what it computes in the slot of a shared tensor it is handed, in place."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, slot):
        slot.copy_(self.proj(x))
        return x + slot.sum(0)


class SlicedScratch(nn.Module):
    """One scratch tensor for every layer, made in the forward: each block writes its own slice of it in
    place, and the forward reads all of it after the last block."""

    def __init__(self, dim: int = 16, depth: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(SlotWriter(dim) for _ in range(depth))

    def forward(self, x):
        scratch = x.new_zeros(len(self.blocks), *x.shape)
        for i, block in enumerate(self.blocks):
            x = block(x, scratch[i])
        return x + scratch.sum(0)


class CheckpointedLayer(ResidualMLP):
    """A residual MLP that recomputes its body in backward (``torch.utils.checkpoint``, as HF's
    ``gradient_checkpointing_enable``): Dynamo traces the body as a higher-order op's subgraph."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__(dim)
        self.scale = scale

    def body(self, x):
        return x + self.scale * self.down(F.gelu(self.up(x)))

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.body, x, use_reentrant=False)


class CheckpointedStack(nn.Module):
    def __init__(self, dim: int = 32, scales=(1.0, 1.0, 1.0)):
        super().__init__()
        self.layers = nn.ModuleList(CheckpointedLayer(dim, s) for s in scales)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class FunctionLayer(nn.Module):
    """A residual layer that holds its activation as a function attribute, which Dynamo checks by identity."""

    def __init__(self, dim: int, act):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.act = act

    def forward(self, x):
        return x + self.act(self.lin(x))


class PerLayerFunction(nn.Module):
    """Layers of one class holding different functions: the middle one runs other code."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(FunctionLayer(dim, act) for act in (F.gelu, F.silu, F.gelu))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _local_scale_class():
    class LocalScale(nn.Module):  # a class defined in a function (the kernels package wraps functions so)
        def __init__(self, scale: float):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return torch.tanh(x) * self.scale

    return LocalScale


LocalScale = _local_scale_class()


class LocalScaleLayer(nn.Module):
    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.act = LocalScale(scale)

    def forward(self, x):
        return x + self.act(self.lin(x))


class PerLayerLocalValue(nn.Module):
    """Layers whose function-local-class modules hold different values: the middle one scales otherwise."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(LocalScaleLayer(dim, s) for s in (0.5, 1.0, 0.5))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Gate(enum.Enum):
    TANH = 1
    SIGMOID = 2


class GateLayer(nn.Module):
    """A residual layer that picks its gate by an enum member, which Dynamo checks by identity."""

    def __init__(self, dim: int, gate: Gate):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.gate = gate

    def forward(self, x):
        h = self.lin(x)
        return x + (torch.tanh(h) if self.gate is Gate.TANH else torch.sigmoid(h))


class PerLayerEnum(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(GateLayer(dim, g) for g in (Gate.TANH, Gate.SIGMOID, Gate.TANH))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
