"""The Triton kernels themselves (not the CPU kernels the ops dispatch to on the CPU), run by their
launchers on tiny CPU tensors under TRITON_INTERPRET=1 in a subprocess (the variable must be set
before triton is imported). See interpret_kernels.py for the cases."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("interpret_kernels.py")


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton", reason="triton not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter checks failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert "all interpreter checks passed" in proc.stdout
