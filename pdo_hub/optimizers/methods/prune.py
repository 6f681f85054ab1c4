"""`prune`: structured channel pruning that keeps every coupled layer consistent.

Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023) groups the channels that must go
together (a conv's outputs, its BatchNorm, the next convs' inputs, residual additions...). Each group
is scored channel by channel from weights *and* activations: removing channel c deletes, in every
consumer layer, the output energy sum_k ||W[:, c, k]||^2 E[x_{c,k}^2] (Wanda-style; E from the
calibration inputs' im2col patches), taken relative to the consumer's total output energy. A group's
options are "keep its top-k channels" (k on a multiple-of-8 grid where the layer is wide enough, and
never below 1/8 of the channels), with the lost share as error, and `budget.allocate_options` picks k
per group so the model reaches `ctx.target_ratio` of its size: widths are error-driven, not uniform.
Groups that would change the model's output shape, touch tied weights or hold layers the replay
cannot slice are left alone.

The record holds the kept channel indices per module ({path: {"type", "out", "in"}}); `restore`
replays them with `pruning_slices.replay`, no dependency graph needed. A bounded distillation follows.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn

from ..activations import input_grams
from ..budget import LayerOptions, allocate_options
from ..inputs import call_model, output_tensor
from ..modules import shared_parameter_ids
from ..pruning_slices import channel_counts, replay, sliceable
from ..recovery import recover
from ..registry import Method, register_method
from ..sizing import state_bytes

logger = logging.getLogger(__name__)


def _untouchable_modules(model: nn.Module, example) -> tuple[set[int], set[int]]:
    """ids of (modules whose output channels must stay: they produce the model's output, layers with
    weights called more than once per forward: their input and output widths are tied to each other)."""
    produced: dict[int, int] = {}
    calls: dict[int, int] = {}

    def hook(module, _args, out):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = id(module)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            final = output_tensor(call_model(model, example))
    finally:
        for handle in handles:
            handle.remove()
    reused = {mid for mid, count in calls.items() if count > 1}
    return ({produced[id(final)]} if id(final) in produced else set()), reused


def _groups(model: nn.Module, ctx) -> list[tuple[int, list[tuple]]]:
    """[(channels, [(path, module, side, idxs, root idxs), ...]), ...] for every prunable group."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=ctx.example_inputs, forward_fn=lambda m, x: output_tensor(call_model(m, x)), verbose=False,
    )
    names = {id(m): path for path, m in model.named_modules()}
    shared = shared_parameter_ids(model)
    outputs, reused = _untouchable_modules(model, ctx.example_inputs)
    groups = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)):
        items, usable = [], True
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or next(module.parameters(recurse=False), None) is None:
                continue  # an operation (add, cat, relu...) with nothing to slice
            out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
            if (
                not sliceable(module) or id(module) not in names or id(module) in reused or (out_side and id(module) in outputs)
                or any(id(p) in shared for p in module.parameters())
            ):
                usable = False  # replay could not rebuild it, or it would change the output / a tied weight
                break
            side = "out" if out_side or channel_counts(module)[1] is None else "in"
            roots = item.root_idxs if item.root_idxs is not None else item.idxs
            items.append((names[id(module)], module, side, list(item.idxs), list(roots)))
        if usable and items:
            groups.append((len(group.items[0].idxs), items))
    return groups


def _channel_scores(model: nn.Module, ctx, groups) -> list[torch.Tensor]:
    """Per group: the share of consumer output energy each root channel carries (weights x activations)."""
    consumers = {path: module for _, items in groups for path, module, side, _, _ in items if side == "in"}
    energy = input_grams(model, consumers, ctx.calibration_inputs, ctx.device, diagonal_only=True)
    scores = []
    for n, items in groups:
        # A tiny weight-magnitude term orders channels that no consumer saw (e.g. only feeding the output).
        score = torch.zeros(n, dtype=torch.float64)
        for path, module, side, idxs, roots in items:
            weight = module.weight.detach().double()
            if side == "out":
                magnitude = weight.reshape(weight.shape[0], -1)[idxs].square().sum(1)
                score.index_add_(0, torch.tensor(roots), 1e-9 * magnitude / magnitude.sum().clamp_min(1e-30))
            elif path in energy:
                act, count = energy[path]
                per_input = weight.square().sum(0).reshape(-1) * act / max(count, 1)  # (Cin*kh*kw,)
                per_channel = per_input.reshape(weight.shape[1], -1).sum(1)
                score.index_add_(0, torch.tensor(roots), per_channel[idxs] / per_channel.sum().clamp_min(1e-30))
        scores.append(score)
    return scores


def _per_channel_params(n: int, items) -> int:
    cost = 0
    for _, module, side, idxs, _ in items:
        out_n, in_n = channel_counts(module)
        per_index = module.weight.numel() // (out_n if side == "out" else in_n)
        extra = (1 if getattr(module, "bias", None) is not None else 0) + (2 if getattr(module, "running_mean", None) is not None else 0)
        cost += len(idxs) * (per_index + (extra if side == "out" else 0))
    return max(1, cost // max(n, 1))


def _width_grid(n: int) -> list[int]:
    """Candidate widths: multiples of 8 (SIMD-friendly) for wide layers, never below n/8."""
    floor = max(1, n // 8)
    step = 8 if n >= 64 else 1
    return sorted({k for k in range(step, n, step) if k >= floor} | ({floor} if floor < n else set()))


def _plan(groups, scores, keep: dict[int, int]) -> dict[str, dict[str, Any]]:
    """{path: {"type", "out", "in"}} keeping the top `keep[g]` root channels of group g."""
    dropped: dict[tuple[str, str], set[int]] = {}
    modules = {}
    for g, k in keep.items():
        kept_roots = set(torch.argsort(scores[g], descending=True)[:k].tolist())
        for path, module, side, idxs, roots in groups[g][1]:
            modules[path] = module
            dropped.setdefault((path, side), set()).update(i for i, r in zip(idxs, roots) if r not in kept_roots)
    plan: dict[str, dict[str, Any]] = {}
    for (path, side), gone in dropped.items():
        module = modules[path]
        total = channel_counts(module)[0 if side == "out" else 1]
        entry = plan.setdefault(path, {"type": type(module).__name__, "out": None, "in": None})
        entry[side] = [i for i in range(total) if i not in gone]
    return plan


@register_method
class StructuredPruning(Method):
    name = "prune"
    kind = "pruning"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        groups = _groups(model, ctx)
        if not groups:
            ctx.note(logger, "prune: no channel group can be pruned without changing the model's outputs.")
            return model, []
        scores = _channel_scores(model, ctx, groups)
        options = []
        for g, (n, items) in enumerate(groups):
            per_channel = _per_channel_params(n, items)
            share = (scores[g] / scores[g].sum().clamp_min(1e-30)).sort(descending=True).values.cumsum(0)
            options.append(LayerOptions(str(g), n * per_channel, [(k * per_channel, max(0.0, 1.0 - float(share[k - 1])), k) for k in _width_grid(n)]))
        total = state_bytes(model)
        target = ctx.target_ratio * total
        budget_params = sum(option.dense_params for option in options)
        itemsize = next(model.parameters()).element_size()
        plan, size = {}, total
        for _ in range(12):  # the per-group estimate ignores that two groups can cut the same conv: measure and tighten
            target_params = int(budget_params - (total - target) / itemsize)
            keep = {int(g): k for g, k in allocate_options(options, max(target_params, 0)).items()}
            plan = _plan(groups, scores, keep)
            size = state_bytes(replay(copy.deepcopy(model), plan))
            if size <= target * 1.002 or not plan:
                break
            budget_params -= int((size - target) / itemsize)
        if not plan:
            ctx.note(logger, f"prune: target ratio {ctx.target_ratio:.2f} cannot be reached by pruning channels.")
            return model, []
        replay(model, plan)
        record = {"method": self.name, "modules": plan, "size_ratio": round(size / total, 6)}
        logger.debug("prune: %d modules sliced, size %.3f of the input", len(plan), size / total)
        recover(model, ctx, self.name, [record])
        return model, [record]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return replay(model, record["modules"])
