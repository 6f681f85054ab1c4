"""Which Linears of a `dynamic` variant stay float in its ONNX Runtime export.

pdo-hub's `dynamic` quantizes activations per token with a zero point per token; ONNX Runtime's dynamic
int8 has one activation scale per tensor, which costs some layers more than the export should lose (the
post-GELU FFN outputs and attention projections of a transformer, mostly). So the export measures it, as
`dynamic` itself did when it mixed fbgemm's per-tensor layers in: each layer's loss with only it on
per-tensor 8-bit activations (fbgemm's `FullRangeDynamicLinear`: per-channel 8-bit weights, one u8 scale
and zero point per tensor, ONNX Runtime's arithmetic), judged on the variant's calibration inputs against
the float structure; then the fewest most sensitive layers stay float so that all the others together
lose at most `HIGH_FIDELITY_SHARE` of the variant's accuracy threshold (0.004 at the default 0.02).

Variants from before per-token zero points name their per-token layers `per_token`: `dynamic` chose those
by the same measurement, so they are the float ones, as before.
"""

from __future__ import annotations

import ast
import copy
import logging
from typing import Any, Sequence

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

PROBE_INPUTS = 8  # inputs that rank the layers; the budget itself is checked on all of them


def _schemes(records: list[dict[str, Any]]) -> dict[str, str]:
    schemes: dict[str, str] = {}
    for record in records:
        found = record.get("schemes") or {}
        if isinstance(found, str):  # older records keep the mapping as its repr
            found = ast.literal_eval(found)
        schemes.update(found)
    return schemes


def float_layers(records: list[dict[str, Any]], float_model: nn.Module, inputs: Sequence[Any], threshold: float) -> list[str]:
    """Module paths of the Linears to keep float in a dynamic int8 ONNX export of the variant."""
    from pdo_hub.optimizers.evaluate import fidelity, reference_outputs
    from pdo_hub.optimizers.methods._mixed_precision import keep_high_precision
    from pdo_hub.optimizers.methods.dynamic import HIGH_FIDELITY_SHARE, PRECISE, SYMMETRIC, _fast_linear
    from pdo_hub.optimizers.modules import replace_modules

    schemes = _schemes(records)
    chosen = sorted(path for path, scheme in schemes.items() if scheme == SYMMETRIC)
    measured = sorted(path for path, scheme in schemes.items() if scheme == PRECISE)
    if not measured or not inputs:
        return chosen
    model = copy.deepcopy(float_model).eval()
    floats = {path: model.get_submodule(path) for path in measured}
    per_tensor = {path: _fast_linear(floats[path], portable=False) for path in measured}
    device = torch.device("cpu")
    probes = list(inputs[:PROBE_INPUTS])
    with torch.inference_mode():
        references = reference_outputs(model, list(inputs), device)  # the eval-mode copy: no dropout

    def loss_with(selected: list[str], batch: list[Any] = list(inputs), refs: list[torch.Tensor] = references) -> float:
        picked = set(selected)
        replace_modules(model, {path: per_tensor[path] if path in picked else floats[path] for path in measured})
        with torch.inference_mode():
            return fidelity(model, batch, refs, device).task_loss

    budget = HIGH_FIDELITY_SHARE * threshold
    kept = keep_high_precision(measured, loss_with, budget, probe_with=lambda s: loss_with(s, probes, references[:len(probes)]))
    logger.info("ONNX export: %d of %d per-token layers stay float to keep ONNX Runtime's per-tensor int8 within %.4f.",
                len(kept), len(measured), budget)
    return sorted(set(chosen) | set(kept))
