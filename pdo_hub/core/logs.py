"""The library's logging: one root logger `pdo_hub`, quiet by default, `PDO_HUB_VERBOSITY` to turn it up."""

from __future__ import annotations

import logging

from . import constants

ROOT_LOGGER = "pdo_hub"
_configured = False


def configure_from_env() -> None:
    """Attach a stderr handler at the level `PDO_HUB_VERBOSITY` names (once); otherwise stay silent."""
    global _configured
    root = logging.getLogger(ROOT_LOGGER)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    level = constants.verbosity()
    if level and not _configured:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(getattr(logging, level, logging.INFO))
        _configured = True
