"""Dead NumPy calls on constants, dropped before the graph is split.

Dynamo traces NumPy code through ``torch._numpy`` into the graph, and leaves the calls there even
where it used their value at trace time as a constant: diffusers' Flux computes its ControlNet
interval as ``int(np.ceil(len(blocks) / len(samples)))``, which leaves ``wrapped_ceil(2.0)`` and a
``wrapped_item`` of it, with no user, once per block. AOTAutograd's cache refuses a graph that calls
a NumPy method wrapper ("Unsupported call_function target"), so every piece holding one compiled
again in every process (plain ``torch.compile`` bypasses its cache on the whole graph the same way).

A NumPy call whose result nothing reads, and whose inputs are constants or other such calls, can
change nothing: it reads no tensor of the graph, so it writes none either. Only those are dropped; a
dead NumPy call on a graph value stays (``ndarray.fill`` and ufuncs with ``out=`` write their input).
"""

from __future__ import annotations

import torch.fx
from torch._dynamo import utils as dynamo_utils

_WRAPPERS = tuple(getattr(dynamo_utils, name) for name in
                  ("numpy_to_tensor_wrapper", "numpy_method_wrapper", "numpy_operator_wrapper")
                  if isinstance(getattr(dynamo_utils, name, None), type))
_FUNCTIONS = tuple(f for f in (getattr(dynamo_utils, "numpy_attr_wrapper", None),) if f is not None)


def drop_dead_numpy_calls(graph: torch.fx.Graph) -> int:
    """Erase every unread NumPy call of ``graph`` that reads only constants and such calls; how many."""
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
    return node.op == "call_function" and (isinstance(node.target, _WRAPPERS) or node.target in _FUNCTIONS)
