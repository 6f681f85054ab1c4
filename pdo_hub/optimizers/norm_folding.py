"""Folding each BatchNorm into the convolution that feeds it, for inference.

In eval mode a BatchNorm is a per-channel affine map, so when its input is a conv's output that
nothing else reads, w' = w * gamma / sqrt(var + eps) and b' = (b - mean) * gamma / sqrt(var + eps) + beta
compute the same thing in one op (`torch.nn.utils.fusion.fuse_conv_bn_weights`). At batch 1 on small
images the BatchNorms are a sizeable share of eager time (`scripts/bench_lowrank.py`: the digits
ResNet-18 pruned to 0.5 measured 1.52-1.60x FP32 eager before folding, 1.66-1.69x with it).

Pairs are found by running the model: a BatchNorm whose input tensor *is* the output of a conv
(identity, while both are alive), each called once. A conv output that something else reads too (a
functional branch) would change under folding, so the folded model is checked against the unfolded
one on calibration inputs, and the model stays unfolded if they differ.

Pruning and the factorizations (svd, tucker, hlrtf: a factored conv's last 1x1 conv feeds the norm)
fold after their recovery. Recorded as "folded_norms": [[conv path, norm path], ...] on the method's
last record; `restore_folded` gives each conv a bias and puts an Identity where its norm was; the
safetensors load fills in the folded values.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..core.errors import RecipeError
from .inputs import Inputs, call_model, output_tensor, to_device
from .modules import get_module, model_device, replace_module, run_hooked

logger = logging.getLogger(__name__)
CONVS = (nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def conv_norm_pairs(model: nn.Module, example: Inputs) -> list[list[str]]:
    """[conv path, norm path] for each eval-mode BatchNorm that reads a conv's output directly."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    found: list[list[str]] = []
    handles = []

    def after_conv(path: str):
        def hook(_module, _args, out):
            calls[path] = calls.get(path, 0) + 1
            produced[id(out)] = (path, out)  # the reference keeps the id from being reused
        return hook

    def before_norm(path: str):
        def hook(_module, args):
            calls[path] = calls.get(path, 0) + 1
            entry = produced.get(id(args[0]))
            if entry is not None and entry[1] is args[0]:
                found.append([entry[0], path])
        return hook

    for path, module in model.named_modules():
        if type(module) in CONVS:
            handles.append(module.register_forward_hook(after_conv(path)))
        elif type(module) in NORMS and module.track_running_stats and module.running_mean is not None and not module.training:
            handles.append(module.register_forward_pre_hook(before_norm(path)))
    run_hooked(model, handles, [example], model_device(model))
    return [pair for pair in found if calls[pair[0]] == 1 and calls[pair[1]] == 1]


def fold_norms(model: nn.Module, ctx) -> tuple[nn.Module, list[list[str]]]:
    """The model with its conv -> BatchNorm pairs folded (a new object), and the pairs; unchanged if none fold exactly."""
    pairs = conv_norm_pairs(model, ctx.example_inputs)
    if not pairs:
        return model, []
    folded = copy.deepcopy(model)
    for conv_path, norm_path in pairs:
        conv, norm = get_module(folded, conv_path), get_module(folded, norm_path)
        # The norm is in eval mode (see conv_norm_pairs); a freshly built factored conv may not be, which
        # fuse_conv_bn_eval would refuse although a conv computes the same in either mode.
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias,
        )
        replace_module(folded, norm_path, nn.Identity())
    with torch.inference_mode():
        for batch in (ctx.calibration_inputs or [ctx.example_inputs])[:2]:
            batch = to_device(batch, ctx.device)
            expected = output_tensor(call_model(model, batch)).float()
            actual = output_tensor(call_model(folded, batch)).float()
            if not torch.allclose(actual, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max().clamp_min(1.0))):
                logger.debug("norm folding changed the outputs (a conv output read elsewhere); kept the norms")
                return model, []
    return folded, pairs


def fold_norms_after(model: nn.Module, ctx, records: list[dict[str, Any]]) -> nn.Module:
    """Fold, noting the pairs on the method's last record: its `restore` replays them after its own layer,
    when every layer the method changed is in place."""
    model, pairs = fold_norms(model, ctx)
    if pairs:
        records[-1]["folded_norms"] = pairs
    return model


def restore_folded(model: nn.Module, pairs: list[Any]) -> nn.Module:
    """The folded structure on a fresh model: convs gain a bias, norms become Identity (values come from the load)."""
    for conv_path, norm_path in pairs:
        conv, norm = get_module(model, conv_path), get_module(model, norm_path)
        if type(conv) not in CONVS or type(norm) not in NORMS:
            raise RecipeError(f"'{conv_path}' -> '{norm_path}' is a {type(conv).__name__} -> {type(norm).__name__}; the recipe folds a conv into a BatchNorm.")
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
        replace_module(model, norm_path, nn.Identity())
    return model
