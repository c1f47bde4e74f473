"""regionc starts Inductor's Triton compile workers before compiling a CUDA piece.

``standalone_compile`` does not start them (Inductor's own backend does); without the workers,
Inductor compiles every Triton kernel one by one in this process. Fake CUDA tensors let the CPU
check when the pool is started; the compile itself is stubbed out.
"""

import pytest
import torch
import torch._inductor.async_compile as async_compile
from torch._subclasses.fake_tensor import FakeTensorMode

from regionc.compiler import inductor


class _Stop(Exception):
    pass


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(async_compile, "maybe_warm_pool", lambda: seen.append("warm"))

    def standalone_compile(*args, **kwargs):
        seen.append("compile")
        raise _Stop

    monkeypatch.setattr(torch._inductor, "standalone_compile", standalone_compile)
    return seen


def _piece():
    return torch.fx.symbolic_trace(lambda x: x * 2)


@pytest.mark.parametrize("device, expected", [("cuda", ["warm", "compile"]), ("cpu", ["compile"])])
def test_workers_start_before_a_cuda_piece_compiles(calls, device, expected):
    with FakeTensorMode():
        example = torch.empty(4, device=device)
    with pytest.raises(_Stop):
        inductor.compile_piece(_piece(), [example], {})
    assert calls == expected
