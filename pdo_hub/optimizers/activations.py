"""Activation statistics collected on calibration inputs, for activation-aware methods.

`input_grams` gives, per layer, the Gram matrix X^T X of the inputs the layer actually sees (rows are
tokens for a Linear, im2col patches for a Conv2d, so its columns line up with `weight.reshape(out, -1)`).
Activation-aware SVD whitens the weight with it; pruning reads its diagonal (per-channel input energy).
Hooks are forward pre-hooks on the layer itself, so a module called twice in one forward counts both calls.
"""

from __future__ import annotations

import logging
from typing import Collection, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inputs import Inputs
from .modules import run_hooked

logger = logging.getLogger(__name__)


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a (samples, features) matrix matching its flattened weight's columns."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        # (N, Cin*kh*kw, L), channel-major like weight.reshape(out, -1)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if isinstance(module, nn.Embedding):
        return F.one_hot(x.reshape(-1), module.num_embeddings).float()
    return x.reshape(-1, x.shape[-1])


def _channel_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (positions, input channels): one row per pixel / token."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def input_grams(
    model: nn.Module, layers: dict[str, nn.Module], inputs: Iterable[Inputs], device: torch.device,
    *, diagonal_only: bool = False, channels: bool = False,
) -> dict[str, tuple[torch.Tensor, int]]:
    """Run the calibration inputs and return {path: (X^T X in float64, number of rows)}.

    Args:
        model: the model to run (in eval mode; it is not modified).
        layers: {path: module} whose inputs to record.
        inputs: calibration batches.
        device: where the model runs.
        diagonal_only: keep only the per-feature energy (a vector), for layers too wide for a full Gram.
        channels: Gram over input channels (one row per pixel or token) instead of over the features
            the flattened weight sees (im2col patches for a conv).

    Returns:
        For Embedding layers the "Gram" is the diagonal token-count vector whatever `diagonal_only` says.
    """
    moments = input_moments(model, layers, inputs, device, diagonal_only=diagonal_only, channels=channels)
    return {path: (gram, count) for path, (gram, count, _) in moments.items()}


@torch.no_grad()
def input_moments(
    model: nn.Module, layers: dict[str, nn.Module], inputs: Iterable[Inputs], device: torch.device,
    *, diagonal_only: bool = False, channels: bool = False, means_for: Collection[str] = (),
) -> dict[str, tuple[torch.Tensor, int, torch.Tensor | None]]:
    """`input_grams` plus, for the layers in `means_for`, the mean input row (float64; None for the others), in one pass."""
    stats: dict[str, list] = {path: [None, 0, None] for path in layers}
    handles = []

    def hook_for(path: str, module: nn.Module):
        def hook(_module, args):
            rows = (_channel_rows if channels else _rows)(module, args[0].detach()).double()
            if diagonal_only or isinstance(module, nn.Embedding):
                update = rows.square().sum(0)
            else:
                update = rows.T @ rows
            entry = stats[path]
            entry[0] = update if entry[0] is None else entry[0].add_(update)
            entry[1] += rows.shape[0]
            if path in means_for:
                entry[2] = rows.sum(0) if entry[2] is None else entry[2].add_(rows.sum(0))
        return hook

    for path, module in layers.items():
        handles.append(module.register_forward_pre_hook(hook_for(path, module)))
    run_hooked(model, handles, inputs, device)
    missing = [path for path, (gram, _, _) in stats.items() if gram is None]
    if missing:
        logger.debug("activations: %d layers never ran on the calibration inputs: %s", len(missing), missing[:5])
    return {path: (gram, count, None if total is None else total / max(count, 1))
            for path, (gram, count, total) in stats.items() if gram is not None}


def whitening_factor(gram: torch.Tensor, count: int, damping: float = 1e-2) -> torch.Tensor:
    """A lower-triangular S with S S^T = C + damping * mean(diag) * I (SVD-LLM's Cholesky whitening).

    `gram` is overwritten.

    C is the second moment X^T X / n shrunk toward its diagonal by d / (d + n) for d features and n
    samples: a few calibration sentences give fewer token vectors than an FFN has inputs, and the raw
    estimate then calls every direction they missed worthless. With many samples (im2col patches of
    a CNN) the shrinkage vanishes. The damping keeps S invertible (dead channels).
    """
    # In place (the caller's Gram is consumed): for a 3x3 conv over 512 channels one d x d float64
    # matrix is 170 MB, and every temporary of the textbook formula would be one more.
    cov = gram.div_(max(count, 1))
    shrink = cov.shape[0] / (cov.shape[0] + max(count, 1))
    diagonal = cov.diagonal().clone()
    cov.mul_(1 - shrink).diagonal().add_(shrink * diagonal)
    scale = float(cov.diagonal().mean()) or 1.0
    added = 0.0
    for attempt in range(4):
        ridge = (damping * 10**attempt) * scale
        cov.diagonal().add_(ridge - added)
        added = ridge
        factor, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return factor
        del factor
    # Numerically hopeless (should not happen with damping): fall back to the identity, i.e. plain SVD.
    logger.debug("activations: Cholesky failed; using the unwhitened weight")
    return torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
