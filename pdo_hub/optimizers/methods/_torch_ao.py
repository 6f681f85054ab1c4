"""Access to torch.ao.quantization without flooding users with its deprecation warnings.

torch.ao.quantization still works in torch 2.14 but announces its removal on every call. The methods
that use it sit behind the registry so their backend can move to torchao's pt2e flow; meanwhile the
warning is logged once at DEBUG instead of printed on every call.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

logger = logging.getLogger(__name__)
_announced = False


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    global _announced
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught and not _announced:
        _announced = True
        logger.debug("torch.ao.quantization warned (shown once): %s", caught[0].message)
