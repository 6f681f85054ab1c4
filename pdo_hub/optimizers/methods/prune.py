"""`prune`: structured pruning of channels and whole attention heads, every coupled layer kept consistent.

What is pruned: the channel groups of convs and Linears (a CNN's conv channels, a transformer's FFN
neurons) and the whole heads of BERT-style self-attention (`_head_pruning.py`: query/key/value rows and
the output projection's columns of a head, and the module's head count).

Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023) groups the channels that must go
together (a conv's outputs, its BatchNorm, the next convs' inputs, residual additions...). Each group
is scored channel by channel, and each attention layer head by head, by the model's output loss when
that unit alone goes (`_sensitivity.py`: the Gauss-Newton estimate from gradients of the output with
respect to a gate on the unit's input to each consumer, through everything after it). A unit's input
is replaced by its calibration mean where the consumer is a Linear with a bias (compensation moves the
mean into the bias), else by zero. Compared with scoring by the energy a channel carries into its own
consumer (sum_k ||W[:, c, k]||^2 E[x_{c,k}^2], Wanda-style; still the fall-back for a model autograd
cannot differentiate), it keeps units that later layers amplify: digits ResNet-18 cut to 0.3 of its
size without recovery keeps output cosine 0.963 instead of 0.923 (96.00% top-1 instead of 94.25%;
one-off A/B, 2026-12-02), and all-MiniLM-L6-v2 the figures in `_sensitivity.py`.
A group's options are "keep its top-k channels" (k on a multiple-of-16 grid where the layer is wide
enough, and never below 1/8 of the channels); an attention layer's are "keep its top-k heads" (never
below 1/4 of them). `budget.allocate_options` picks k per group and per layer: widths and head counts
are error-driven, not uniform. Shares compare channels within a layer, not layers with each other, so
each menu's errors are calibrated: the model's output loss (1 - output cosine, mask-pooled for token
encoders) is measured with only that group or layer pruned, compensated, at a few widths (`PROBES`),
fitted on half of the calibration batches and measured on the other half (all-MiniLM-L6-v2 at size
0.85, no recovery, held-out cosine: shares alone 0.922 and no head pruned; measured on the fitting
batches 0.911; measured on the other half 0.959). Groups that would change the model's output shape,
touch tied weights or hold layers the replay cannot slice are left alone, and so are projections split
into attention heads that are not recognized as BERT-style heads (slicing channels out of a head
breaks its reshape; `_head_pruning` checks the layout on the model before it offers heads).

People prune channels for speed as much as for size. `ctx.target_ratio` bounds the size; the cost
of a channel (or head) in the allocation is its share of the prunable parameters plus `COMPUTE_WEIGHT`
times its share of their multiply-adds on the example input (for a head: its projections and its
score and weighted-sum products), so at equal error the cuts go where they also save compute.
Counting parameters alone cuts mostly the deep layers, which hold the parameters but little
of the work at high resolution. The budget in those units is bisected until the replayed model
meets the size target (measured, not summed: two groups can cut the same layer). Both counts are
exact, so the widths do not depend on the machine's timings.

The seed's "low-rank regularization" is realized as low-rank compensation (`_compensation.py`): each
consumer's dropped input channels, and the dropped heads in the output projection, are predicted from
the kept ones by ridge regression on calibration statistics and folded into the kept weights (and a
Linear's bias), so the stored model has the usual structure (`scripts/bench_lowrank.py`, digits
ResNet-18 at 0.5: see the low-rank table in docs/benchmarks.md; Torch-Pruning alone at the same size keeps 11.75%).
Statistics are taken on token batches without their trailing padding: a batch-1 sentence padded to
128 tokens is mostly pad tokens, which would dominate them (recovery keeps the padded batches).

The record holds the kept channel indices per module ({path: {"type", "out", "in"}}) and, when heads
went, the kept heads per attention module ({path: {"type", "kept"}} under "heads"); `restore` replays
them with `pruning_slices.replay` and `_head_pruning.restore_head_counts`, no dependency graph needed.
A bounded distillation follows, then each BatchNorm is folded into the conv feeding it
(`norm_folding.py`, recorded as "folded_norms"): the pruned model is for inference, and the norms are a
sizeable share of its time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..activations import input_grams
from ..budget import LayerOptions, allocate_options
from ..evaluate import fidelity, reference_outputs
from ..inputs import call_model, output_tensor, without_trailing_padding
from ..modules import multiply_adds, shared_parameter_ids
from ..norm_folding import fold_norms_after, restore_folded
from ..pruning_slices import channel_counts, replay, sliceable
from ..recovery import recover
from ..registry import Method, register_method
from ._compensation import compensate, consumer_stats, merged
from ._sensitivity import input_sensitivity
from ._prune_extent import SIZE_SLACK, prune_extent
from ._head_pruning import (
    AttentionLayer, find_attention_layers, head_scores, heads_record, kept_head_counts, per_head_cost, restore_head_counts,
    top_heads,
)

logger = logging.getLogger(__name__)
UNIT_SCALE = 10**9  # allocation costs are integers
# Digits ResNet-18 (32x32, batch 1) at target 0.5 after 60 distillation steps, two runs each of
# `scripts/bench_lowrank.py --methods prune --ratios 0.5 --int8 '' --skip-minilm` with this weight:
# 5 -> 1.52-1.60x FP32 eager, -0.5 pt top-1; 10 -> 1.53-1.55x, -2.25 pt.
COMPUTE_WEIGHT = 5.0
PROBES = (0.0, 0.4, 0.75)  # where in each menu (most lost first) the output loss is measured


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


def _real_token_context(ctx):
    """`ctx` whose calibration inputs carry no trailing padding (shares its notes, config and teacher)."""
    return dataclasses.replace(ctx, calibration_inputs=[without_trailing_padding(b) for b in ctx.calibration_inputs])


def _excluded_modules(model: nn.Module, untouchable: tuple[set[int], set[int], set[int]]) -> set[int]:
    """ids of modules no slice may touch: they produce the output, run twice per forward or share weights."""
    outputs, reused, _ = untouchable
    shared = shared_parameter_ids(model)
    return outputs | reused | {id(m) for m in model.modules() if any(id(p) in shared for p in m.parameters(recurse=False))}


def _attention_layers(model: nn.Module, ctx, untouchable) -> list[AttentionLayer]:
    """The attention modules whose heads can be pruned whole; the others' heads stay (see `_groups`)."""
    return find_attention_layers(model, ctx.example_inputs, untouchable[2], _excluded_modules(model, untouchable))


def _groups(model: nn.Module, ctx, untouchable, layers: list[AttentionLayer]) -> list[tuple[int, list[tuple]]]:
    """[(channels, [(path, module, side, idxs, root idxs), ...]), ...] for every prunable channel group.

    Groups that touch what whole-head pruning of `layers` slices are left to it.
    """
    import torch_pruning as tp

    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=ctx.example_inputs, forward_fn=lambda m, x: output_tensor(call_model(m, x)), verbose=False,
        )
    except Exception as error:  # e.g. transformers' GPT-2: Torch-Pruning's index mapping of a concatenation fails (TypeError)
        ctx.note(logger, f"prune: Torch-Pruning could not map this model's channel dependencies ({type(error).__name__}: "
                         f"{error}); no channel group is pruned.")
        return []
    names = {id(m): path for path, m in model.named_modules()}
    shared = shared_parameter_ids(model)
    outputs, reused, head_splits = untouchable
    head_owned = set().union(*(layer.modules_touched() for layer in layers))
    handled = {path for layer in layers for path in layer.projections}
    groups, heads = [], []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)):
        items, usable = [], True
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or next(module.parameters(recurse=False), None) is None:
                continue  # an operation (add, cat, relu...) with nothing to slice
            out_side = graph.is_out_channel_pruning_fn(item.dep.handler)
            if out_side and id(module) in head_splits:
                if names.get(id(module)) not in handled:
                    heads.append(names.get(id(module), type(module).__name__))
                usable = False  # slicing channels out of a head breaks its reshape; whole heads are pruned apart
                break
            if (
                not sliceable(module) or id(module) not in names or id(module) in reused or (out_side and id(module) in outputs)
                or any(id(p) in shared for p in module.parameters())
            ):
                usable = False  # replay could not rebuild it, or it would change the output / a tied weight
                break
            side = "out" if out_side or channel_counts(module)[1] is None else "in"
            if (names[id(module)], side) in head_owned:
                usable = False  # these channels are whole heads: head pruning decides them
                break
            roots = item.root_idxs if item.root_idxs is not None else item.idxs
            items.append((names[id(module)], module, side, list(item.idxs), list(roots)))
        if usable and items:
            groups.append((len(group.items[0].idxs), items))
    if heads:
        ctx.note(
            logger,
            f"prune: {len(heads)} channel groups feed an attention-head reshape ({', '.join(sorted(heads)[:3])}"
            f"{', ...' if len(heads) > 3 else ''}) and are left whole (their heads are not BERT-style heads that can be "
            f"pruned whole); {len(groups)} other groups can be pruned.",
        )
    return groups


def _sensitivity(model: nn.Module, ctx, groups, layers: list[AttentionLayer], means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{consumer path: output sensitivity per input channel, or per head for attention outputs}; {} if
    the model cannot be differentiated (the scores then fall back to each layer's own energy)."""
    consumers = {path: module for _, items in groups for path, module, side, _, _ in items if side == "in"}
    units = {path: channel_counts(module)[1] for path, module in consumers.items()}
    for layer in layers:
        consumers[layer.output] = model.get_submodule(layer.output)
        units[layer.output] = layer.heads
    try:
        return input_sensitivity(model, consumers, units, ctx.calibration_inputs, ctx.device, means)
    except RuntimeError as error:  # e.g. an operation without a backward: the energy scores still work
        logger.debug("prune: no output sensitivity (%s); scoring by each layer's input energy", error)
        return {}


def _channel_scores(model: nn.Module, ctx, groups, means: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per group: the share of the loss (or, without `sensitivity`, of consumer output energy) each root channel carries.

    With `sensitivity` (`_sensitivity.py`) a channel is scored by how much the model's output moves
    when it goes, summed over its consumers. Without it, by the energy it carries into each consumer
    (weights x activations); for a Linear with a bias the energy is taken about the input's mean
    (Var[x] instead of E[x^2]): `compensate` folds a dropped channel's mean into the bias, so only its
    fluctuation is lost (FLAP, An et al., AAAI 2024). A GELU neuron with a large but steady output is
    then cheap to drop.
    """
    consumers = {path: module for _, items in groups for path, module, side, _, _ in items if side == "in" and path not in sensitivity}
    energy = input_grams(model, consumers, ctx.calibration_inputs, ctx.device, diagonal_only=True) if consumers else {}
    scores = []
    for n, items in groups:
        # A tiny weight-magnitude term orders channels that no consumer saw (e.g. only feeding the output).
        score = torch.zeros(n, dtype=torch.float64)
        for path, module, side, idxs, roots in items:
            weight = module.weight.detach().double()
            if side == "out":
                magnitude = weight.reshape(weight.shape[0], -1)[idxs].square().sum(1)
                score.index_add_(0, torch.tensor(roots), 1e-9 * magnitude / magnitude.sum().clamp_min(1e-30))
            elif path in sensitivity:
                per_channel = sensitivity[path]
                score.index_add_(0, torch.tensor(roots), per_channel[idxs] / per_channel.sum().clamp_min(1e-30))
            elif path in energy:
                act, count = energy[path]
                act = act / max(count, 1)
                if path in means:
                    act = (act - means[path].square()).clamp_min(0)
                per_input = weight.square().sum(0).reshape(-1) * act  # (Cin*kh*kw,)
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


def _with_heads(plan: dict[str, dict[str, Any]], layers: list[AttentionLayer], kept: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    """`plan` plus the slices that keep heads `kept[path]` (channel groups never cut the same side of a layer)."""
    for layer in layers:
        if layer.path not in kept:
            continue
        for path, entry in layer.slices(kept[layer.path]).items():
            target = plan.setdefault(path, entry)
            for side in ("out", "in"):
                if entry[side] is not None:
                    target[side] = entry[side]
    return plan


def _interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear y(x) through `points` (sorted by x), flat past the last one."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def _folds(inputs: list) -> tuple[list, list]:
    """(batches to fit compensation on, batches to judge it on): alternate halves, or both all when too few.

    Judged on the batches it was fitted to, compensation looks far better than it is on new inputs
    (all-MiniLM-L6-v2 at size 0.85: cosine 0.99 on the calibration sentences, 0.91 on held-out ones).
    """
    if len(inputs) < 4:
        return inputs, inputs
    return inputs[0::2], inputs[1::2]


class _Allocation:
    """The menu `allocate_options` picks from: widths per channel group, head counts per attention layer.

    Costs are in units (`UNIT_SCALE`) of the prunable parameters plus `COMPUTE_WEIGHT` times the prunable
    multiply-adds, so a channel and a head compete on the same scale.
    """

    def __init__(self, model: nn.Module, ctx, groups, layers: list[AttentionLayer]) -> None:
        self.groups, self.layers = groups, layers
        consumers = {path for _, items in groups for path, _, side, _, _ in items if side == "in"} | {layer.output for layer in layers}
        inputs = ctx.calibration_inputs or [ctx.example_inputs]
        # Statistics per half of the batches: the probes fit on one half and are judged on the other.
        self.fit, self.judge = _folds(inputs)
        self.fit_stats = consumer_stats(model, self.fit, ctx.device, consumers)
        self.stats = self.fit_stats if self.fit is self.judge else merged(self.fit_stats, consumer_stats(model, self.judge, ctx.device, consumers))
        means = {path: mean for path, (_, _, mean) in self.stats.items() if mean is not None}
        sensitivity = _sensitivity(model, ctx, groups, layers, means)
        self.channel_scores = _channel_scores(model, ctx, groups, means, sensitivity) if groups else []
        self.head_scores = head_scores(model, layers, self.stats, sensitivity)
        self.macs = multiply_adds(model, ctx.example_inputs)
        channel_costs = [_per_channel_cost(n, items, self.macs) for n, items in groups]
        head_costs = [per_head_cost(model, layer, self.macs) for layer in layers]
        counts = [n for n, _ in groups] + [layer.heads for layer in layers]
        costs = channel_costs + head_costs
        all_params = sum(n * p for n, (p, _) in zip(counts, costs)) or 1
        all_macs = sum(n * w for n, (_, w) in zip(counts, costs)) or 1

        def units(k: int, params: int, work: int) -> int:
            return int(round(UNIT_SCALE * k * (params / all_params + COMPUTE_WEIGHT * work / all_macs)))

        self.options = [
            self._menu(str(g), n, self.channel_scores[g], _width_grid(n), channel_costs[g], units) for g, (n, _) in enumerate(groups)
        ] + [
            self._menu(f"heads:{i}", layer.heads, self.head_scores[i], kept_head_counts(layer.heads), head_costs[i], units)
            for i, layer in enumerate(layers)
        ]

    @staticmethod
    def _menu(name: str, n: int, scores: torch.Tensor, counts: list[int], cost: tuple[int, int], units) -> LayerOptions:
        """Keep the top-k of n units for each k in `counts`; the error is the score share that goes."""
        share = (scores / scores.sum().clamp_min(1e-30)).sort(descending=True).values.cumsum(0)
        return LayerOptions(name, units(n, *cost), [(units(k, *cost), max(0.0, 1.0 - float(share[k - 1])), k) for k in counts])

    def plan(self, budget: int) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
        """(channel slices of every pruned module, kept heads per attention path) within `budget` units."""
        return self._slices(allocate_options(self.options, max(budget, 0)))

    def _slices(self, chosen: dict[str, int]) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
        """The plan and kept heads for {menu name: units kept}."""
        keep = {int(g): k for g, k in chosen.items() if not g.startswith("heads:")}
        kept_heads = {
            self.layers[int(g.split(":")[1])].path: top_heads(self.head_scores[int(g.split(":")[1])], k)
            for g, k in chosen.items() if g.startswith("heads:")
        }
        return _with_heads(_plan(self.groups, self.channel_scores, keep), self.layers, kept_heads), kept_heads

    @torch.no_grad()
    def calibrate_to_output(self, model: nn.Module, ctx) -> None:
        """Turn each menu's score shares into the model's output loss when only that group or layer is pruned.

        Measured at the `PROBES` widths (compensation fitted on half of the calibration batches, the loss
        measured on the other half: judged on its own batches it looks far better than it is); between
        them the loss follows the menu's shares, so the order within a layer stays the scores'.
        """
        judge, stats = self.judge, self.fit_stats
        references = reference_outputs(model, judge, ctx.device)
        for menu in self.options:
            ranked = sorted(menu.options, key=lambda option: -option[1])  # most lost first
            probes = {ranked[round(p * (len(ranked) - 1))] for p in PROBES} if ranked else set()
            points = [(0.0, 0.0)]
            for _, share, k in sorted(probes, key=lambda option: option[1]):
                pruned = self.build(copy.deepcopy(model), {menu.path: k}, stats)
                points.append((share, max(points[-1][1], fidelity(pruned, judge, references, ctx.device).loss)))
                del pruned
            menu.options = [(units, _interpolate(points, share), k) for units, share, k in menu.options]

    def build(self, model: nn.Module, chosen: dict[str, int], stats) -> nn.Module:
        """`model` (changed in place) compensated with `stats` and sliced to the `chosen` widths."""
        plan, kept_heads = self._slices(chosen)
        compensate(model, plan, stats)
        return restore_head_counts(replay(model, plan), heads_record(self.layers, kept_heads))

    @property
    def total_units(self) -> int:
        return sum(option.dense_params for option in self.options)


def _note_heads(ctx, layers: list[AttentionLayer], kept_heads: dict[str, list[int]]) -> None:
    if not layers:
        return
    total = sum(layer.heads for layer in layers)
    gone = sum(layer.heads - len(kept_heads[layer.path]) for layer in layers if layer.path in kept_heads)
    widths = ", ".join(str(len(kept_heads.get(layer.path, range(layer.heads)))) for layer in layers)
    ctx.note(logger, f"prune: {gone} of {total} attention heads removed whole (heads kept per layer: {widths}).")


@register_method
class StructuredPruning(Method):
    name = "prune"
    kind = "pruning"

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        untouchable = _untouchable_modules(model, ctx.example_inputs)
        layers = _attention_layers(model, ctx, untouchable)
        groups = _groups(model, ctx, untouchable, layers)
        if not groups and not layers:
            ctx.note(logger, "prune: no channel group can be pruned without changing the model's outputs.")
            return model, []
        calibration = _real_token_context(ctx)
        allocation = _Allocation(model, calibration, groups, layers)
        allocation.calibrate_to_output(model, calibration)
        plan, kept_heads, size, bounded = prune_extent(model, ctx, allocation)
        if not plan:
            ctx.note(logger, f"prune: target ratio {ctx.target_ratio:.2f} cannot be reached by pruning channels"
                             + (" within the accuracy budget." if bounded else "."))
            return model, []
        if size > ctx.target_ratio * SIZE_SLACK and not bounded:
            ctx.note(logger, f"prune: the narrowest allowed widths keep {size:.3f} of the size, above the target {ctx.target_ratio:.2f}.")
        compensated = compensate(model, plan, allocation.stats)
        original_macs = sum(allocation.macs.values()) or 1
        del allocation  # its activation Grams are the size of a few layers: not kept through recovery
        heads = heads_record(layers, kept_heads)
        restore_head_counts(replay(model, plan), heads)
        work = sum(multiply_adds(model, ctx.example_inputs).values()) / original_macs
        record = {"method": self.name, "modules": plan, **({"heads": heads} if heads else {}),
                  "size_ratio": round(size, 6), "multiply_add_ratio": round(work, 6)}
        _note_heads(ctx, layers, kept_heads)
        logger.debug("prune: %d modules sliced (%d compensated), size %.3f and multiply-adds %.3f of the input", len(plan), compensated, size, work)
        recover(model, ctx, self.name, [record])  # padded batches: distilling on the trimmed ones overfits (MiniLM 0.0073 -> 0.028 held-out loss)
        return fold_norms_after(model, ctx, [record]), [record]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        model = restore_head_counts(replay(model, record["modules"]), record.get("heads", {}))
        return restore_folded(model, record.get("folded_norms", []))
