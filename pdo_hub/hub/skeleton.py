"""Fresh, un-optimized instances of an original architecture, built fast to receive cached weights.

A cache hit replays the recipe on a skeleton and loads every tensor strictly, so initializing the
skeleton's weights is wasted work (it dominates the load time of a small model). transformers' own
`no_init_weights` is used for its models; torchvision builders get the same treatment by turning the
`torch.nn.init` functions into no-ops. The meta device is not used: non-persistent buffers (e.g.
BERT's `position_ids`) are not in the state dict and would stay empty.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch.nn as nn

_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    """Make `torch.nn.init` functions no-ops within the block (not thread-safe, like transformers')."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def transformers_skeleton(auto_class: Any, hf_config: Any) -> nn.Module:
    """`auto_class.from_config(hf_config)` without weight initialization."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return auto_class.from_config(hf_config)


def builder_skeleton(builder: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """`builder(weights=None, **kwargs)` (a torchvision builder) without weight initialization."""
    with no_weight_init():
        return builder(weights=None, **kwargs)
