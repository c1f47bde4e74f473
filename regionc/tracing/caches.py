"""Hugging Face caches that would set themselves up inside a compiled call are set up before it.

``generate`` makes a fresh ``StaticCache`` for every call, and its layers allocate their tensors in
the model's first forward, the prefill (``lazy_initialization``). One of the tensors they keep is
what ``cumulative_length.to(device)`` returns, the layer's own input tensor: traced inside a nested
region, torch refuses that stored alias ("An intermediate tensor ... aliases an input"), and
``regionc.compile`` gave up nested regions for per-block frames, which specialize per layer on HF's
``layer_idx``, and then traced every layer. HF's answer for a prefill that runs compiled is
``Cache.early_initialization``, which ``generate`` itself calls before a chunked prefill, with the
model's dtype and device and the shapes of ``_get_static_cache_init_shape()``; regionc does the same
before a call whose compileable cache is not set up yet.

Where HF would not (the helper's None: layers over several devices, keys and values of other widths,
heads that do not split over tensor-parallel ranks), where the keys' dtype may not be the weights'
(under autocast, or weights of several float dtypes), where the cache has other layers than the
model runs (set up early, a layer the model never reaches would hold zeros it never asked for), and
where the first layer's key projection is not as wide as the config's heads say (HF reads
``num_key_value_heads`` from the config, which a model without grouped heads, GPT-NeoX, ignores: a
config carrying it got a cache of the wrong width, and the call failed), the cache is left to set
itself up in the call, with one log line: ``regionc.compile`` then falls back as before (logged).
Only nested regions refuse the alias, so other block tracings leave every cache to the call.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from regionc.logs import log_once

log = logging.getLogger("regionc")

#: caches already looked at (set up here, or left to set themselves up): a decode step skips them in
#: one lookup
_SEEN: weakref.WeakSet = weakref.WeakSet()


def set_up_caches(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any], log_key: object) -> None:
    """Set up, before the call, each compileable HF cache among the arguments whose layers are not set up
    (what was done, or why not, is logged once per ``log_key``: the compiled model's token)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) or not callable(getattr(type(value), "early_initialization", None)) \
                or value in _SEEN or not getattr(value, "layers", None):
            continue
        _SEEN.add(value)
        pending = [layer for layer in value.layers
                   if getattr(layer, "supports_early_init", False) and not getattr(layer, "is_initialized", True)]
        if pending and all(getattr(layer, "is_compileable", False) for layer in pending):
            _set_up(model, value, args, kwargs, log_key)


def _set_up(model: torch.nn.Module, cache: Any, args: tuple, kwargs: dict[str, Any], log_key: object) -> None:
    name = f"{type(model).__name__}'s {type(cache).__name__}"
    batch = _batch_size(args, kwargs)
    floats = {(p.dtype, p.device) for p in model.parameters() if p.is_floating_point()}
    shape = _init_shape(model)
    layers = _text_config(model, "num_hidden_layers")
    why = None
    if layers != len(cache.layers):
        why = f"it has {len(cache.layers)} layers, the model runs {'an unknown number' if layers is None else layers}"
    elif batch is None:
        why = "no input_ids or inputs_embeds tells its batch size"
    elif len(floats) != 1:
        why = "the weights are of several float dtypes or on several devices"
    elif torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        why = "autocast is on, so its keys' dtype may not be the weights'"
    elif shape is None:
        why = "transformers gives no shape to set it up with (several devices, tensor parallelism, MLA)"
    else:
        why = _key_width_disagrees(model, shape)
    if why is None:
        (dtype, device), = floats
        try:
            cache.early_initialization(batch_size=batch, num_heads=shape[0], head_dim=shape[1], dtype=dtype,
                                       device=device)
        except Exception as exc:  # noqa: BLE001 - HF refused (layers and shapes disagree): it sets itself up
            why = f"early_initialization raised {type(exc).__name__}: {exc}"
    if why is None:
        log_once((log_key, "cache-set-up", type(cache)), "regionc: set up %s before the call, as HF's "
                 "generate does for a compiled prefill (a cache set up inside a nested region is refused)", name)
    else:
        log_once((log_key, "cache-left", type(cache)), "regionc: %s sets itself up inside the call (%s)",
                 name, why)


def _batch_size(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The call's batch size: its ``input_ids``' or ``inputs_embeds``' first dim, or its first tensor argument's."""
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value.shape[0]
    return None


def _text_config(model: torch.nn.Module, name: str) -> int | None:
    """An int of the model's decoder config (``num_hidden_layers``, ``num_attention_heads``), or None."""
    try:
        return int(getattr(model.config.get_text_config(decoder=True), name))
    except Exception:  # noqa: BLE001 - not a transformers model, or a config without it
        return None


#: a layer's key projection, and projections computing queries, keys and values together (GQA: the
#: queries' heads, then the keys' and the values')
_KEY_PROJECTIONS = ("k_proj", "key")
_QKV_PROJECTIONS = ("qkv_proj", "query_key_value", "c_attn", "Wqkv")


def _key_width_disagrees(model: torch.nn.Module, shape: tuple[Any, Any]) -> str | None:
    """Why the first key projection the model holds outputs other widths than ``shape`` (KV heads, head
    dim) gives its keys, or None (it agrees, or no projection of a known name says)."""
    heads, head_dim = (value[0] if isinstance(value, list) else value for value in shape)
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        width = getattr(module, "out_features", None) or getattr(module, "nf", None)  # nn.Linear, HF's Conv1D
        if not isinstance(width, int) or kind not in (*_KEY_PROJECTIONS, *_QKV_PROJECTIONS):
            continue
        expected = heads * head_dim
        if kind in _QKV_PROJECTIONS:
            queries = _text_config(model, "num_attention_heads")
            if queries is None:
                return None
            expected += (queries + heads) * head_dim
        if width == expected:
            return None
        return (f"its {name} outputs {width} features, not the {expected} that transformers' {heads} KV heads of "
                f"{head_dim} give")
    return None


def _init_shape(model: torch.nn.Module) -> tuple[Any, Any] | None:
    """(KV heads, head dim), per layer where they differ, as ``generate`` sets a cache up with; None
    where transformers would not set it up early (or does not say how)."""
    try:
        from transformers.generation.utils import GenerationMixin

        return GenerationMixin._get_static_cache_init_shape(model)
    except Exception:  # noqa: BLE001 - another transformers, a model it does not know: leave the cache be
        return None
