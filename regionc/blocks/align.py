"""Give every instance of a repeated block the same interface, so they share one compile.

Identical blocks can still split into pieces that differ at their edges:

- **An input's layout.** DiT models concatenate text and image tokens and hand the first block a
  slice of the result (CogVideoX: stride 1280 at offset 256) while later blocks get contiguous
  tensors; Chroma hands each single block its own slice of one modulation tensor (the same strides
  at another offset). Inductor specializes on strides (and regionc's key on the offset), so such
  blocks would compile alone. Here, where the instances' layouts differ, the caller copies each
  input not laid out densely to a dense tensor before the call (one copy of it per call), unless a
  piece writes that input in place (the copy would take the write), and only when the piece still
  returns tensors laid out as traced: ops follow their input's layout (a VAE's mid-block resnet
  reading its attention's channels-last output returns channels-last), and the pieces that read the
  returned tensors were compiled for, and assert, the traced layout.
- **A size read in two roles.** HF's sliding-window cache keeps a Python int per layer, which Dynamo
  makes a symbolic size from the second step on; layer 0's int is also the position every layer's
  RoPE reads. Layer 0's piece then takes one size input where its siblings take two (the position
  and their own counter). Here it gets the second input too, and its call passes the same size twice.
- **Which outputs are read.** ``split_module`` returns from a piece only the values read later, and
  the last block's second stream (a text stream nobody reads after the last block) is not; Dynamo
  may even have dropped the nodes computing it (Flux's last single block lacks its text slice). The
  piece then computes less and compiles alone. Here dropped nodes are copied back from a sibling and
  every instance returns the union of what its siblings return; the extra value is computed and
  dropped, as a per-block compile would do.

Instances are matched position by position; a stack whose pieces do not line up (a block with
a per-layer constant, say) is left as it is, and the fingerprint step reports why.
"""

from __future__ import annotations

import contextlib
import operator
from collections import defaultdict

import torch
import torch.fx
from torch._prims_common import clone_preserve_strides
from torch._subclasses.fake_tensor import FakeTensor

from regionc.blocks.writes import mutated_placeholders


def align_instances(split: torch.fx.GraphModule, blocks: list[tuple[str, str]]) -> int:
    """Align the interfaces of each stack's pieces, given as (piece name, stack) pairs;
    returns how many inputs and outputs changed."""
    stacks: dict[str, list[str]] = defaultdict(list)
    for name, stack in blocks:
        stacks[stack].append(name)
    calls = {node.target: node for node in split.graph.find_nodes(op="call_module")}
    changed = 0
    for names in stacks.values():
        modules = [split.get_submodule(name) for name in names]
        if len(modules) < 2:
            continue
        changed += _restore_dropped(modules)
        changed += _split_shared_sizes(split, modules, [calls[name] for name in names])
        if not _line_up(modules):
            continue
        changed += _union_outputs(split, modules, [calls[name] for name in names])
        changed += _contiguous_inputs(split, modules, [calls[name] for name in names])
    if changed:
        split.recompile()
    return changed


def _body(module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in module.graph.nodes if n.op not in ("placeholder", "output")]


def _line_up(modules: list[torch.fx.GraphModule]) -> bool:
    """Same number of inputs, and the same ops in the same order."""
    shapes = {(len(module.graph.find_nodes(op="placeholder")), tuple((n.op, str(n.target)) for n in _body(module)))
              for module in modules}
    return len(shapes) == 1


def _key(node: torch.fx.Node) -> tuple[str, str, str]:
    """What a node does, its constant arguments included (``x[:, :8]`` is not ``x[:, 8:]``)."""
    constants = torch.fx.node.map_arg((node.args, node.kwargs), lambda _: "%")
    return node.op, str(node.target), repr(constants)


def _restore_dropped(modules: list[torch.fx.GraphModule]) -> int:
    """Copy into each piece the nodes its fullest sibling has and it lacks (dead code Dynamo removed
    from one instance only); returns how many were copied. Pieces that do not differ by dropped nodes
    alone are left as they are."""
    reference = max(modules, key=lambda module: len(_body(module)))
    theirs = _body(reference)
    inputs = list(reference.graph.find_nodes(op="placeholder"))
    copied = 0
    for module in modules:
        mine = _body(module)
        placeholders = list(module.graph.find_nodes(op="placeholder"))
        if module is reference or len(mine) == len(theirs) or _signature(placeholders) != _signature(inputs):
            continue  # inputs that do not correspond one to one: the pieces are not the same block
        plan, j = [], 0  # (reference node, node of mine to insert it before, or None: at the end)
        for node in theirs:
            if j < len(mine) and _key(mine[j]) == _key(node):
                j += 1
            else:
                plan.append((node, mine[j] if j < len(mine) else None))
        if j != len(mine):
            continue  # not a subsequence: the pieces differ otherwise
        env = dict(zip(inputs, placeholders))
        env.update(_pairs(theirs, mine, {node for node, _ in plan}))
        if not all(arg in env or any(arg is n for n, _ in plan) for node, _ in plan for arg in node.all_input_nodes):
            continue
        output = _output(module)
        for node, before in plan:
            with module.graph.inserting_before(before if before is not None else output):
                env[node] = module.graph.node_copy(node, lambda arg: env[arg])
            copied += 1
        module.recompile()
    return copied


def _split_shared_sizes(split: torch.fx.GraphModule, modules: list[torch.fx.GraphModule],
                        calls: list[torch.fx.Node]) -> int:
    """Give a piece that reads one non-tensor input (a symbolic size) where a sibling with the same ops
    reads two a second placeholder for it, fed the same value by its call; returns how many were added.
    Tensors are never split: code compiled for two tensors may assume they do not alias."""
    added = 0
    for module, call in zip(modules, calls):
        mine = list(module.graph.find_nodes(op="placeholder"))
        fuller = [m for m in modules if len(m.graph.find_nodes(op="placeholder")) > len(mine)]
        reference, sources = next(((m, s) for m in fuller if (s := _sources(m, module)) is not None), (None, None))
        if sources is None or sorted(set(sources)) != list(range(len(mine))):
            continue
        theirs = list(reference.graph.find_nodes(op="placeholder"))
        firsts = [s for k, s in enumerate(sources) if s not in sources[:k]]
        if firsts != sorted(firsts) or any(isinstance(mine[s].meta.get("example_value"), torch.Tensor)
                                           for k, s in enumerate(sources) if s in sources[:k]):
            continue
        split_off: dict[torch.fx.Node, torch.fx.Node] = {}  # their placeholder -> my new placeholder
        last = None
        for k, source in enumerate(sources):
            if source not in sources[:k]:
                last = mine[source]
                continue
            with module.graph.inserting_after(last):
                last = module.graph.placeholder(f"{mine[source].name}_{k}")
            last.meta = dict(mine[source].meta)
            split_off[theirs[k]] = last
        for node, sibling in zip([*_body(module), _output(module)], [*_body(reference), _output(reference)]):
            uses = iter(_arg_nodes(sibling))
            node.args, node.kwargs = torch.fx.node.map_arg((node.args, node.kwargs),
                                                           lambda arg: split_off.get(next(uses), arg))
        call.args = tuple(call.args[source] for source in sources)
        module.graph.lint()
        module.recompile()
        added += len(split_off)
    return added


def _sources(reference: torch.fx.GraphModule, module: torch.fx.GraphModule) -> list[int] | None:
    """For each placeholder of ``reference``, the index of the placeholder of ``module`` read in its
    place, where both run the same ops wired the same way (else None)."""
    theirs, mine = _body(reference), _body(module)
    if [(n.op, str(n.target)) for n in theirs] != [(n.op, str(n.target)) for n in mine]:
        return None
    their_inputs = list(reference.graph.find_nodes(op="placeholder"))
    my_inputs = list(module.graph.find_nodes(op="placeholder"))
    position = {node: i for i, node in enumerate(mine)}
    body = {node: i for i, node in enumerate(theirs)}
    sources: dict[int, int] = {}
    for their_node, my_node in zip([*theirs, _output(reference)], [*mine, _output(module)]):
        their_args, my_args = _arg_nodes(their_node), _arg_nodes(my_node)
        if len(their_args) != len(my_args):
            return None
        for their_arg, my_arg in zip(their_args, my_args):
            if their_arg in body:
                if position.get(my_arg) != body[their_arg]:
                    return None
            elif my_arg not in my_inputs or sources.setdefault(their_inputs.index(their_arg),
                                                               my_inputs.index(my_arg)) != my_inputs.index(my_arg):
                return None
    # inputs read nowhere (a size symbol passed along with the tensors that carry it) pair up in order
    unread = [i for i in range(len(my_inputs)) if i not in set(sources.values())]
    missing = [k for k in range(len(their_inputs)) if k not in sources]
    if len(unread) != len(missing):
        return None
    sources.update(zip(missing, unread))
    return [sources[k] for k in range(len(their_inputs))]


def _arg_nodes(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes ``node`` reads, in argument order, repeats included."""
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _output(module: torch.fx.GraphModule) -> torch.fx.Node:
    return next(iter(module.graph.find_nodes(op="output")))


def _signature(placeholders: list[torch.fx.Node]) -> list[tuple]:
    """Each input's dtype and shape (or type, for a non-tensor)."""
    values = [node.meta.get("example_value") for node in placeholders]
    return [(v.dtype, str(tuple(v.shape))) if isinstance(v, torch.Tensor) else type(v) for v in values]


def _pairs(theirs: list[torch.fx.Node], mine: list[torch.fx.Node], missing: set[torch.fx.Node]) -> dict:
    others = iter(mine)
    return {node: next(others) for node in theirs if node not in missing}


def _union_outputs(split: torch.fx.GraphModule, modules: list[torch.fx.GraphModule],
                   calls: list[torch.fx.Node]) -> int:
    bodies = [_body(module) for module in modules]
    returned = []
    for module, body in zip(modules, bodies):
        output = _output(module)
        values = output.args[0]
        if not isinstance(values, tuple) or not all(isinstance(v, torch.fx.Node) and v in body for v in values):
            return 0  # a piece returning an input or a constant: leave the stack alone
        returned.append({body.index(v) for v in values})
    union = set().union(*returned)
    added = 0
    for module, body, call, mine in zip(modules, bodies, calls, returned):
        missing = sorted(union - mine)
        if not missing:
            continue
        output = _output(module)
        values = output.args[0]
        output.args = ((*values, *(body[i] for i in missing)),)
        module.recompile()
        with split.graph.inserting_after(call):  # an unread item, so the call site still unpacks a tuple
            for position in range(len(values), len(values) + len(missing)):
                split.graph.call_function(operator.getitem, (call, position))
        added += len(missing)
    return added


def _contiguous_inputs(split: torch.fx.GraphModule, modules: list[torch.fx.GraphModule],
                       calls: list[torch.fx.Node]) -> int:
    placeholders = [list(module.graph.find_nodes(op="placeholder")) for module in modules]
    written = set().union(*(mutated_placeholders(module) for module in modules))  # a copy would take the write
    changed = 0
    for position in range(len(placeholders[0])):
        values = [nodes[position].meta.get("example_value") for nodes in placeholders]
        if not all(isinstance(v, torch.Tensor) for v in values) or position in written:
            continue
        if len({(v.dtype, v.dim()) for v in values}) != 1 or len({_layout(v) for v in values}) == 1:
            continue
        for nodes, module, call, value in zip(placeholders, modules, calls, values):
            if _dense(value) or not _returns_traced_layouts(module, position):
                continue
            argument = call.args[position]
            with split.graph.inserting_before(call):
                dense = split.graph.call_method("clone", (argument,), {"memory_format": torch.contiguous_format})
            dense.meta = {**argument.meta, "example_value": value.clone(memory_format=torch.contiguous_format)}
            call.update_arg(position, dense)
            nodes[position].meta["example_value"] = dense.meta["example_value"]
            changed += 1
    return changed


def _returns_traced_layouts(module: torch.fx.GraphModule, position: int) -> bool:
    """Whether the piece, run on fake inputs with a dense copy of input ``position``, returns tensors with
    the strides and offsets Dynamo traced (False when it cannot be run so, to be safe)."""
    inputs = [node.meta.get("example_value") for node in module.graph.find_nodes(op="placeholder")]
    # the inputs' own mode: inside a backend, the tracing context's fake mode is another one (compiler/floats.py)
    mode = next((v.fake_mode for v in inputs if isinstance(v, FakeTensor)), None)
    outputs = _output(module).args[0]
    if mode is None or not isinstance(outputs, tuple):
        return False
    traced = [node.meta.get("example_value") if isinstance(node, torch.fx.Node) else node for node in outputs]
    inputs = [_trial_copy(v) if isinstance(v, torch.Tensor) else v for v in inputs]  # nothing written
    inputs[position] = inputs[position].clone(memory_format=torch.contiguous_format)
    env = mode.shape_env
    try:  # a trial: its guards are not Dynamo's, and the symbols it makes are bound nowhere
        with mode, env.suppress_guards() if env is not None else contextlib.nullcontext(), \
                env.ignore_fresh_unbacked_symbols() if env is not None else contextlib.nullcontext():
            returned = torch.fx.Interpreter(module).run(*inputs)
    except Exception:
        return False
    return all(_layout(mine) == _layout(theirs) for mine, theirs in zip(returned, traced))


def _trial_copy(value: torch.Tensor) -> torch.Tensor:
    """A copy with ``value``'s strides and, for a float Dynamo traced as a 0-d tensor, the symbol its
    ``.item()`` reads (without it, ``.item()`` would make a new one)."""
    copy = clone_preserve_strides(value)
    if isinstance(value, FakeTensor) and value.item_memo is not None:
        copy.item_memo = value.item_memo
    return copy


def _layout(value) -> str:
    return str((list(value.stride()), value.storage_offset())) if isinstance(value, torch.Tensor) else "-"


def _dense(value: torch.Tensor) -> bool:
    """Laid out exactly as a new tensor of its shape (what the fingerprint compares, size-1 dims included)."""
    from torch._prims_common import make_contiguous_strides_for

    strides = make_contiguous_strides_for(value.shape)
    return str(list(value.stride())) == str(list(strides)) and str(value.storage_offset()) == "0"
