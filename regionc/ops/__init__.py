"""regionc custom ops (``torch.ops.regionc.*``); importing this package registers all four.

* ``rms_norm(x, weight, eps)`` and ``fused_add_rms_norm(x, residual, weight, eps)``  (rms_norm.py)
* ``rope(q, k, cos, sin, style, layout)``                                            (rope.py)
* ``attention(q, k, v, causal, scale)``                                              (attention.py)

Each has a fake kernel (torch.compile), a CUDA kernel (Triton) and a CPU kernel: the C++ one
from ``regionc._C`` for rms_norm / fused_add_rms_norm / rope when the extension is built (and
``REGIONC_NO_EXTENSION`` is not ``1``), otherwise a torch reference. Attention's CPU kernel is
always the torch reference. All are forward-only (an input requiring grad under grad mode raises).

The submodules keep their names (``regionc.ops.rms_norm`` is the module; the op is
``torch.ops.regionc.rms_norm``).
"""

from regionc.ops import _extension
from regionc.ops import attention, rms_norm, rope  # noqa: F401  (importing registers the ops)
from regionc.ops.attention import attention_reference
from regionc.ops.rms_norm import fused_add_rms_norm_reference, rms_norm_reference
from regionc.ops.rope import rope_reference


def extension_loaded() -> bool:
    """True when the C++ CPU kernels of ``regionc._C`` are registered."""
    return _extension.available()


__all__ = [
    "attention_reference",
    "extension_loaded",
    "fused_add_rms_norm_reference",
    "rms_norm_reference",
    "rope_reference",
]
