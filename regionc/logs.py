"""Messages said once per process: a fallback taken on every call, a cache entry refused on every
lookup, would otherwise repeat the same line on every call.

A leaf module (standard library only, no torch), so every regionc module can import it without an
import cycle and ``import regionc`` stays torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

log = logging.getLogger("regionc")

#: the keys already logged in this process
_logged: set[Hashable] = set()


def log_once(key: Hashable, message: str, *args: Any, level: int = logging.INFO,
             logger: logging.Logger = log, repeat_level: int | None = None) -> None:
    """Log ``message % args`` at ``level`` on ``logger`` the first time ``key`` comes up in this process.

    A message said once per object puts a token the object owns into the key,
    ``(self._log_key, topic)`` with ``self._log_key = object()``: unlike ``id(self)``, a token is
    never reused by a later object, so a new object says its own messages again.
    ``repeat_level``: the level later calls with the same key log at (None: they log nothing).
    """
    if key in _logged:
        if repeat_level is not None:
            logger.log(repeat_level, message, *args)
        return
    _logged.add(key)
    logger.log(level, message, *args)
