"""Mixed precision: which layers to keep in higher precision so the loss fits a budget.

Shared by `dynamic` and `fx`. Each layer's sensitivity is the loss with only that layer quantized;
layers are then quantized from least to most sensitive, and a binary search finds the longest prefix
whose loss fits the budget. The rest (the most sensitive layers) stay in higher precision.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


def keep_high_precision(
    layers: Sequence[str], loss_with: Callable[[list[str]], float], budget: float, sensitivity: dict[str, float] | None = None,
    probe_with: Callable[[list[str]], float] | None = None,
) -> dict[str, float]:
    """The fewest most-sensitive layers to leave out of quantization so `loss_with(quantized) <= budget`.

    Args:
        layers: candidate layer paths.
        loss_with: loss of the model with exactly these layers quantized.
        budget: the largest acceptable loss.
        sensitivity: a precomputed sensitivity per layer (e.g. a cheap per-layer error proxy); when
            None, each layer's is measured as `probe_with([layer])` (one model evaluation per layer).
        probe_with: a cheaper `loss_with` for ranking layers (fewer inputs); default `loss_with`. The
            budget itself is always checked with `loss_with`.

    Returns:
        {path: sensitivity} of the layers to keep (empty when quantizing everything fits). When even
        none quantized breaks the budget: the layers whose quantizing did not lower the loss
        (`_most_faithful_mix`).
    """
    layers = list(layers)
    full = loss_with(layers)
    if full <= budget or not layers:
        logger.debug("mixed precision: every layer quantized, loss %.5f <= budget %.5f", full, budget)
        return {}
    measured = sensitivity is None
    if measured:
        sensitivity = {path: (probe_with or loss_with)([path]) for path in layers}
    order = sorted(layers, key=sensitivity.get)
    if measured and (base := loss_with([])) > budget:
        return _most_faithful_mix(order, sensitivity, loss_with, base, probe_with)
    low, high = 0, len(order) - 1  # invariant: prefix `low` fits (0 always does), prefix `high + 1` does not
    while low < high:
        middle = (low + high + 1) // 2
        if loss_with(order[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    kept = {path: sensitivity[path] for path in order[low:]}
    logger.debug("mixed precision: %d of %d layers kept (full loss %.5f, budget %.5f)", len(kept), len(layers), full, budget)
    return kept


def _most_faithful_mix(order: list[str], sensitivity: dict[str, float], loss_with, base: float, probe_with) -> dict[str, float]:
    """Nothing quantized already breaks the budget: quantize only the layers that lowered the loss alone.

    That happens with `dynamic`, whose "high precision" is per-token int8, not float: on a budget
    stricter than per-token int8 everywhere can meet (the quality preset's on all-MiniLM-L6-v2), some
    layers (after GELU, mostly non-negative) lose less on fbgemm's asymmetric per-tensor grid than on a
    symmetric per-token one. The mix is kept only if it measures better than keeping everything.
    """
    reference = probe_with([]) if probe_with is not None else base
    quantized = [path for path in order if sensitivity[path] < reference]
    if quantized and loss_with(quantized) < base:
        logger.debug("mixed precision: budget below the unquantized loss %.5f; %d layers lowered it", base, len(quantized))
        return {path: sensitivity[path] for path in order if path not in quantized}
    return {path: sensitivity[path] for path in order}


def split_budget(ctx, model, share: float = 0.5) -> float | None:
    """This step's loss budget: `share` of what earlier pipeline steps left of the threshold.

    None when there is no way to measure loss, or when earlier steps already broke the budget (the
    candidate will be rejected whatever happens here, so no time is spent searching).
    """
    return budget_after_earlier_steps(ctx, model, share)[0]


def budget_after_earlier_steps(ctx, model, share: float = 0.5) -> tuple[float | None, float]:
    """(`split_budget`'s total loss budget, the loss the earlier pipeline steps left): one measurement."""
    if ctx.measure_loss is None:
        return None, 0.0
    threshold = ctx.config.preserve_accuracy_threshold
    # An unchanged copy of the original has lost nothing: no evaluation of the calibration set to find that out.
    already = 0.0 if ctx.model_unchanged else ctx.measure_loss(model)
    if already > threshold:
        return None, already
    return already + share * (threshold - already), already
