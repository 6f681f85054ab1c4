"""Building and measuring one candidate pipeline."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch.nn as nn

from .context import MethodContext
from .evaluate import Fidelity, Timing, benchmark, fidelity
from .recipe import Recipe
from .registry import get_method
from .selection import gain, score
from .sizing import serialized_bytes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Candidate:
    """One pipeline tried by the optimizer, with what it measured or why it was rejected."""

    methods: tuple[str, ...]
    model: nn.Module | None = None
    labels: list[str] = dataclasses.field(default_factory=list)
    size_bytes: int | None = None
    fidelity: Fidelity | None = None
    timing: Timing | None = None
    accuracy: float | None = None
    accuracy_loss: float | None = None
    score: float | None = None
    status: str = "pending"  # accepted | rejected | selected
    reason: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self, original_bytes: int, original_timing: Timing | None) -> dict[str, Any]:
        from .report import size_metrics

        entry: dict[str, Any] = {"methods": list(self.methods), "optimizations": self.labels, "status": self.status}
        if self.reason:
            entry["reason"] = self.reason
        if self.size_bytes is not None:
            entry["size_mb"] = size_metrics(original_bytes, self.size_bytes)["optimized_size_mb"]
            entry["size_ratio"] = round(self.size_bytes / original_bytes, 4)
        if self.timing is not None and original_timing is not None:
            entry["speedup"] = round(original_timing.median_latency_ms / self.timing.median_latency_ms, 3)
            entry["latency_ms"] = round(self.timing.median_latency_ms, 3)
        if self.fidelity is not None:
            entry["output_cosine"] = round(self.fidelity.cosine, 6)
            if self.fidelity.top1_agreement is not None:
                entry["top1_agreement"] = round(self.fidelity.top1_agreement, 4)
        if self.accuracy is not None:
            entry["accuracy"] = round(self.accuracy, 6)
        if self.accuracy_loss is not None:
            entry["accuracy_loss"] = round(self.accuracy_loss, 6)
        if self.score is not None:
            entry["score"] = round(self.score, 4)
        if self.notes:
            entry["notes"] = self.notes
        entry["seconds"] = round(self.seconds, 3)
        return entry


def build_candidate(methods: tuple[str, ...], base: nn.Module, ctx: MethodContext) -> Candidate:
    """Apply `methods` in order to a copy of `base`; the returned candidate carries its recipe."""
    candidate = Candidate(methods)
    start = time.perf_counter()
    model = copy.deepcopy(base)
    records: list[dict[str, Any]] = []
    ctx.notes = candidate.notes
    for name in methods:
        method = get_method(name)
        if method.cpu_only and ctx.device.type != "cpu":
            ctx.note(logger, f"{name}: torch has no {ctx.device.type} kernels for this method; skipped (run on CPU to use it).")
            continue
        model, new_records = method.apply(model, ctx)
        if new_records:
            candidate.labels.append(method.label)
            records.extend(new_records)
    model.eval()
    model.pdo_recipe = Recipe(records)
    candidate.model = model
    candidate.seconds = time.perf_counter() - start
    if not records:
        candidate.status, candidate.reason = "rejected", "no method changed the model"
    return candidate


def accuracy_loss(model: nn.Module, ctx: MethodContext, original: dict[str, Any]) -> float:
    """Loss against the original: task accuracy drop with `eval_fn`, else 1 - output cosine."""
    if ctx.eval_fn is not None:
        return max(0.0, original["accuracy"] - float(ctx.eval_fn(model)))
    return fidelity(model, ctx.calibration_inputs, original["calibration_references"], ctx.device).loss


def measure_candidate(candidate: Candidate, ctx: MethodContext, references, original: dict[str, Any]) -> None:
    """Size, fidelity, optional task accuracy and speed; then accept/reject against the budget and score."""
    config = ctx.config
    model = candidate.model
    candidate.size_bytes = serialized_bytes(model)
    candidate.fidelity = fidelity(model, ctx.extras["held_out_inputs"], references, ctx.device)
    if ctx.eval_fn is not None:
        candidate.accuracy = float(ctx.eval_fn(model))
        candidate.accuracy_loss = max(0.0, original["accuracy"] - candidate.accuracy)
    else:
        candidate.accuracy_loss = candidate.fidelity.loss
    if config.benchmark_optimizations:
        candidate.timing = benchmark(
            model, ctx.example_inputs, ctx.device,
            warmup=config.benchmark_warmup, runs=config.benchmark_runs, threads=config.benchmark_threads,
        )
    speedup = original["timing"].median_latency_ms / candidate.timing.median_latency_ms if candidate.timing and original["timing"] else None
    candidate.score = score(candidate.size_bytes / original["size_bytes"], speedup, candidate.accuracy_loss, config.preserve_accuracy_threshold)
    if candidate.accuracy_loss > config.preserve_accuracy_threshold:
        candidate.status = "rejected"
        candidate.reason = (
            f"accuracy loss {candidate.accuracy_loss:.4f} exceeds preserve_accuracy_threshold "
            f"{config.preserve_accuracy_threshold:.4f}"
        )
    elif config.auto_select_best_method and gain(candidate.size_bytes / original["size_bytes"], speedup) <= 0:
        candidate.status = "rejected"
        candidate.reason = "no net gain: what it saves in size does not make up for what it loses in speed"
    else:
        candidate.status = "accepted"
    logger.info(
        "candidate %s: %s, size %.1f%% of original, loss %.4f, score %.3f",
        "+".join(candidate.methods), candidate.status, 100 * candidate.size_bytes / original["size_bytes"],
        candidate.accuracy_loss, candidate.score,
    )
