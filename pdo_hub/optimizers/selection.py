"""Candidates and the seed's auto-selection score.

Candidates are pipelines of method names, always ordered pruning -> factorization -> quantization
(quantizing last keeps the int8 layers the ones that actually run). With auto-selection every
enabled method is tried alone and in combination; without it the configured pipeline comes first
and its shorter sub-pipelines are the fall-backs if it breaks the accuracy budget, those that still
end in int8 before those that do not. When the
configured quantization method is not the int8 flavour that fits the model (`flavours`), each
pipeline ending in it gets a twin ending in the one that fits, right after it.

Score = 0.4 * size term + 0.4 * speed term + 0.2 * accuracy term, each in [-1, 1]:
- size term: 1 - optimized size / original size (0.7 = 70% smaller);
- speed term: 1 - 1 / speedup (2x faster = 0.5; slower models go negative);
- accuracy term: 1 - accuracy loss / preserve_accuracy_threshold (1 = lossless, 0 = at the budget).

Sizes and losses are exact; speed is measured, and on a shared machine two timings of the same
model differ by several percent. Speedups within the measured noise of each other are therefore one
speed (`tied_speedups`): the candidates' scores then differ by size and accuracy only, and an exact
tie goes to the smaller, then the more accurate. The same inputs, config and machine choose the same
variant whenever the real speed differences are larger than the noise or smaller than it.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics

from ..core.config import PostDownloadOptimizationConfig
from .flavours import Fit, family

logger = logging.getLogger(__name__)

WEIGHTS = {"size": 0.4, "speed": 0.4, "accuracy": 0.2}
_ORDER = {"pruning": 0, "factorization": 1, "quantization": 2}


def enabled_stages(config: PostDownloadOptimizationConfig, notes: list[str]) -> list[str]:
    """The method names the config enables, in pipeline order."""
    stages = []
    if config.enable_structured_pruning:
        stages.append("prune")
    if config.enable_low_rank_optimization:
        method = config.low_rank_method
        if method in ("tucker", "hlrtf") and not config.enable_tensor_factorization:
            notes.append(f"low_rank_method '{method}' is a tensor factorization and enable_tensor_factorization is off: using svd.")
            method = "svd"
        stages.append(method)
    if config.enable_quantization:
        stages.append(config.quantization_method)
    return stages


def candidate_pipelines(config: PostDownloadOptimizationConfig, notes: list[str], fit: Fit | None = None) -> list[tuple[str, ...]]:
    """The pipelines to try, in the order they are tried (see the module docstring).

    Args:
        config: the validated config.
        notes: report notes; why a method was swapped or added is appended here.
        fit: the int8 flavour that fits the model (`flavours.fitting_quantization`); None: the
            configured quantization method only.
    """
    stages = enabled_stages(config, notes)
    subsets = [combo for size in range(len(stages), 0, -1) for combo in itertools.combinations(stages, size)]
    configured = config.quantization_method if config.enable_quantization else None
    if configured and fit is not None and family(configured) != fit.method:
        notes.append(
            f"quantization: '{configured}' is not the int8 flavour that fits this model ({fit.reason}): "
            f"'{fit.method}' is tried as well, after each pipeline that ends in '{configured}'."
        )
        subsets = [twin for combo in subsets for twin in ([combo, combo[:-1] + (fit.method,)] if combo[-1] == configured else [combo])]
    if config.auto_select_best_method:
        # Alone first, then combined: the report reads from simple to composite.
        return sorted(subsets, key=len)
    # Fall-backs that still quantize come first (longest first, as before): int8 is what makes a model
    # 4x smaller, so a float `prune` (0.97 of MiniLM's size) must not be kept while `dynamic` fits.
    quantizers = {configured, fit.method if fit is not None else None} - {None}
    return sorted(subsets, key=lambda combo: combo[-1] not in quantizers)


def gain(size_ratio: float, speedup: float | None) -> float:
    """The size and speed part of the score. Auto-selection only keeps a variant with a positive gain:
    one that is slower than it is smaller (dynamic int8 of a CNN's single Linear head) is worse than
    the original, however accurate."""
    speed_term = 0.0 if not speedup else max(-1.0, 1.0 - 1.0 / speedup)
    return WEIGHTS["size"] * (1.0 - size_ratio) + WEIGHTS["speed"] * speed_term


def score(size_ratio: float, speedup: float | None, accuracy_loss: float, threshold: float) -> float:
    accuracy_term = 1.0 - accuracy_loss / threshold if threshold > 0 else (1.0 if accuracy_loss <= 0 else 0.0)
    accuracy_term = max(-1.0, min(1.0, accuracy_term))
    return gain(size_ratio, speedup) + WEIGHTS["accuracy"] * accuracy_term


def tied_speedups(speedups: list[float], noise: float) -> list[float]:
    """Each speedup replaced by the mean of its speed class.

    Classes are formed from the fastest down: a class takes every next speedup within `noise`
    (relative) of its fastest member. Anchoring at the fastest keeps the classes the same when the
    measurements move by less than the noise.
    """
    order = sorted(range(len(speedups)), key=lambda i: -speedups[i])
    tied = list(speedups)
    start = 0
    while start < len(order):
        head = speedups[order[start]]
        end = start + 1
        while end < len(order) and speedups[order[end]] * (1.0 + noise) >= head:
            end += 1
        members = order[start:end]
        common = statistics.fmean(speedups[i] for i in members)
        for i in members:
            tied[i] = common
        start = end
    return tied


def versus_original(speedup: float | None, noise: float) -> float | None:
    """The speedup against the original, 1.0 when it is within the timing noise of it."""
    if speedup is None:
        return None
    return 1.0 if abs(math.log(speedup)) <= math.log1p(noise) else speedup


def rank_key(score_value: float, size_bytes: int, loss: float) -> tuple[float, int, float]:
    """The order auto-selection uses: score, then (exact ties) smaller size, then smaller loss."""
    return (round(score_value, 9), -size_bytes, -loss)


def select(candidates: list, original_bytes: int, config: PostDownloadOptimizationConfig, noise: float, notes: list[str]):
    """Score the measured candidates, reject those with no net gain, and pick one (None: keep the original).

    Args:
        candidates: `Candidate`s with size, loss and (when benchmarked) speedup measured; status
            `accepted` when within the accuracy budget.
        original_bytes: the original model's size.
        config: the config (threshold, auto-selection).
        noise: the relative timing noise (`evaluate.timing_noise`).
        notes: report notes; speed ties that decided the choice are explained here.
    """
    threshold = config.preserve_accuracy_threshold
    for c in candidates:
        if c.size_bytes is not None and c.accuracy_loss is not None:
            c.score = score(c.size_bytes / original_bytes, c.speedup, c.accuracy_loss, threshold)
    accepted = [c for c in candidates if c.status == "accepted"]
    if config.auto_select_best_method:
        for c in accepted:
            if gain(c.size_bytes / original_bytes, versus_original(c.speedup, noise)) <= 0:
                c.status = "rejected"
                c.reason = "no net gain: what it saves in size does not make up for what it loses in speed"
        accepted = [c for c in accepted if c.status == "accepted"]
    if not accepted:
        return None
    if not config.auto_select_best_method:
        chosen = accepted[0]  # the configured pipeline, or its longest fall-back within the budget
    else:
        speedups = [c.speedup for c in accepted]
        if all(s is not None for s in speedups):
            for c, tied in zip(accepted, tied_speedups(speedups, noise)):
                c.score_speedup = tied
                c.score = score(c.size_bytes / original_bytes, tied, c.accuracy_loss, threshold)
        chosen = max(accepted, key=lambda c: rank_key(c.score, c.size_bytes, c.accuracy_loss))
        peers = [c for c in accepted if c.score_speedup is not None and c.score_speedup == chosen.score_speedup]
        if len(peers) > 1:
            notes.append(
                f"selection: {', '.join('+'.join(c.methods) for c in peers)} are within the timing noise "
                f"({100 * noise:.1f}%) of each other in speed: they were scored at one speed, so size and accuracy decided."
            )
    chosen.status = "selected"
    return chosen
