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



def test_aot_mode_failure_compiles_again_in_the_default_mode(monkeypatch, caplog):
    """A graph that aot mode cannot compile (no bundled AOTAutograd entry) still compiles, once more
    in standalone_compile's default mode, with a warning saying so."""
    if not inductor._AOT_MODE:
        pytest.skip("this torch's standalone_compile has no aot mode")
    import regionc

    real = torch._inductor.standalone_compile
    modes = []

    def standalone_compile(*args, **kwargs):
        modes.append(kwargs.get("aot", False))
        if kwargs.get("aot"):
            raise RuntimeError("Compiled function should have serialize method when aot=True")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch._inductor, "standalone_compile", standalone_compile)
    fn = lambda x: (x * 2).sin()  # noqa: E731
    x = torch.randn(4)
    with caplog.at_level("WARNING", logger="regionc"):
        out = torch.compile(fn, backend="regionc", options={"cache": False})(x)
    torch.testing.assert_close(out, fn(x))
    assert modes == [True, False]
    assert [p.source for p in regionc.last_report().pieces] == ["compiled"]
    assert "aot-mode compile failed (RuntimeError: Compiled function should have serialize method" in caplog.text
