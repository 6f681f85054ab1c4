"""The Hub layer: every network touch (only through huggingface_hub and torchvision/torch.hub).

Resolves revisions, fetches originals, builds architecture skeletons and model cards, runs the
fetch -> optimize -> cache -> load flow, and intercepts transformers/torchvision loads.
Layer 3: imports `pdo_hub.cache`, `pdo_hub.optimizers` and `pdo_hub.core`, nothing above.

The names below load on first use, so the torch-free helpers here (cache keys, revisions) serve
`pdo-hub serve` and cached mirror runs without importing torch.
"""

from __future__ import annotations

from pdo_hub.core.lazy import lazy_attributes

_LAZY = {
    "build_card": "pdo_hub.hub.card",
    "SOURCE_NAME": "pdo_hub.hub.flow",
    "Request": "pdo_hub.hub.flow",
    "load_or_build": "pdo_hub.hub.flow",
    "load_local": "pdo_hub.hub.local",
    "get_model": "pdo_hub.hub.torchvision_models",
    "auto_class_named": "pdo_hub.hub.transformers_models",
    "from_pretrained": "pdo_hub.hub.transformers_models",
    "load_entry": "pdo_hub.hub.transformers_models",
}

# `intercept` is not among them: `pdo_hub.hub.intercept` is its module's name, which an import of that
# module binds here; `pdo_hub.intercept` (or `pdo_hub.hub.intercept.intercept`) is the function.
__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)