"""`prune`: structured channel pruning that keeps every coupled layer consistent.

Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023) groups the channels that must go
together (a conv's outputs, its BatchNorm, the next convs' inputs, residual additions...). Each group
is scored channel by channel from weights *and* activations: removing channel c deletes, in every
consumer layer, the output energy sum_k ||W[:, c, k]||^2 E[x_{c,k}^2] (Wanda-style; E from the
calibration inputs' im2col patches), taken relative to the consumer's total output energy. A group's
options are "keep its top-k channels" (k on a multiple-of-16 grid where the layer is wide enough, and
never below 1/8 of the channels), with the lost share as error, and `budget.allocate_options` picks k
per group: widths are error-driven, not uniform. Groups that would change the model's output shape,
touch tied weights or hold layers the replay cannot slice are left alone, and so are projections
split into attention heads (q/k/v and what is coupled to them: whole-head pruning is not implemented,
and slicing channels out of a head breaks its reshape); a transformer's FFN neurons are pruned.

People prune channels for speed as much as for size. `ctx.target_ratio` bounds the size; the cost
of a channel in the allocation is its share of the groups' parameters plus `COMPUTE_WEIGHT` times its
share of their multiply-adds on the example input, so at equal error the cuts go where they also save
compute. Counting parameters alone cuts mostly the deep layers, which hold the parameters but little
of the work at high resolution. The budget in those units is bisected until the replayed model
meets the size target (measured, not summed: two groups can cut the same layer). Both counts are
exact, so the widths do not depend on the machine's timings.

The seed's "low-rank regularization" is realized as low-rank compensation: a layer's input channels
are strongly correlated (the activations are close to low rank), so the channels that go are
largely predictable from those that stay. For every consumer layer, ridge regression on the
calibration inputs finds B with X_dropped ~ X_kept B (per pixel or token; the ridge is
d / (d + n) of the mean energy for d kept channels and n samples, so few samples mean a cautious fit),
and the kept input weights absorb it: W_kept += W_dropped B^T. Because a convolution is linear in
its input channels this is exact in form for convs and Linears; it is folded into the weights, so
the stored model has the usual structure (`scripts/bench_lowrank.py`, digits ResNet-18 at 0.5:
97.50% top-1 before any recovery, FP32 99.00%; Torch-Pruning alone at the same size keeps 11.75%).

The record holds the kept channel indices per module ({path: {"type", "out", "in"}}); `restore`
replays them with `pruning_slices.replay`, no dependency graph needed. A bounded distillation follows,
then each BatchNorm is folded into the conv feeding it (`norm_folding.py`, recorded as
"folded_norms"): the pruned model is for inference, and the norms are a sizeable share of its time.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..activations import input_grams
from ..budget import LayerOptions, allocate_options
from ..inputs import call_model, output_tensor
from ..modules import multiply_adds, shared_parameter_ids
from ..norm_folding import fold_norms_after, restore_folded
from ..pruning_slices import channel_counts, replay, sliceable
from ..recovery import recover
from ..registry import Method, register_method
from ..sizing import state_bytes

logger = logging.getLogger(__name__)
UNIT_SCALE = 10**9  # allocation costs are integers
# Digits ResNet-18 (32x32, batch 1) at target 0.5 after 60 distillation steps, two runs each of
# `scripts/bench_lowrank.py --methods prune --ratios 0.5 --int8 '' --skip-minilm` with this weight:
# 5 -> 1.52-1.60x FP32 eager, -0.5 pt top-1; 10 -> 1.53-1.55x, -2.25 pt.
COMPUTE_WEIGHT = 5.0
BISECTION_STEPS = 18


_RESHAPES = {"view", "reshape", "unflatten"}


class _HeadSplits(TorchFunctionMode):
    """Records the modules whose output is reshaped into more dimensions: a projection split into
    attention heads (`query(x).view(batch, length, heads, head_dim)`). Slicing such an output breaks the
    head reshape (`shape '[1, 128, -1, 32]' is invalid`) or misaligns the heads, so its channels stay.

    Producers follow a tensor through shape-preserving operations (scaling, dropout, activations), so
    `(query(x) * scale).view(...)` is caught too.
    """

    def __init__(self, producers: dict[int, frozenset[int]], keep_alive: list) -> None:
        super().__init__()
        self.producers, self.keep_alive = producers, keep_alive
        self.split: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        sources = [a for a in args if isinstance(a, torch.Tensor) and id(a) in self.producers]
        if not sources or not isinstance(result, torch.Tensor):
            return result
        origin = frozenset().union(*(self.producers[id(a)] for a in sources))
        if getattr(func, "__name__", "") in _RESHAPES and args[0] in sources and result.dim() > args[0].dim():
            self.split |= origin
        elif any(result.shape == a.shape for a in sources) and id(result) not in self.producers:
            self.producers[id(result)] = origin
            self.keep_alive.append(result)
        return result


def _untouchable_modules(model: nn.Module, example) -> tuple[set[int], set[int], set[int]]:
    """ids of (modules whose output channels must stay: they produce the model's output, layers with
    weights called more than once per forward: their input and output widths are tied to each other,
    modules whose output is split into attention heads)."""
    produced: list[tuple[torch.Tensor, int]] = []  # tensors held, so their ids cannot be reused meanwhile
    producers: dict[int, frozenset[int]] = {}
    hooked: set[int] = set()
    calls: dict[int, int] = {}

    def hook(module, _args, out):
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(out, torch.Tensor):
            produced.append((out, id(module)))
            # Innermost first: hooks fire inner to outer, and a parent returning the same tensor did not
            # produce it. A module's own output replaces what the operations inside it propagated.
            if id(out) not in hooked:
                hooked.add(id(out))
                producers[id(out)] = frozenset({id(module)})

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    kept: list[torch.Tensor] = []
    try:
        with torch.no_grad(), _HeadSplits(producers, kept) as splits:
            final = output_tensor(call_model(model, example))
    finally:
        for handle in handles:
            handle.remove()
    reused = {mid for mid, count in calls.items() if count > 1}
    producer = next((module_id for tensor, module_id in produced if tensor is final), None)
    return ({producer} if producer is not None else set()), reused, splits.split


def _groups(model: nn.Module, ctx) -> list[tuple[int, list[tuple]]]:
    """[(channels, [(path, module, side, idxs, root idxs), ...]), ...] for every prunable group."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=ctx.example_inputs, forward_fn=lambda m, x: output_tensor(call_model(m, x)), verbose=False,
    )
    names = {id(m): path for path, m in model.named_modules()}
    shared = shared_parameter_ids(model)
    outputs, reused, head_splits = _untouchable_modules(model, ctx.example_inputs)
    groups, heads = [], []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)):
        items, usable = [], True
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or next(module.parameters(recurse=False), None) is None:
                continue  # an operation (add, cat, relu...) with nothing to slice
            out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
            if out_side and id(module) in head_splits:
                heads.append(names.get(id(module), type(module).__name__))
                usable = False  # attention heads: pruning them whole is not implemented yet
                break
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
    if heads:
        ctx.note(
            logger,
            f"prune: {len(heads)} channel groups feed an attention-head reshape ({', '.join(sorted(heads)[:3])}"
            f"{', ...' if len(heads) > 3 else ''}) and are left whole (head pruning is not implemented); "
            f"{len(groups)} other groups can be pruned.",
        )
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


def _per_channel_cost(n: int, items, macs: dict[int, int]) -> tuple[int, int]:
    """(parameters, multiply-adds) one root channel of the group carries."""
    params = work = 0
    for _, module, side, idxs, _ in items:
        out_n, in_n = channel_counts(module)
        width = out_n if side == "out" else in_n
        extra = (1 if getattr(module, "bias", None) is not None else 0) + (2 if getattr(module, "running_mean", None) is not None else 0)
        params += len(idxs) * (module.weight.numel() // width + (extra if side == "out" else 0))
        work += len(idxs) * macs.get(id(module), 0) // width
    return max(1, params // max(n, 1)), work // max(n, 1)


def _width_grid(n: int) -> list[int]:
    """Candidate widths: multiples of 16 for layers of 64 channels or more, never below n/8.

    oneDNN's CPU convs work in 16-channel blocks (AVX-512) shared among threads; other widths cost
    as much as the next good one or more (`scripts/bench_cpu_kernels.py`, 2 threads, 3x3 conv, batch
    1: at 32x32, 40 channels 159-181 us vs 48 channels 143-172 us; at 16x16, 80 channels 184-186 us
    vs 96 channels 135-136 us, two runs).
    """
    floor = max(1, n // 8)
    step = 16 if n >= 64 else 1
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


@torch.no_grad()
def _compensate(model: nn.Module, plan: dict[str, dict[str, Any]], ctx) -> int:
    """Fold each consumer's dropped input channels into its kept ones (least squares); returns layers changed."""
    modules = {path: model.get_submodule(path) for path, entry in plan.items() if entry["in"] is not None}
    consumers = {
        path: module for path, module in modules.items()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1
    }
    grams = input_grams(model, consumers, ctx.calibration_inputs or [ctx.example_inputs], ctx.device, channels=True)
    changed = 0
    for path, module in consumers.items():
        if path not in grams:
            continue
        gram, count = grams[path]
        kept = torch.tensor(plan[path]["in"])
        dropped = torch.tensor(sorted(set(range(gram.shape[0])) - set(plan[path]["in"])))
        if not len(dropped) or not len(kept):
            continue
        g_kk, g_kd = gram[kept][:, kept] / count, gram[kept][:, dropped] / count
        ridge = len(kept) / (len(kept) + count) * float(g_kk.diagonal().mean()) + 1e-12
        mix = torch.linalg.solve(g_kk + ridge * torch.eye(len(kept), dtype=g_kk.dtype), g_kd)  # X_d ~ X_k @ mix
        weight = module.weight.double()
        absorbed = torch.einsum("od...,kd->ok...", weight[:, dropped], mix)
        module.weight[:, kept] = (weight[:, kept] + absorbed).to(module.weight.dtype)
        changed += 1
    return changed


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
        macs = multiply_adds(model, ctx.example_inputs)
        costs = [_per_channel_cost(n, items, macs) for n, items in groups]
        all_params = sum(n * p for (n, _), (p, _) in zip(groups, costs))
        all_macs = sum(n * w for (n, _), (_, w) in zip(groups, costs)) or 1

        def units(k: int, params: int, work: int) -> int:
            return int(round(UNIT_SCALE * k * (params / all_params + COMPUTE_WEIGHT * work / all_macs)))

        options = []
        for g, (n, items) in enumerate(groups):
            share = (scores[g] / scores[g].sum().clamp_min(1e-30)).sort(descending=True).values.cumsum(0)
            options.append(LayerOptions(str(g), units(n, *costs[g]), [(units(k, *costs[g]), max(0.0, 1.0 - float(share[k - 1])), k) for k in _width_grid(n)]))
        total_size, total_macs = state_bytes(model), sum(macs.values())

        def attempt(budget: int) -> tuple[dict, float]:
            keep = {int(g): k for g, k in allocate_options(options, max(budget, 0)).items()}
            plan = _plan(groups, scores, keep)
            return plan, (state_bytes(replay(copy.deepcopy(model), plan)) / total_size if plan else 1.0)

        # The largest budget (in cost units) whose replayed model meets the size target.
        limit = ctx.target_ratio * 1.002
        low, high = 0, sum(option.dense_params for option in options)
        plan, size = attempt(low)
        for _ in range(BISECTION_STEPS):
            middle = (low + high) // 2
            candidate, candidate_size = attempt(middle)
            if candidate and candidate_size <= limit:
                low, plan, size = middle, candidate, candidate_size
            else:
                high = middle
        if not plan:
            ctx.note(logger, f"prune: target ratio {ctx.target_ratio:.2f} cannot be reached by pruning channels.")
            return model, []
        if size > limit:
            ctx.note(logger, f"prune: the narrowest allowed widths keep {size:.3f} of the size, above the target {ctx.target_ratio:.2f}.")
        compensated = _compensate(model, plan, ctx)
        replay(model, plan)
        work = sum(multiply_adds(model, ctx.example_inputs).values()) / total_macs
        record = {"method": self.name, "modules": plan, "size_ratio": round(size, 6), "multiply_add_ratio": round(work, 6)}
        logger.debug("prune: %d modules sliced (%d compensated), size %.3f and multiply-adds %.3f of the input", len(plan), compensated, size, work)
        recover(model, ctx, self.name, [record])
        return fold_norms_after(model, ctx, [record]), [record]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return restore_folded(replay(model, record["modules"]), record.get("folded_norms", []))
