"""The Hub layer: every network touch (only through huggingface_hub and torchvision/torch.hub).

Resolves revisions, fetches originals, builds architecture skeletons and model cards, runs the
fetch -> optimize -> cache -> load flow, and intercepts transformers/torchvision loads.
Layer 3: imports `pdo_hub.cache`, `pdo_hub.optimizers` and `pdo_hub.core`, nothing above.
"""

from pdo_hub.hub.card import build_card
from pdo_hub.hub.flow import SOURCE_NAME, Request, load_or_build
from pdo_hub.hub.intercept import intercept
from pdo_hub.hub.local import load_local
from pdo_hub.hub.torchvision_models import get_model
from pdo_hub.hub.transformers_models import auto_class_named, from_pretrained, load_entry

__all__ = [
    "SOURCE_NAME",
    "Request",
    "auto_class_named",
    "build_card",
    "from_pretrained",
    "get_model",
    "intercept",
    "load_entry",
    "load_local",
    "load_or_build",
]
