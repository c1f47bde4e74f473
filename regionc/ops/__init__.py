"""regionc custom ops (``torch.ops.regionc.*``); importing this package registers all seven.

* ``rms_norm(x, weight, eps)`` and ``fused_add_rms_norm(x, residual, weight, eps)``  (rms_norm.py)
* ``rope(q, k, cos, sin, style, layout)``                                            (rope.py)
* ``attention(q, k, v, causal, scale)``                                              (attention.py)
* ``decode_attention(q, k_cache, v_cache, mask, kv_len, scale)``                     (decode_attention.py)
* ``skinny_linear(x, weights, splits)`` and ``skinny_swiglu(x, w_gate, w_up)``       (skinny_linear.py)

Each has a fake kernel (torch.compile), a CUDA kernel (Triton) and a CPU kernel: the C++ one
from ``regionc._C`` for rms_norm / fused_add_rms_norm / rope when the extension is built (and
``REGIONC_NO_EXTENSION`` is not ``1``), otherwise a torch reference. The attention ops' CPU
kernels are always torch references. All are forward-only (an input requiring grad under grad mode raises).

How the ops are registered, and why (the per-call host cost is the point):

* Each op is defined with ``torch.library.Library("regionc", "FRAGMENT").define`` and its kernels
  are registered straight at the dispatch keys (``_utils.define_op``): the CUDA kernel at ``CUDA``,
  a fallthrough at ``AutogradCUDA`` (the CUDA kernel itself refuses inputs that require grad), a
  small Python ``Autograd`` kernel for the other devices, the fake kernel through
  ``torch.library.register_fake``. A CUDA call is therefore dispatcher → one Python function →
  cheap checks (plain attribute comparisons; the message-building validator only runs when they
  fail) → cached launch parameters → Triton launch. ``torch.library.custom_op`` wraps the same
  function in three more Python layers on every call (a Python autograd kernel, the per-device
  ``backend_impl`` with an output-aliasing check, a ``torch._disable_dynamo`` wrapper): on the
  2-core dev CPU that is 6 µs (inference mode) to 15 µs per call against 3 µs for the direct
  registration, before any of the op's own work. The schemas, fake kernels and behaviour are the
  same as before (ops stay functional and ``pt2_compliant``).
* Not ``torch.library.triton_op``: its benefit is that AOTAutograd decomposes the op into the
  Triton kernel call so Inductor launches the kernel from its generated code. regionc's passes
  insert these ops into the *post-grad* graph, after that decomposition point, so Inductor would
  still call them as fallback kernels through the dispatcher; and the decomposition runs on every
  device, so a CPU graph would get a Triton kernel call — under ``TRITON_INTERPRET=1`` a
  ``triton_op`` fails inside torch.compile on the CPU (fake tensors reach the interpreted
  kernel), and without the interpreter there is no CPU Triton at all. The per-call cost that
  remains only matters without CUDA graphs; inside regionc's piecewise graphs it is paid once at
  capture.
* Under ``torch.inference_mode()`` the autograd keys are skipped entirely.

The submodules keep their names (``regionc.ops.rms_norm`` is the module; the op is
``torch.ops.regionc.rms_norm``).
"""

from regionc.ops import _extension, attention, decode_attention, rms_norm, rope, skinny_linear  # noqa: F401  (importing registers the ops)
from regionc.ops.attention import attention_reference
from regionc.ops.decode_attention import decode_attention_reference
from regionc.ops.rms_norm import fused_add_rms_norm_reference, rms_norm_reference
from regionc.ops.rope import rope_reference
from regionc.ops.skinny_linear import skinny_linear_reference, skinny_swiglu_reference


def extension_loaded() -> bool:
    """True when the C++ CPU kernels of ``regionc._C`` are registered."""
    return _extension.available()


__all__ = [
    "attention_reference",
    "decode_attention_reference",
    "extension_loaded",
    "fused_add_rms_norm_reference",
    "rms_norm_reference",
    "rope_reference",
    "skinny_linear_reference",
    "skinny_swiglu_reference",
]
