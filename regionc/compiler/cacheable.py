"""Calls in Dynamo's graph that AOTAutograd's cache refuses or keys too loosely, rewritten before the split.

AOTAutograd's cache saves a graph only if every call in it is on its allowlist (``check_node_safe``);
one call off the list and the whole graph is compiled again on every start (plain ``torch.compile``
bypasses its cache the same way). For a regionc piece, that means a piece that is never cached. Three
spellings that Dynamo leaves in real models are off the list, though nothing about them needs it, and
one is on it but keyed too loosely:

* unread NumPy calls on constants. Dynamo traces NumPy code through ``torch._numpy`` into the graph
  and leaves the calls even where it used their value at trace time as a constant: diffusers' Flux
  computes its ControlNet interval as ``int(np.ceil(len(blocks) / len(samples)))``, which leaves
  ``wrapped_ceil(2.0)`` and a ``wrapped_item`` of it, with no user, once per block. A NumPy call that
  nothing reads and that reads only constants (or other such calls) reads no tensor of the graph, so it
  writes none either: it is dropped. A dead NumPy call on a graph value stays (``ndarray.fill`` and
  ufuncs with ``out=`` write their input).
* autocast turned off where it is off. Dynamo records ``with torch.autocast(device, enabled=False):``
  (a RoPE or a norm kept in fp32: Z-Image, OmniGen, Mochi, GPT-2's upcast attention) as an
  ``_enter_autocast``/``_exit_autocast`` pair around the region, and AOTAutograd's cache on torch
  2.13 refuses both calls (2.11's takes them). Where autocast is already off for that device at that
  point (off in the caller, which Dynamo guards on and the piece's key records, and off in every
  region around it), the pair changes nothing and is dropped; a pair that turns autocast off inside
  an autocast region stays.
* a factory call that names no dtype. ``torch.ones(n)`` makes the default dtype, which AOTAutograd's
  cache on torch 2.11 leaves out of its key: a piece compiled under a float32 default came back from it
  under a float64 one, float32 where eager makes float64. Each such call is given the dtype it made
  when Dynamo traced it, so the graph says what it computes.
* a ``Tensor`` method as a function. Dynamo records ``x.split(sizes)`` with sizes read by ``.tolist()``
  as a call of the function ``torch.Tensor.split`` (Idefics3 and SmolVLM split their image features
  so); the same call as a method on a tensor is on the list, and is what the function does.
"""

from __future__ import annotations

import torch
import torch.fx
from torch._dynamo import utils as dynamo_utils
from torch.amp.autocast_mode import _enter_autocast, _exit_autocast

from regionc.blocks.fingerprint import AUTOCAST_DEVICES

_NUMPY_WRAPPERS = tuple(getattr(dynamo_utils, name) for name in
                        ("numpy_to_tensor_wrapper", "numpy_method_wrapper", "numpy_operator_wrapper")
                        if isinstance(getattr(dynamo_utils, name, None), type))
_NUMPY_FUNCTIONS = tuple(f for f in (getattr(dynamo_utils, "numpy_attr_wrapper", None),) if f is not None)


def make_cacheable(graph: torch.fx.Graph) -> dict[str, int]:
    """Rewrite ``graph`` in place as above; how many calls of each kind were changed (only kinds seen)."""
    changed = {"unread NumPy calls dropped": _drop_dead_numpy_calls(graph),
               "autocast regions that change nothing dropped": _drop_idle_autocast(graph),
               "factory calls given their dtype": _name_factory_dtypes(graph),
               "Tensor methods called as functions made method calls": _tensor_methods_as_methods(graph)}
    return {what: n for what, n in changed.items() if n}


def _drop_dead_numpy_calls(graph: torch.fx.Graph) -> int:
    on_constants: dict[torch.fx.Node, bool] = {}
    for node in graph.nodes:  # topological: a node's inputs are settled before it
        on_constants[node] = _is_numpy_call(node) and all(on_constants[n] for n in node.all_input_nodes)
    dropped = 0
    for node in reversed(graph.nodes):  # users before the calls they read
        if on_constants[node] and not node.users:
            graph.erase_node(node)
            dropped += 1
    return dropped


def _is_numpy_call(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and (isinstance(node.target, _NUMPY_WRAPPERS) or node.target in _NUMPY_FUNCTIONS)


def _drop_idle_autocast(graph: torch.fx.Graph) -> int:
    """Drop each ``_enter_autocast(device, dtype, enabled=False, cache)`` entered where autocast is off for
    ``device``, with its ``_exit_autocast``; how many pairs. A region whose arguments are not constants makes
    the state unknown, so nothing inside it is dropped."""
    ambient = {device: torch.is_autocast_enabled(device) for device in AUTOCAST_DEVICES}
    state = [ambient]  # per open region: device -> autocast may be on (an unknown device: assume so)
    idle: list[torch.fx.Node] = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is _enter_autocast:
            device, _, enabled = (*node.args, None, None, None)[:3]
            now = dict(state[-1])
            if isinstance(device, str) and isinstance(enabled, bool):
                if not enabled and not now.get(device, True) and _only_exited(node):
                    idle.append(node)
                now[device] = enabled
            else:
                now = dict.fromkeys(now, True)
            state.append(now)
        elif node.target is _exit_autocast and len(state) > 1:
            state.pop()
    for enter in idle:
        for exit_ in list(enter.users):
            graph.erase_node(exit_)
        graph.erase_node(enter)
    return len(idle)


def _only_exited(enter: torch.fx.Node) -> bool:
    return all(user.op == "call_function" and user.target is _exit_autocast for user in enter.users)


#: torch functions that make a tensor of the default dtype when given none (and float data or sizes only)
_FACTORIES = (torch.ones, torch.zeros, torch.empty, torch.full, torch.rand, torch.randn, torch.arange, torch.linspace,
              torch.logspace, torch.tensor, torch.scalar_tensor, torch.eye, torch.empty_strided)


def _name_factory_dtypes(graph: torch.fx.Graph) -> int:
    named = 0
    for node in graph.nodes:
        value = node.meta.get("example_value")
        if (node.op == "call_function" and node.target in _FACTORIES and "dtype" not in node.kwargs
                and isinstance(value, torch.Tensor) and (value.dtype.is_floating_point or value.dtype.is_complex)):
            node.kwargs = {**node.kwargs, "dtype": value.dtype}
            named += 1
    return named


def _tensor_methods_as_methods(graph: torch.fx.Graph) -> int:
    rewritten = 0
    for node in graph.nodes:
        name = getattr(node.target, "__name__", None)
        if (node.op == "call_function" and name and getattr(torch.Tensor, name, None) is node.target
                and node.args and isinstance(node.args[0], torch.fx.Node)
                and isinstance(node.args[0].meta.get("example_value"), torch.Tensor)):
            node.op, node.target = "call_method", name
            rewritten += 1
    return rewritten
