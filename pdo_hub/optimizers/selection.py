"""Candidates and the seed's auto-selection score.

Candidates are pipelines of method names, always ordered pruning -> factorization -> quantization
(quantizing last keeps the int8 layers the ones that actually run). With auto-selection every
enabled method is tried alone and in combination; without it the configured pipeline comes first
and its shorter sub-pipelines are the fall-backs if it breaks the accuracy budget.

Score = 0.4 * size term + 0.4 * speed term + 0.2 * accuracy term, each in [-1, 1]:
- size term: 1 - optimized size / original size (0.7 = 70% smaller);
- speed term: 1 - 1 / speedup (2x faster = 0.5; slower models go negative);
- accuracy term: 1 - accuracy loss / preserve_accuracy_threshold (1 = lossless, 0 = at the budget).
"""

from __future__ import annotations

import itertools
import logging

from ..core.config import PostDownloadOptimizationConfig

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


def candidate_pipelines(config: PostDownloadOptimizationConfig, notes: list[str]) -> list[tuple[str, ...]]:
    stages = enabled_stages(config, notes)
    subsets = [combo for size in range(len(stages), 0, -1) for combo in itertools.combinations(stages, size)]
    if config.auto_select_best_method:
        # Alone first, then combined: the report reads from simple to composite.
        return sorted(subsets, key=len)
    return subsets


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
