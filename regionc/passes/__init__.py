"""Fusion passes: rewrite patterns in each piece's post-grad graph into ``torch.ops.regionc.*``.

One file per fusion (``rms_norm``, ``fused_add_rms_norm``, ``rope``, ``attention``,
``decode_attention``, ``skinny_linear``), the kernel-choice table in ``decisions``, and ``manager.PassManager`` which installs them in
Inductor as one ``CustomGraphPass`` and collects matches and skips for the report.

``version`` computes the passes' version for the cache keys without importing the passes (so
without registering the ops), which a warm start needs and nothing more; the manager is imported on
first use of ``PassManager`` or ``graph_hook``.
"""

__all__ = ["PassManager", "graph_hook"]


def __getattr__(name: str):
    if name in __all__:
        from regionc.passes import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'regionc.passes' has no attribute {name!r}")
