"""The Triton kernels themselves (not the CPU kernels the ops dispatch to on the CPU), run by their
launchers on tiny CPU tensors under TRITON_INTERPRET=1 in subprocesses (the variable must be set
before triton is imported): interpret_kernels.py (rms_norm, rope, attention), interpret_decode_attention.py,
interpret_skinny_linear.py (the skinny linears and SwiGLU); interpreted.py says what they share."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("script", ["interpret_kernels.py", "interpret_decode_attention.py",
                                    "interpret_skinny_linear.py"])
def test_triton_kernels_under_interpreter(script):
    pytest.importorskip("triton", reason="triton not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HERE / script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert "all interpreter checks passed" in proc.stdout
