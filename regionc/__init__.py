"""regionc: a torch.compile backend that compiles one repeated block and reuses it.

``torch.compile(model, backend="regionc")`` finds it through the ``torch_dynamo_backends``
entry point; nothing here needs importing for that. This module is the small public API;
``regionc.compile(model)`` is the same backend with each repeated block traced once, and
``regionc.warmup(model, *example_inputs)`` compiles it in the background (while weights load);
``regionc.wait_compiled()`` waits for what ``background_compile`` left compiling.

Importing it does not import torch: ``regionc.compile`` is loaded on first use, so the
``regionc cache`` command (which needs none of torch) starts in a fraction of a second.
"""

from regionc.config import Config, RegioncConfigError
from regionc.report import Report, last_report, reports

__version__ = "0.1.0"

__all__ = ["Config", "RegioncConfigError", "Report", "compile", "last_report", "reports", "wait_compiled", "warmup",
           "__version__"]


def __getattr__(name: str):
    if name == "compile":
        from regionc.tracing.compile import compile as function
    elif name == "warmup":
        from regionc.tracing.warmup import warmup as function
    elif name == "wait_compiled":
        from regionc.compiler.background import wait as function
    else:
        raise AttributeError(f"module 'regionc' has no attribute {name!r}")
    globals()[name] = function
    return function
