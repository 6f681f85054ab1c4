"""`qat`: quantization-aware fine-tuning for a bounded number of steps, then int8 like `static`.

The model is prepared with fake-quant modules (FX, x86, per-channel weights, conv-bn kept foldable),
observers are primed on the calibration inputs, and the weights are fine-tuned through the fake
quantization: with labelled data (`ctx.extras["labelled_data"]`, a list of (inputs, labels) batches)
on cross-entropy plus distillation, otherwise by distillation alone from the original model's outputs
on the calibration inputs. It runs exactly the config's `recovery_steps` steps; one that cannot finish
them within `recovery_max_seconds` is rejected (`RecoveryTimeoutError`, as the recovery after
factorization), never returned cut short. BatchNorm statistics stay frozen (calibration inputs may be synthetic), and
observers are frozen for the last 40% of the steps so the weights settle on fixed scales.

It never ends worse than `static`: the post-training int8 model of the same calibration is measured
too, and the better of the two by the optimizer's own loss is returned (the record says which).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inputs import call_model, output_tensor
from ..recovery import check_deadline
from ..registry import Method, register_method
from . import _graph_quant as gq
from ._torch_ao import quiet_torch_ao
from .static import calibrated

logger = logging.getLogger(__name__)
LEARNING_RATE = 1e-5


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL on class logits (2-D outputs), else MSE scaled by the teacher's variance."""
    if student.dim() == 2 and student.shape[1] > 1:
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    return F.mse_loss(student, teacher) / teacher.var().clamp(min=1e-8)


@register_method
class QATQuantization(Method):
    name = "qat"
    kind = "quantization"
    cpu_only = True

    def apply(self, model: nn.Module, ctx) -> tuple[nn.Module, list[dict[str, Any]]]:
        layers = gq.quantizable_layers(model)
        ptq_prepared, args = calibrated(copy.deepcopy(model), ctx, self.name)
        ptq = gq.convert(ptq_prepared, in_place=True)
        teacher = ctx.original_model if ctx.original_model is not None else copy.deepcopy(model)
        labelled = list(ctx.extras.get("labelled_data") or [])
        batches = [x for x, _ in labelled] if labelled else list(ctx.calibration_inputs or [ctx.example_inputs])
        steps = int(ctx.extras.get("qat_steps", ctx.config.recovery_steps))
        start = time.perf_counter()
        trained, steps = self._fine_tune(model, teacher, args, batches, labelled, steps, ctx.config.recovery_max_seconds)
        seconds = time.perf_counter() - start
        if ctx.measure_loss is not None:
            qat_loss, ptq_loss = ctx.measure_loss(trained), ctx.measure_loss(ptq)
            if ptq_loss < qat_loss:
                ctx.note(logger, f"qat: {steps} fine-tuning steps ({seconds:.1f} s) ended at loss {qat_loss:.4f}, worse than post-training int8 ({ptq_loss:.4f}): kept the post-training model.")
                return ptq, [dict(gq.make_record(self.name, args, ptq, layers, {}, flow="ptq"), steps=0)]
            ctx.note(logger, f"qat: {steps} fine-tuning steps ({seconds:.1f} s): loss {qat_loss:.4f} vs {ptq_loss:.4f} post-training.")
        objective = "cross_entropy+distillation" if labelled else "distillation"
        return trained, [dict(gq.make_record(self.name, args, trained, layers, {}, flow="qat"), steps=steps, objective=objective)]

    @staticmethod
    def _fine_tune(model, teacher, args, batches, labelled, steps, max_seconds) -> tuple[nn.Module, int]:
        """Fine-tune through fake quantization for exactly `steps` steps; returns (int8 model, steps)."""
        with quiet_torch_ao():
            from torch.ao.nn.intrinsic.qat import freeze_bn_stats
            from torch.ao.quantization import disable_observer

            prepared = gq.prepare(copy.deepcopy(model), args, "qat", qat=True)
            prepared.apply(freeze_bn_stats)
            with torch.no_grad():  # prime the observers before the first step sees fake quantization
                for batch in batches:
                    call_model(prepared, batch)
            teacher.eval()
            with torch.no_grad():
                targets = [output_tensor(call_model(teacher, batch)).float() for batch in batches]
            optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=LEARNING_RATE)
            prepared.train()
            prepared.apply(freeze_bn_stats)
            start = time.perf_counter()
            for step in range(steps):
                check_deadline("qat", step, steps, start, max_seconds)
                if step == int(0.6 * steps):
                    prepared.apply(disable_observer)
                index = step % len(batches)
                output = output_tensor(call_model(prepared, batches[index])).float()
                loss = distillation_loss(output, targets[index])
                if labelled:
                    loss = loss + F.cross_entropy(output, labelled[index][1])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return gq.convert(prepared, qat=True, in_place=True), steps

    def restore(self, model: nn.Module, record: dict[str, Any]) -> nn.Module:
        return gq.rebuild(model, record)
