"""`fx`: graph-mode static int8 with per-layer mixed precision, the quality-focused choice.

Calibrates like `static` (FX, x86, per-channel weights, histogram activations), then measures each
Conv/Linear layer's sensitivity (the loss with only that layer in int8) and keeps in float the fewest
most-sensitive layers needed to fit the loss budget. The budget is a quarter of what is left of
`preserve_accuracy_threshold` (fx favours accuracy; `static` is the all-int8, fastest choice). The
record and the report list each float layer with its measured sensitivity.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from ..registry import Method, register_method
from . import _graph_quant as gq
from ._mixed_precision import keep_high_precision, split_budget
from .static import calibrated

logger = logging.getLogger(__name__)
BUDGET_SHARE = 0.25


@register_method
class FXQuantization(Method):
    name = "fx"
    kind = "quantization"
    cpu_only = True

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        layers = gq.quantizable_layers(model)
        budget = split_budget(ctx, model, BUDGET_SHARE)
        prepared, args = calibrated(model, ctx, self.name)
        kept: dict[str, float] = {}
        if budget is not None:
            def loss_with(int8_layers: list[str]) -> float:
                chosen = set(int8_layers)
                trial = gq.convert(prepared, [p for p in layers if p not in chosen], accelerate=False)
                return ctx.measure_loss(trial)

            kept = keep_high_precision(layers, loss_with, budget)
        else:
            ctx.note(logger, "fx: no accuracy measurement available (or the budget is already spent): every layer is int8.")
        if len(kept) == len(layers):
            ctx.note(logger, f"fx: every layer alone exceeds the loss budget {budget:.4f} when int8; nothing was quantized.")
            return model, []
        quantized = gq.convert(prepared, list(kept), in_place=True)
        if kept:
            details = ", ".join(f"{path} (loss {loss:.4f} with only it int8)" for path, loss in sorted(kept.items(), key=lambda kv: -kv[1]))
            ctx.note(logger, f"fx: {len(kept)} of {len(layers)} layers kept in float to fit the loss budget {budget:.4f}: {details}")
        record = gq.make_record(self.name, args, quantized, [p for p in layers if p not in kept], {p: round(v, 6) for p, v in kept.items()}, flow="ptq")
        if budget is not None:
            record["loss_budget"] = round(budget, 6)
        return quantized, [record]

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return gq.rebuild(model, record)
