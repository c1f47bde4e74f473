"""What code a block instance runs beyond its class (``regionc/blocks/signature.py``)."""

from __future__ import annotations

import enum
import types

import torch
from torch import nn

from regionc.blocks.detect import find_repeated_blocks
from regionc.blocks.signature import difference, held_modules, signature


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.funcs = {"act": nn.Tanh()}  # held, not registered: how the kernels package keeps its modules

    def forward(self, x):
        return self.funcs["act"](self.lin(x))


def _local_class():
    class Scaled(nn.Module):  # defined in a function, as the kernels package wraps functions
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    return Scaled


LocalScaled = _local_class()


class Kind(enum.Enum):
    SELF = 1
    CROSS = 2

#: two functions of one line, different in a constant only
LAMBDAS = (lambda x: x * 2, lambda x: x * 3)


def _stack(n=3):
    """``n`` blocks, each holding one function as an attribute (``self.act = F.gelu`` in a real model)."""
    blocks = [Block() for _ in range(n)]
    for block in blocks:
        block.lin.act = LAMBDAS[0]
        block.table = {"act": torch.nn.functional.gelu}
        block.scaled = LocalScaled(0.5)
        block.kind, block.norm_cls = Kind.SELF, nn.LayerNorm
    return nn.Sequential(*blocks)


def test_one_hook_on_every_block_keeps_them_one_kind():
    """torch keys each module's hooks by a process-wide counter: the same hook on every block is one kind."""
    model = _stack()
    for block in model:
        block.lin.register_forward_hook(_identity_hook)
        block.compile()  # a compiled call set on the instance is not other code
    assert difference(model[0], model[2]) is None and len(find_repeated_blocks(model)) == 1


def _identity_hook(module, args, out):
    return out


def test_held_modules_are_the_submodules_and_the_modules_in_attribute_containers():
    assert [path for path, _ in held_modules(Block())] == ["", "funcs['act']", "lin"]


def test_blocks_of_one_class_running_other_code_make_a_stack_per_kind():
    model = _stack()
    assert signature(model[0]) == signature(model[1]) and difference(model[0], model[1]) is None
    assert len(find_repeated_blocks(model)) == 1

    changes = {
        "a module of another class": lambda b: setattr(b, "lin", type("Other", (nn.Linear,), {})(4, 4)),
        "a forward set on a held module": lambda b: setattr(b.funcs["act"], "forward",
                                                            types.MethodType(lambda self, x: x, b.funcs["act"])),
        "a forward hook": lambda b: b.lin.register_forward_hook(lambda m, a, out: out),
        "a forward pre-hook": lambda b: b.lin.register_forward_pre_hook(lambda m, a: None),
        "another function held": lambda b: setattr(b.lin, "act", torch.nn.functional.silu),
        "a lambda of other constants": lambda b: setattr(b.lin, "act", LAMBDAS[1]),
        "another function in a dict": lambda b: setattr(b, "table", {"act": torch.nn.functional.silu}),
        "another value in a function-local class": lambda b: setattr(b.scaled, "scale", 1.0),
        "another enum member": lambda b: setattr(b, "kind", Kind.CROSS),
        "another class held": lambda b: setattr(b, "norm_cls", nn.RMSNorm),
    }
    expected = {"a module of another class": "lin: class", "a forward set on a held module": "funcs['act']: forward set on it",
                "a forward hook": "lin: forward hooks", "a forward pre-hook": "lin: forward pre-hooks",
                "another function held": "lin: functions", "a lambda of other constants": "lin: functions",
                "another function in a dict": "the block: functions", "another enum member": "the block: functions",
                "another class held": "the block: functions",
                "another value in a function-local class": "scaled: values held by a function-local class"}
    for what, change in changes.items():
        model = _stack()
        change(model[2])
        assert difference(model[0], model[2]).startswith(expected[what]), what
        stacks = find_repeated_blocks(model)  # one stack per kind of code, each traced once
        assert [(s.path, s.instances) for s in stacks] == [("", (model[0], model[1])), ("", (model[2],))], what
        assert len({s.kind for s in stacks}) == 2 and all(s.kind for s in stacks), what
