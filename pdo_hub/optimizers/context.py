"""What a method gets to work with besides the model."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable

import torch
import torch.nn as nn

from ..core.config import PostDownloadOptimizationConfig
from .inputs import Inputs


#: Per-layer probes (one model evaluation per layer) rank layers; they do not check a budget, which is
#: always measured on every calibration batch. A quarter of the batches, at least `PROBE_MIN`, ranks them:
#: the conservative search of all-MiniLM-L6-v2 spent most of its `dynamic` time in 37 such probes.
PROBE_SHARE, PROBE_MIN = 4, 4


def probe_subset(batches: list) -> list:
    """Evenly spaced batches for per-layer probes (all of them when there are few); the same indices for equal lengths."""
    count = max(PROBE_MIN, math.ceil(len(batches) / PROBE_SHARE))
    if count >= len(batches):
        return list(batches)
    return [batches[(i * len(batches)) // count] for i in range(count)]


@dataclasses.dataclass
class MethodContext:
    """Inputs and settings shared by every method of one optimization run.

    Attributes:
        config: the validated config.
        example_inputs: one batch the model accepts (what benchmarks use).
        calibration_inputs: batches for calibration, activation statistics and fidelity checks.
        device: where the optimization runs.
        original_model: the untouched source model (read-only; a teacher for recovery/distillation).
        target_ratio: the size this method should reach, as a fraction of the model it receives.
        eval_fn: optional task metric `eval_fn(model) -> accuracy in [0, 1]` (labelled data).
        measure_loss: `measure_loss(model) -> accuracy loss` against the original, measured the way the
            optimizer judges candidates (task metric if given, else output fidelity); lets a method
            trade precision for accuracy layer by layer.
        measure_probe_loss: the same loss on `probe_inputs` only, for ranking layers (None: use `measure_loss`).
        model_unchanged: the model the method receives is an unchanged copy of the original (first in its
            pipeline; set by `build_candidate`): its loss is zero without measuring it. False: not known.
        notes: messages a method wants in the report (why something was skipped, ...).
    """

    config: PostDownloadOptimizationConfig
    example_inputs: Inputs
    calibration_inputs: list[Inputs]
    device: torch.device
    original_model: nn.Module | None = None
    target_ratio: float = 1.0
    eval_fn: Callable[[nn.Module], float] | None = None
    measure_loss: Callable[[nn.Module], float] | None = None
    measure_probe_loss: Callable[[nn.Module], float] | None = None
    model_unchanged: bool = False
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def probe_inputs(self) -> list[Inputs]:
        """The calibration batches per-layer probes run on (`probe_subset`)."""
        return probe_subset(self.calibration_inputs or [self.example_inputs])

    def note(self, logger: logging.Logger, message: str) -> None:
        logger.info(message)
        self.notes.append(message)
