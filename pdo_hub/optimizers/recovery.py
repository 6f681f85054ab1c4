"""Bounded recovery after factorization or pruning: distil the compressed model from the original.

Truncating ranks or channels loses accuracy that a short fine-tune wins back (Tucker-2 on CNNs and
structured pruning both need it in the literature). With no labelled data guaranteed, the teacher is
the original model (`ctx.original_model`) and the data are the calibration inputs: logits (2-D
outputs) are matched with a temperature-2 KL divergence, any other output (hidden states, embeddings)
with a mean squared error scaled by the teacher's variance. The model stays in eval mode so BatchNorm
statistics and dropout stay as the original had them; only the weights of the layers the method
changed (the modules its records name) move.

With labelled data (`ctx.extras["labelled_data"]`, a list of (inputs, labels) batches) the step trains
on those batches instead: cross-entropy on the labels (class logits; any other output, e.g. a
regression, takes a mean squared error) plus the distillation term against the teacher's outputs on
the same inputs, so the task decides and the teacher keeps the rest of the behaviour close.

It runs exactly `config.recovery_steps` steps, so the same inputs give the same model whatever the
machine's load. `config.recovery_max_seconds` is a guard, not a bound: a recovery that cannot finish
its steps in that time raises `RecoveryTimeoutError` (the optimizer rejects that candidate and says
why) instead of returning a model cut short at a load-dependent step. It is kept only when it helps on
inputs it did not train on: every 4th batch (the last of 2-3; none of 1) is held back from the steps
and judges them, before and after (task accuracy via `ctx.measure_loss` when the caller gave `eval_fn`,
else the task loss on the held-back labelled batches, else `fidelity`'s loss against the teacher), and
the pre-recovery weights come back if it got worse. Judged on its own training inputs, a recovery that
memorises them looked like a win: pooled-cosine steps on the 48 sentences of a pruned all-MiniLM-L6-v2
lowered their loss 0.0198 -> 0.0068 while held-out prose fell from 0.950 to 0.937. Since it can only
win back the caller's loss, it is not run at all when that loss is already under
`NEGLIGIBLE_LOSS_SHARE` of the accuracy threshold.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import OptimizationError
from .evaluate import fidelity
from .inputs import call_model, held_out_positions, output_tensor, to_device

logger = logging.getLogger(__name__)

LEARNING_RATE = 1e-4  # small: the compressed model starts close to the teacher
TEMPERATURE = 2.0


# Recovery is kept only if it lowers the loss it is judged by (the caller's, on the calibration inputs), so
# it can win back at most that loss. Below this share of the accuracy threshold that is immaterial, and the
# steps are skipped: all-MiniLM-L6-v2's `svd` starts at 0.0001 against a 0.02 threshold, and 100 steps of
# distillation (14 s of a 54 s conservative search on a Xeon) only made it worse and were undone.
NEGLIGIBLE_LOSS_SHARE = 0.05


class RecoveryTimeoutError(OptimizationError):
    """A step-bounded fine-tune (recovery or `qat`) hit `recovery_max_seconds` before its last step."""


def check_deadline(method: str, step: int, steps: int, start: float, max_seconds: float) -> None:
    """Raise `RecoveryTimeoutError` when `max_seconds` have passed with steps still to run."""
    elapsed = time.perf_counter() - start
    if step < steps and elapsed > max_seconds:
        raise RecoveryTimeoutError(
            f"{method}: fine-tuning reached recovery_max_seconds={max_seconds:g} after {step} of {steps} steps "
            f"({elapsed:.1f} s); a model cut short at a time limit would depend on the machine's load, so this "
            "candidate is rejected. Raise recovery_max_seconds or lower recovery_steps."
        )


def task_loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class labels against logits, else a mean squared error on the labels."""
    if student.dim() == 2 and not labels.is_floating_point() and labels.dim() == 1:
        return F.cross_entropy(student, labels.long())
    return F.mse_loss(student, labels.to(student.dtype).reshape(student.shape))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.dim() == 2:
        return F.kl_div(
            F.log_softmax(student / TEMPERATURE, dim=1), F.log_softmax(teacher / TEMPERATURE, dim=1),
            log_target=True, reduction="batchmean",
        ) * TEMPERATURE**2
    return F.mse_loss(student, teacher) / teacher.var().clamp_min(1e-8)


def held_back(count: int) -> tuple[list[int], list[int]]:
    """(indices to train on, indices that judge the training): held out as `split_held_out` holds out
    batches, and with a single batch that batch for both (nothing else to judge on; the note says so)."""
    judge = held_out_positions(count)
    return ([i for i in range(count) if i not in judge] or judge), judge


def recover(model: nn.Module, ctx, method: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Distil `model` (changed in place) from `ctx.original_model`; note the outcome in the report.

    Args:
        model: the factorized or pruned model.
        ctx: the method context (teacher, calibration inputs, config bounds, measure_loss).
        method: the method name, for the notes.
        records: the method's recipe records (their `module` / `modules` name the layers to train); the
            first one gets a `recovery` entry (JSON).

    Returns:
        What happened (loss before/after, steps), or None when recovery is off or impossible; the time
        it took is in the note.

    Raises:
        RecoveryTimeoutError: `config.recovery_max_seconds` passed before the last step.
    """
    config = ctx.config
    teacher = ctx.original_model
    labelled = list(ctx.extras.get("labelled_data") or [])
    labels = [to_device(y, ctx.device) for _, y in labelled]
    inputs = [x for x, _ in labelled] if labelled else list(ctx.calibration_inputs)
    if config.recovery_steps <= 0 or teacher is None or not inputs:
        return None
    start = time.perf_counter()
    device = ctx.device
    targets: list[torch.Tensor] = []
    train, judge = held_back(len(inputs))

    def loss_now() -> float:
        if ctx.eval_fn is not None:  # the caller's own data: never trained on
            return float(ctx.measure_loss(model)) if ctx.measure_loss is not None else 1.0 - float(ctx.eval_fn(model))
        with torch.no_grad():
            if labels:  # the task decides whether recovery helped, not closeness to the teacher
                return sum(float(task_loss(output_tensor(call_model(model, to_device(inputs[i], device))).float(), labels[i])) for i in judge) / len(judge)
            return fidelity(model, [inputs[i] for i in judge], [targets[i].cpu() for i in judge], device,
                            ctx.extras.get("outputs_logits")).task_loss

    # Only the layers the method changed learn: the rest (tied embeddings included) stay the original's.
    paths = [path for record in records for path in ([record["module"]] if "module" in record else record.get("modules", {}))]
    params = list({id(p): p for path in paths for p in model.get_submodule(path).parameters() if p.is_floating_point()}.values())
    if not params:
        return None
    if ctx.measure_loss is not None:
        caller_loss = float(ctx.measure_loss(model))
        if caller_loss <= NEGLIGIBLE_LOSS_SHARE * config.preserve_accuracy_threshold:
            return _skipped(ctx, method, records, caller_loss)
    with torch.no_grad():
        targets.extend(output_tensor(call_model(teacher, to_device(batch, device))).float() for batch in inputs)
    before = loss_now()
    # Only the trained parameters can change (eval mode: no running statistics move), so only they are
    # kept for an undo: a whole state_dict copy was one more model in memory at the search's peak.
    saved = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
    model.eval()
    generator = torch.Generator().manual_seed(config.seed)
    steps = 0
    with torch.enable_grad():
        while steps < config.recovery_steps:
            check_deadline(method, steps, config.recovery_steps, start, config.recovery_max_seconds)
            index = train[int(torch.randint(len(train), (1,), generator=generator))]
            out = output_tensor(call_model(model, to_device(inputs[index], device))).float()
            loss = distillation_loss(out, targets[index])
            if labels:
                loss = loss + task_loss(out, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)
        p.grad = None
    del optimizer  # its moments are two more copies of the trained parameters
    after = loss_now()
    kept = after <= before
    if not kept:
        with torch.no_grad():  # recovery made it worse (overfitting few inputs): undo it
            for p, value in zip(params, saved):
                p.copy_(value)
    seconds = time.perf_counter() - start
    # No time in the record: it goes into the safetensors metadata, whose bytes must not depend on load.
    info = {
        "loss_before": round(before, 6), "loss_after": round(after, 6), "kept": kept, "steps": steps,
        "metric": _metric(ctx, bool(labels)),
        "objective": "task loss + distillation" if labels else "distillation",
        "judged_on": _judged_on(ctx, train, judge),
    }
    if records:
        records[0]["recovery"] = info
    ctx.note(
        logger,
        f"{method}: recovery by {info['objective']}, {steps} steps in {seconds:.1f} s: loss ({info['metric']}, "
        f"on {info['judged_on']}) {before:.4f} -> {after:.4f}{'' if kept else ' (worse: undone)'}",
    )
    return info


def _metric(ctx, labelled: bool) -> str:
    """What the loss before and after recovery is (`recover`'s `loss_now`)."""
    if ctx.eval_fn is not None:
        return "task accuracy drop"
    return "task loss" if labelled else "fidelity loss"


def _judged_on(ctx, train: list[int], judge: list[int]) -> str:
    """Which inputs the loss before and after recovery was measured on (`held_back`)."""
    if ctx.eval_fn is not None:
        return "the caller's eval_fn data"
    if judge == train:
        return "its only training batch (pass 2+ batches to judge on unseen ones)"
    return f"{len(judge)} held-back batch{'es' if len(judge) > 1 else ''}"


def _skipped(ctx, method: str, records: list[dict[str, Any]], before: float) -> dict[str, Any]:
    """The record and note of a recovery not run: the loss it would be judged by is already negligible."""
    info = {"loss_before": round(before, 6), "loss_after": round(before, 6), "kept": False, "steps": 0,
            "metric": "task accuracy drop" if ctx.eval_fn is not None else "caller's loss", "skipped": "loss already negligible"}
    if records:
        records[0]["recovery"] = info
    ctx.note(logger, f"{method}: recovery skipped: the loss it is judged by is {before:.4f}, under "
                     f"{NEGLIGIBLE_LOSS_SHARE:g} of the {ctx.config.preserve_accuracy_threshold:g} threshold, so it could win back nothing that matters")
    return info
