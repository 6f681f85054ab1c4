"""Building one candidate pipeline and measuring its size and accuracy (speed is timed for all at once)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch
import torch.nn as nn

from ..core._crashpoints import crashpoint
from .context import MethodContext, probe_subset
from .evaluate import Fidelity, Timing, fidelity
from .recipe import Recipe
from .registry import get_method
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
    speedup: float | None = None  # measured, against the original timed in the same rounds
    score_speedup: float | None = None  # what the score used: speedups within the timing noise are one value
    accuracy: float | None = None
    accuracy_loss: float | None = None
    score: float | None = None
    status: str = "pending"  # accepted | rejected | selected
    reason: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self, original_bytes: int) -> dict[str, Any]:
        from .report import size_metrics

        entry: dict[str, Any] = {"methods": list(self.methods), "optimizations": self.labels, "status": self.status}
        if self.reason:
            entry["reason"] = self.reason
        if self.size_bytes is not None:
            entry["size_mb"] = size_metrics(original_bytes, self.size_bytes)["optimized_size_mb"]
            entry["size_ratio"] = round(self.size_bytes / original_bytes, 4)
        if self.timing is not None and self.speedup is not None:
            entry["speedup"] = round(self.speedup, 3)
            entry["latency_ms"] = round(self.timing.median_latency_ms, 3)
            entry["latency_spread"] = round(self.timing.spread, 4)
            if self.score_speedup is not None and round(self.score_speedup, 3) != entry["speedup"]:
                entry["speedup_for_score"] = round(self.score_speedup, 3)
        if self.fidelity is not None:
            entry["output_cosine"] = round(self.fidelity.cosine, 6)
            if self.fidelity.top1_agreement is not None:
                entry["top1_agreement"] = round(self.fidelity.top1_agreement, 4)
            if self.fidelity.kl is not None:
                entry["kl"] = round(self.fidelity.kl, 6)
            if self.accuracy is None:  # the loss is an estimate from held-out inputs: say how sure it is
                entry["loss_standard_error"] = round(self.fidelity.standard_error, 6)
                entry["estimate_uncertain"] = self.fidelity.uncertain
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


@dataclasses.dataclass
class _Stage:
    model: nn.Module
    labels: list[str]
    records: list[dict[str, Any]]
    notes: list[str]
    seconds: float
    done: int  # how many of the pipeline's methods it holds


class Prefixes:
    """Intermediate models that later pipelines extend, built once.

    With pruning, a factorization and int8 enabled, `prune`, `prune+svd` and `svd` are each the start
    of two or three pipelines; rebuilding them (a distillation each time) would multiply the
    optimization time. Every method is seeded before it runs (`build_candidate`), so a pipeline built
    from a stored prefix is the same model as one built from scratch. A prefix that raised is not
    tried again: the pipelines that start with it are rejected with its error.
    """

    def __init__(self, pipelines: list[tuple[str, ...]]) -> None:
        self._pending = [tuple(p) for p in pipelines]
        self._stored: dict[tuple[str, ...], _Stage] = {}
        self._failed: dict[tuple[str, ...], Exception] = {}

    def fail(self, prefix: tuple[str, ...], error: Exception) -> None:
        """`prefix` raised `error`: every later pipeline starting with it is rejected for the same reason."""
        self._failed[prefix] = error

    def failure(self, methods: tuple[str, ...]) -> Exception | None:
        return next((self._failed[methods[:n]] for n in range(1, len(methods) + 1) if methods[:n] in self._failed), None)

    def wanted(self, prefix: tuple[str, ...]) -> bool:
        """Whether a pipeline not started yet starts with `prefix`."""
        return any(p[: len(prefix)] == prefix for p in self._pending)

    def store(self, prefix: tuple[str, ...], stage: _Stage) -> None:
        self._stored[prefix] = copy.deepcopy(stage)

    def take(self, methods: tuple[str, ...]) -> _Stage | None:
        """Start building `methods`: a copy of its longest stored prefix (None: start from the base
        model); stored prefixes that no other pending pipeline needs are dropped."""
        stage = next((self._stored[methods[:n]] for n in range(len(methods), 0, -1) if methods[:n] in self._stored), None)
        stage = copy.deepcopy(stage) if stage is not None else None
        self.drop(methods)
        return stage

    def drop(self, methods: tuple[str, ...]) -> None:
        """`methods` will not be built (or has started): forget it, and the stored prefixes only it needed."""
        if methods in self._pending:
            self._pending.remove(methods)
        for prefix in [p for p in self._stored if not self.wanted(p)]:
            del self._stored[prefix]


def build_candidate(methods: tuple[str, ...], base: nn.Module, ctx: MethodContext, prefixes: Prefixes | None = None) -> Candidate:
    """Apply `methods` in order to a copy of `base` (or of a stored prefix); the candidate carries its recipe."""
    candidate = Candidate(methods)
    start = time.perf_counter()
    stage = prefixes.take(methods) if prefixes is not None else None
    failed = prefixes.failure(methods) if prefixes is not None else None
    if failed is not None:
        raise failed
    stage = stage or _Stage(copy.deepcopy(base), [], [], [], 0.0, 0)
    candidate.notes = stage.notes
    ctx.notes = candidate.notes
    model = stage.model
    for index in range(stage.done, len(methods)):
        name = methods[index]
        method = get_method(name)
        if method.cpu_only and ctx.device.type != "cpu":
            ctx.note(logger, f"{name}: torch has no {ctx.device.type} kernels for this method; skipped (run on CPU to use it).")
        else:
            # Seeded per method, so its result depends on its inputs only: not on which candidates
            # ran before it, nor on whether its input came from a stored prefix.
            torch.manual_seed(ctx.config.seed)
            ctx.model_unchanged = not stage.records
            try:
                model, new_records = method.apply(model, ctx)
            except Exception as err:
                if prefixes is not None:
                    prefixes.fail(methods[: index + 1], err)
                raise
            crashpoint("optimize.method_applied")
            if new_records:
                stage.labels.append(method.label)
                stage.records.extend(new_records)
        stage.model = model
        prefix = methods[: index + 1]
        if prefixes is not None and prefixes.wanted(prefix):
            prefixes.store(prefix, dataclasses.replace(stage, seconds=stage.seconds + time.perf_counter() - start, done=index + 1))
    model.eval()
    model.pdo_recipe = Recipe(stage.records)
    candidate.model, candidate.labels = model, stage.labels
    candidate.seconds = stage.seconds + time.perf_counter() - start
    if not stage.records:
        candidate.status, candidate.reason = "rejected", "no method changed the model"
    return candidate


#: Methods that only add error to what they are given: post-training int8, no fine-tuning. (Factorizations
#: and pruning recover by distillation, and `qat` trains: they may win back a prefix's loss.)
ERROR_ONLY_METHODS = frozenset({"dynamic", "static", "fx"})


def over_budget_prefix(methods: tuple[str, ...], measured: list[Candidate], threshold: float) -> Candidate | None:
    """A measured candidate that is a proper prefix of `methods`, over the accuracy threshold, followed by error-only methods.

    Such a pipeline cannot come back within the budget (a MiniLM `svd+dynamic` after `svd` lost 0.045
    against a 0.02 budget cost 11 s of the conservative search), so it is not built.
    """
    for candidate in measured:
        n = len(candidate.methods)
        if n < len(methods) and methods[:n] == candidate.methods and candidate.accuracy_loss is not None \
                and candidate.accuracy_loss > threshold and set(methods[n:]) <= ERROR_ONLY_METHODS:
            return candidate
    return None


def accuracy_loss(model: nn.Module, ctx: MethodContext, original: dict[str, Any], probe: bool = False) -> float:
    """Loss against the original: task accuracy drop with `eval_fn`, else the task-aware fidelity loss
    (`evaluate.TASK_METRICS`) on the calibration inputs (`probe`: on `ctx.probe_inputs` only)."""
    if ctx.eval_fn is not None:
        return max(0.0, original["accuracy"] - float(ctx.eval_fn(model)))
    if probe:
        inputs, references = ctx.probe_inputs, probe_subset(original["calibration_references"])
    else:
        inputs, references = ctx.calibration_inputs, original["calibration_references"]
    return fidelity(model, inputs, references, ctx.device, original["logits"]).task_loss


def measure_candidate(candidate: Candidate, ctx: MethodContext, original: dict[str, Any]) -> None:
    """Size, fidelity on the held-out inputs and optional task accuracy; rejects it over the accuracy budget."""
    config = ctx.config
    model = candidate.model
    candidate.size_bytes = serialized_bytes(model)
    candidate.fidelity = fidelity(model, ctx.extras["held_out_inputs"], original["references"], ctx.device, original["logits"])
    if ctx.eval_fn is not None:
        candidate.accuracy = float(ctx.eval_fn(model))
        candidate.accuracy_loss = max(0.0, original["accuracy"] - candidate.accuracy)
    else:
        candidate.accuracy_loss = candidate.fidelity.task_loss
    if candidate.accuracy_loss > config.preserve_accuracy_threshold:
        candidate.status = "rejected"
        candidate.reason = (
            f"accuracy loss {candidate.accuracy_loss:.4f} exceeds preserve_accuracy_threshold "
            f"{config.preserve_accuracy_threshold:.4f}"
        )
    else:
        candidate.status = "accepted"
    logger.info(
        "candidate %s: %s, size %.1f%% of original, loss %.4f", "+".join(candidate.methods), candidate.status,
        100 * candidate.size_bytes / original["size_bytes"], candidate.accuracy_loss,
    )
