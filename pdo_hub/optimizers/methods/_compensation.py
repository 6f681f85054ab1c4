"""Low-rank compensation for pruning: the inputs a layer loses are predicted from those it keeps.

A layer's input channels are strongly correlated, so the channels that go are largely predictable from
those that stay. For every consumer layer, ridge regression on calibration statistics finds B with
X_dropped ~ X_kept B (per pixel or token; the ridge is d / (d + n) of the mean energy for d kept
channels and n samples, so few samples mean a cautious fit), and the kept input weights absorb it:
W_kept += W_dropped B^T. A Linear with a bias fits X_dropped ~ X_kept B + c on centred statistics and
takes W_dropped c into its bias. See `prune` for how it is used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..activations import input_moments

Stats = dict[str, tuple[torch.Tensor, int, torch.Tensor | None]]  # {path: (input channel Gram, rows, mean or None)}


def _takes_bias(module: nn.Module) -> bool:
    """A Linear with a bias: the mean of its dropped inputs can be folded into the bias exactly."""
    return isinstance(module, nn.Linear) and module.bias is not None


def _compensable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(module, "groups", 1) == 1


def consumer_stats(model: nn.Module, inputs, device, paths: set[str]) -> Stats:
    """{path: (input channel Gram, rows, mean input or None)} of the layers whose inputs may be pruned.

    The mean is taken for Linears with a bias only: that is where `compensate` can use it.
    """
    consumers = {path: model.get_submodule(path) for path in sorted(paths)}
    consumers = {path: module for path, module in consumers.items() if _compensable(module)}
    return input_moments(model, consumers, inputs, device, channels=True,
                         means_for={path for path, module in consumers.items() if _takes_bias(module)})


def merged(first: Stats, second: Stats) -> Stats:
    """The statistics of two disjoint sets of batches taken together."""
    merged = {}
    for path in first.keys() & second.keys():
        (gram_a, count_a, mean_a), (gram_b, count_b, mean_b) = first[path], second[path]
        count = count_a + count_b
        mean = None if mean_a is None else (mean_a * count_a + mean_b * count_b) / max(count, 1)
        merged[path] = (gram_a + gram_b, count, mean)
    return merged


def fit_dropped(entry, kept: torch.Tensor, dropped: torch.Tensor):
    """(B, c) with X_dropped ~ X_kept B + c by ridge regression on one layer's input statistics.

    c is None for a layer without a mean (no bias to take it): then the fit is X_dropped ~ X_kept B.
    """
    gram, count, mean = entry
    centre = mean if mean is not None else torch.zeros(gram.shape[0], dtype=torch.float64)
    moments = gram / count - torch.outer(centre, centre)
    g_kk, g_kd = moments[kept][:, kept], moments[kept][:, dropped]
    ridge = len(kept) / (len(kept) + count) * float(g_kk.diagonal().mean()) + 1e-12
    mix = torch.linalg.solve(g_kk + ridge * torch.eye(len(kept), dtype=g_kk.dtype), g_kd)
    return mix, (None if mean is None else mean[dropped] - mix.T @ mean[kept])


@torch.no_grad()
def compensate(model: nn.Module, plan: dict[str, dict[str, Any]], stats: Stats) -> int:
    """Fold each consumer's dropped input channels into its kept ones (least squares); returns layers changed.

    A Linear with a bias gets an affine fit, X_d ~ X_k B + c on centred statistics, and c's share of
    the output goes into the bias: dropped GELU neurons and attention heads have large steady means.
    """
    changed = 0
    for path, entry in plan.items():
        if entry["in"] is None or path not in stats:
            continue
        module = model.get_submodule(path)
        kept = torch.tensor(entry["in"])
        dropped = torch.tensor(sorted(set(range(stats[path][0].shape[0])) - set(entry["in"])))
        if not len(dropped) or not len(kept):
            continue
        mix, offset = fit_dropped(stats[path], kept, dropped)
        weight = module.weight.double()
        absorbed = torch.einsum("od...,kd->ok...", weight[:, dropped], mix)
        module.weight[:, kept] = (weight[:, kept] + absorbed).to(module.weight.dtype)
        if offset is not None:
            module.bias += (weight[:, dropped] @ offset).to(module.bias.dtype)
        changed += 1
    return changed
