"""regionc: a torch.compile backend that compiles one repeated block and reuses it.

``torch.compile(model, backend="regionc")`` finds it through the ``torch_dynamo_backends``
entry point; nothing here needs importing for that. This module is the small public API;
``regionc.compile(model)`` is the same backend with each repeated block traced once.
"""

from regionc.config import Config, RegioncConfigError
from regionc.report import Report, last_report, reports
from regionc.tracing.compile import compile

__version__ = "0.1.0"

__all__ = ["Config", "RegioncConfigError", "Report", "compile", "last_report", "reports", "__version__"]
