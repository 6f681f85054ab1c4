"""Progress on long steps: pdo-hub's own INFO messages (cache misses, candidates) shown on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

# The loggers whose INFO lines tell a user where a long run is: the fetch/build flow, each candidate
# the optimizer measures, the mirror's per-entry steps.
_PROGRESS_LOGGERS = ("pdo_hub.hub.flow", "pdo_hub.optimizers.candidates", "pdo_hub.mirror", "pdo_hub.push")


class _Elapsed(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s] {record.getMessage()}"


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[None]:
    """Show progress lines on stderr while the block runs (nothing when `enabled` is False)."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed())
    handler.setLevel(logging.INFO)
    changed = []
    for name in _PROGRESS_LOGGERS:
        logger = logging.getLogger(name)
        changed.append((logger, logger.level))
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, level in changed:
            logger.removeHandler(handler)
            logger.setLevel(level)
