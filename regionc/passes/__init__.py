"""Fusion passes: rewrite patterns in each piece's post-grad graph into ``torch.ops.regionc.*``.

One file per fusion (``rms_norm``, ``fused_add_rms_norm``, ``rope``, ``attention``,
``decode_attention``), the kernel-choice table in ``decisions``, and ``manager.PassManager`` which installs them in
Inductor as one ``CustomGraphPass`` and collects matches and skips for the report.
"""

from regionc.passes.manager import PassManager, graph_hook

__all__ = ["PassManager", "graph_hook"]
