"""Data-free calibration inputs distilled from a network's BatchNorm statistics (ZeroQ).

A vision model fetched without user data has no real images to calibrate on, and Gaussian noise is a
poor stand-in: its activations have the wrong ranges (int8 scales are fitted to them) and the wrong
class mix (the fidelity check sees one or two predicted classes). Every BatchNorm layer, however, stores
the mean and variance of its input over the training data. ZeroQ (Cai et al., CVPR 2020) optimizes
random inputs until the batch statistics at every BatchNorm match those running statistics; the result
activates the network the way its training data did. An optional label term (cross-entropy towards
classes spread evenly over the batch, as in data-free distillation work that followed ZeroQ) makes the
batch cover every class, so top-1 agreement is measured over all of them rather than a few.

Everything is seeded and bounded by a step count, so the same model gives the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import PostDownloadOptimizationConfig
from .inputs import Inputs, output_tensor, synthesize_inputs

logger = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """How hard to optimize the inputs.

    Attributes:
        steps: Adam steps on the whole batch (the cost: one forward and backward each).
        lr: Adam learning rate on the input pixels (inputs start as N(0, 1), in normalized units).
        label_weight: weight of the label-consistency term (0 turns it off). Measured on the digits
            ResNet-18 (conservative preset): without it the inputs are unconfident and int8's estimated
            loss on them was 2.2 pt (real 0.0); at 0.05, svd's estimate was 8.2 pt against 1.5 real;
            at 0.3, 3.7 against 1.75; at 1.0 the inputs fit svd worse (3.25 pt real).
        max_pixels: inputs larger than this (per sample, per channel) are distilled at a reduced size and
            upsampled: BatchNorm statistics are spatial averages, and the cost grows with the pixels.
    """

    steps: int = 60
    lr: float = 0.2
    label_weight: float = 0.3
    max_pixels: int = 64 * 64


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that carry running statistics (what distillation matches)."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS) and m.track_running_stats and m.running_mean is not None]


def distillable(model: nn.Module, example: object) -> bool:
    """Whether inputs can be distilled for `model`: it has BatchNorm statistics and takes one float tensor."""
    return isinstance(example, torch.Tensor) and example.is_floating_point() and example.dim() >= 2 and bool(batchnorms(model))


def distill_inputs(model: nn.Module, example: torch.Tensor, count: int, seed: int,
                   settings: DistillSettings = DistillSettings()) -> list[torch.Tensor]:
    """`count` batch-1 inputs shaped like one sample of `example`, whose BatchNorm statistics match the model's.

    Args:
        model: the model (not modified: a frozen copy's inputs are optimized, in eval mode).
        example: one batch the model accepts (a float tensor; its sample shape and device are used).
        count: how many samples to distill (as one batch: BatchNorm statistics are batch statistics).
        seed: seeds the starting noise.
        settings: steps, learning rate, label term, size cap.

    Raises:
        ValueError: the model has no BatchNorm statistics (check `distillable` first).
    """
    norms = batchnorms(model)
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm statistics to distill inputs from.")
    shape = tuple(example.shape[1:])
    reduced = _reduced_shape(shape, settings.max_pixels)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((count, *reduced), generator=generator).to(example.device, example.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=settings.lr)
    # Classes in pairs (0, 0, 1, 1, ...): split into every other sample, both halves cover every class.
    targets = torch.arange(count, device=example.device) // 2
    was_training = model.training
    model.eval()
    first = last = None
    try:
        with _frozen(model), _captured(norms) as captured, torch.enable_grad():
            for step in range(settings.steps):
                optimizer.zero_grad(set_to_none=True)
                logits = output_tensor(model(inputs))
                loss = _statistics_loss(norms, captured) + _input_loss(inputs)
                if settings.label_weight > 0 and logits.dim() == 2 and logits.shape[1] > 1:
                    loss = loss + settings.label_weight * F.cross_entropy(logits, targets % logits.shape[1])
                loss.backward()
                optimizer.step()
                captured.clear()
                first = float(loss.detach()) if step == 0 else first
                last = float(loss.detach())
    finally:
        model.train(was_training)
    logger.info("distilled %d inputs %s from %d BatchNorm layers in %d steps (loss %.3g -> %.3g)",
                count, reduced, len(norms), settings.steps, first or 0.0, last or 0.0)
    result = inputs.detach()
    if reduced != shape:
        result = F.interpolate(result, size=shape[1:], mode="bilinear", align_corners=False)
    return [sample.unsqueeze(0).contiguous() for sample in result]


def _reduced_shape(shape: tuple[int, ...], max_pixels: int) -> tuple[int, ...]:
    """The sample shape to distill at: images over `max_pixels` scaled down, keeping the aspect ratio."""
    if len(shape) != 3 or shape[1] * shape[2] <= max_pixels:
        return shape
    scale = (max_pixels / (shape[1] * shape[2])) ** 0.5
    return (shape[0], max(8, round(shape[1] * scale)), max(8, round(shape[2] * scale)))


def _statistics_loss(norms: list[nn.Module], captured: dict[nn.Module, torch.Tensor]) -> torch.Tensor:
    """ZeroQ's loss: per layer, the L2 distance of the batch mean and std from the running ones, averaged."""
    total = 0.0
    for norm in norms:
        x = captured.get(norm)
        if x is None:  # a branch this input did not reach
            continue
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        total = total + torch.linalg.vector_norm(mean - norm.running_mean) / mean.numel() ** 0.5
        total = total + torch.linalg.vector_norm((var + norm.eps).sqrt() - (norm.running_var + norm.eps).sqrt()) / var.numel() ** 0.5
    return total / len(norms)


def _input_loss(inputs: torch.Tensor) -> torch.Tensor:
    """Keep the inputs themselves normalized (mean 0, std 1 per channel), as ZeroQ does for the first layer."""
    dims = [d for d in range(inputs.dim()) if d != 1]
    return (inputs.mean(dims).pow(2).mean() + (inputs.std(dims) - 1.0).pow(2).mean()) ** 0.5


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for the weights (only the inputs are optimized); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def _captured(norms: list[nn.Module]) -> Iterator[dict[nn.Module, torch.Tensor]]:
    """The input each BatchNorm receives in the current forward."""
    captured: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        captured[module] = args[0]

    handles = [norm.register_forward_pre_hook(hook) for norm in norms]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def data_free_inputs(model: nn.Module, example: Inputs, config: PostDownloadOptimizationConfig) -> tuple[list, list, str]:
    """(calibration, held-out, what they are) when the caller gave no calibration data.

    Distilled from the BatchNorm statistics when the model has them and takes one float tensor (both
    halves from one distilled batch: the held-out half was never calibrated on); otherwise perturbed
    copies of `example` (`synthesize_inputs`), which is all a model without statistics offers.
    """
    count = 2 * config.calibration_samples
    if distillable(model, example):
        distilled = distill_inputs(model, example, count, config.seed)
        note = (f"{count // 2} held-out inputs distilled from the model's BatchNorm statistics "
                "(ZeroQ; no calibration_data given)")
        return distilled[0::2], distilled[1::2], note
    synthesized = synthesize_inputs(example, count, config.seed)
    return synthesized[0::2], synthesized[1::2], (f"{count // 2} held-out inputs perturbed from example_inputs "
                                                  "(no calibration_data given, no BatchNorm statistics to distill from)")
