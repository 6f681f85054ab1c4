"""How far `prune` cuts: to the size target, unless that cut is beyond what recovery wins back.

The allocation (`prune._Allocation`) turns a budget in cost units into per-group widths and head counts;
this module picks the budget. First the largest one whose replayed model meets `ctx.target_ratio`
(bisected: sizes are measured on the replayed model, not summed, since two groups can cut one layer).
Then, when that cut's loss is beyond recovery, a milder one within the accuracy budget.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from ..budget import allocate_options
from ..evaluate import fidelity, reference_outputs
from ..pruning_slices import replay
from ..sizing import state_bytes

if TYPE_CHECKING:
    from .prune import _Allocation

logger = logging.getLogger("pdo_hub.optimizers.methods.prune")

BISECTION_STEPS = 18
SIZE_SLACK = 1.002  # a size within 0.2% of the target meets it (the bisection's last step)
# A cut that loses more than `RECOVERABLE` times `preserve_accuracy_threshold` (out of sample, before
# recovery) is beyond what distillation wins back: the digits ResNet-18 at 0.5 lost 0.051 and ended at
# 0.015 after recovery; MiniLM at its aggressive target cut 54 of 72 heads, lost 0.52 and ended at 0.52,
# so every pruned pipeline was rejected. Such a cut is made milder until it loses at most
# `ACCURACY_SHARE` of the threshold on the held-back half of the calibration batches. That estimate is
# optimistic on few inputs: MiniLM aggressive on the demo's 16 sentences (6 held back) then stored
# prune+dynamic at an embedding cosine on 16 unseen sentences of 0.976 with a share of 0.5 (over the
# 2% budget), 0.981 with 0.25 and 0.987 with 0.15 (0.255 of the size, `dynamic` alone 0.262).
RECOVERABLE = 5.0
ACCURACY_SHARE = 0.15
ACCURACY_STEPS = 5  # bisection steps between the size target's budget and no pruning


def prune_extent(model: nn.Module, ctx, allocation: _Allocation) -> tuple[dict[str, Any], dict[str, list[int]], float, bool]:
    """(channel plan, kept heads, size ratio of the replayed model, whether the accuracy bound made the cut milder)."""
    total_size = state_bytes(model)

    def at(budget: int) -> tuple[dict, dict, float]:
        plan, kept_heads = allocation.plan(budget)
        return plan, kept_heads, (state_bytes(replay(copy.deepcopy(model), plan)) / total_size if plan else 1.0)

    budget, found = _fit_to_size(ctx, allocation, at)
    bounded = _bound_by_accuracy(model, ctx, allocation, budget)
    return (*(found if bounded == budget else at(bounded)), bounded != budget)


def _fit_to_size(ctx, allocation: _Allocation, at) -> tuple[int, tuple[dict, dict, float]]:
    """(budget, `at(budget)`) for the largest budget whose replayed model meets the size target."""
    limit = ctx.target_ratio * SIZE_SLACK
    low, high = 0, allocation.total_units
    best = at(low)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) // 2
        candidate = at(middle)
        if candidate[0] and candidate[2] <= limit:
            low, best = middle, candidate
        else:
            high = middle
    return low, best


def _bound_by_accuracy(model: nn.Module, ctx, allocation: _Allocation, budget: int) -> int:
    """The budget to prune to: `budget` (the size target's) unless its cut is beyond recovery (`RECOVERABLE`);
    then the smallest budget, found by bisection towards no pruning, whose loss is within `ACCURACY_SHARE`
    of the threshold. A cut stronger than the budget allows is rejected anyway, and takes every pipeline
    that starts with it along.

    The loss is the task metric candidates are judged by (without labels), before recovery, with the
    compensation fitted on one half of the calibration batches and measured on the other: measured on
    the batches it was fitted to, MiniLM pruned to 0.0109 lost 0.078 on held-out sentences.
    """
    judge, threshold = allocation.judge, ctx.config.preserve_accuracy_threshold
    if not threshold or judge is allocation.fit:
        return budget  # too few batches to judge out of sample: the size target alone decides
    references = reference_outputs(model, judge, ctx.device)

    def loss_at(units: int) -> float:
        pruned = allocation.build(copy.deepcopy(model), allocate_options(allocation.options, units), allocation.fit_stats)
        return fidelity(pruned, judge, references, ctx.device).task_loss

    loss = loss_at(budget)
    if loss <= RECOVERABLE * threshold:
        return budget
    limit = ACCURACY_SHARE * threshold
    low, high = budget, allocation.total_units  # over the limit at `low`; the whole model loses nothing
    for _ in range(ACCURACY_STEPS):
        middle = (low + high) // 2
        if loss_at(middle) <= limit:
            high = middle
        else:
            low = middle
    # What the user can do about it: the loss is what the cut's compensation, fitted on the other half,
    # gets wrong on these batches, and it shrinks with more inputs of the kind the model will serve
    # (all-MiniLM-L6-v2, 0.79 of the multiply-adds: held-out loss 0.031 / 0.024 / 0.019 after 48 / 192 /
    # 768 sentences of the same kind, 0.14 on another kind; `scripts/bench_prune_data.py`).
    ctx.note(logger, f"prune: the size target's cut loses {loss:.4f} on {len(judge)} held-back calibration batches before "
                     f"recovery, more than recovery wins back ({RECOVERABLE:g}x the threshold): pruned only as far as a "
                     f"loss of {limit:.4f} ({ACCURACY_SHARE:g} of the threshold). The same cut loses less with more "
                     f"calibration inputs like those the model will serve ({len(ctx.calibration_inputs)} given).")
    return high
