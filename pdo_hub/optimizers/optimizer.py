"""The post-download optimizer: the seed's `optimize_model` API over the method registry."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..core.config import PostDownloadOptimizationConfig, load_config
from ..core.errors import ConfigError
from .artifacts import write_seed_artifacts
from .candidates import Candidate, Prefixes, accuracy_loss, build_candidate, measure_candidate, over_budget_prefix
from .context import MethodContext
from .evaluate import TASK_METRICS, benchmark_interleaved, fidelity_measure, outputs_logits, reference_outputs, timing_noise
from .flavours import fitting_quantization
from .distilled import data_free_inputs
from .inputs import Inputs, infer_example_inputs, normalize_inputs, split_held_out, to_device
from .recipe import Recipe
from .recovery import RecoveryTimeoutError
from .report import REPORT_VERSION, disabled_report, environment, performance_metrics, size_metrics, timing_section
from .selection import WEIGHTS, candidate_pipelines, select
from .sizing import serialized_bytes

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device. Use device: cpu or auto.")
    return torch.device(name)


class PostDownloadOptimizer:
    """Optimizes a model according to a `PostDownloadOptimizationConfig` (see the seed document)."""

    def __init__(self, config: PostDownloadOptimizationConfig | dict | str | None = None) -> None:
        self.config = load_config(config)

    def optimize_model(
        self,
        model: nn.Module,
        model_name: str = "model",
        example_inputs: Inputs | None = None,
        *,
        calibration_data: Iterable[Inputs] | None = None,
        eval_fn: Callable[[nn.Module], float] | None = None,
        train_data: Iterable[tuple[Inputs, torch.Tensor]] | None = None,
        output_dir: str | Path | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Optimize a copy of `model`; the input model is never modified.

        Args:
            model: the downloaded model.
            model_name: name used in the report.
            example_inputs: one batch the model accepts (a tensor, a tuple, or a mapping of tensors such as
                a dict or a tokenizer's `BatchEncoding`); guessed if None.
            calibration_data: batches for calibration and fidelity checks (default: `config.calibration_samples`
                inputs distilled from the model's BatchNorm statistics when it has them, else perturbed
                copies of example_inputs; as many again are held out to judge candidates on).
            eval_fn: task metric `eval_fn(model) -> accuracy in [0, 1]`; when given, accuracy loss is measured
                with it instead of output fidelity.
            train_data: labelled (inputs, labels) batches for methods that fine-tune (`qat` trains on the
                task loss with them instead of distilling from the original model's outputs).
            output_dir: where to write the artifacts when `save_optimized_model` is on (default
                `config.output_dir`).

        Returns:
            (optimized_model, report). The model carries `.pdo_recipe` and `.pdo_report`.
        """
        config = self.config
        start = time.perf_counter()
        if not config.enable_optimization:
            return model, disabled_report(model_name, config, time.perf_counter() - start)
        device = resolve_device(config.device)
        base = copy.deepcopy(model).to(device).eval()
        base.pdo_recipe = Recipe()
        if example_inputs is None:
            example_inputs = infer_example_inputs(base)
            logger.info("no example_inputs given; using a guessed input")
        example_inputs = to_device(normalize_inputs(example_inputs), device)
        if calibration_data is not None:
            calibration, held_out, held_out_note = split_held_out(
                [normalize_inputs(batch) for batch in calibration_data], config.seed)
        else:
            calibration, held_out, held_out_note = data_free_inputs(base, example_inputs, config)
        ctx = MethodContext(
            config=config, example_inputs=example_inputs, calibration_inputs=calibration, device=device,
            original_model=base, target_ratio=config.target_compression_ratio, eval_fn=eval_fn,
        )
        # Candidates are accepted on inputs no method saw: a factorization fitted (and recovered) on the
        # calibration inputs must not be judged on them too.
        ctx.extras["held_out_inputs"] = held_out
        ctx.extras["held_out_note"] = held_out_note
        if train_data is not None:
            ctx.extras["labelled_data"] = _labelled_batches(train_data, device)
        original = self._measure_original(base, ctx)
        ctx.measure_loss = lambda candidate_model: accuracy_loss(candidate_model, ctx, original)
        ctx.extras["outputs_logits"] = original["logits"]  # recovery judges itself by the same fidelity loss
        ctx.measure_probe_loss = lambda candidate_model: accuracy_loss(candidate_model, ctx, original, probe=True)
        notes: list[str] = []
        fit = fitting_quantization(base, example_inputs) if config.enable_quantization else None
        candidates = self._build(candidate_pipelines(config, notes, fit), base, ctx, original, notes)
        noise = self._time(base, candidates, ctx, original)
        chosen = select(candidates, original["size_bytes"], config, noise, notes)
        result = chosen.model if chosen else base
        if chosen is None:
            notes.append(_unchanged_note(candidates))
        for candidate in candidates:
            if candidate is not chosen:
                candidate.model = None  # free memory early
        report = self._report(model_name, config, original, chosen, candidates, notes, device, time.perf_counter() - start)
        report["selection"]["timing"] = timing_section(original["timing"], noise, config)
        result.pdo_report = report
        if not chosen:
            result.pdo_recipe = Recipe()
        directory = output_dir if output_dir is not None else config.output_dir
        if config.save_optimized_model and directory is not None:
            write_seed_artifacts(result, report, Path(directory))
        logger.info("optimized %s: %s", model_name, report["optimizations_applied"] or "unchanged")
        return result, report

    # -- steps -------------------------------------------------------------------------------------
    def _measure_original(self, base: nn.Module, ctx: MethodContext) -> dict[str, Any]:
        held_out = ctx.extras["held_out_inputs"]
        references = reference_outputs(base, held_out, ctx.device)
        logits = outputs_logits(base, held_out[0], ctx.device) if held_out else None
        return {
            "logits": logits,
            "size_bytes": serialized_bytes(base),
            "calibration_references": reference_outputs(base, ctx.calibration_inputs, ctx.device),
            "references": references,
            "fidelity_metric": fidelity_measure(held_out, references, logits),
            "held_out_note": ctx.extras["held_out_note"],
            "timing": None,  # timed with the candidates, in the same rounds (`_time`)
            "accuracy": float(ctx.eval_fn(base)) if ctx.eval_fn else None,
        }

    def _build(self, pipelines, base: nn.Module, ctx: MethodContext, original: dict[str, Any], notes: list[str]) -> list[Candidate]:
        """Build and measure (size, accuracy) each pipeline; without auto-selection, stop at the first
        one within the accuracy budget (the configured pipeline, or its longest fall-back)."""
        prefixes = Prefixes(pipelines)
        candidates = []
        for index, methods in enumerate(pipelines):
            lost = over_budget_prefix(methods, candidates, self.config.preserve_accuracy_threshold)
            if lost is not None:
                prefixes.drop(methods)
                candidates.append(Candidate(methods, status="rejected", reason=(
                    f"not built: its prefix {'+'.join(lost.methods)} already loses {lost.accuracy_loss:.4f}, over the threshold, "
                    f"and {'+'.join(methods[len(lost.methods):])} (post-training int8) only adds error")))
                continue
            candidates.append(self._try(methods, base, ctx, original, prefixes))
            if not self.config.auto_select_best_method and candidates[-1].status == "accepted":
                if index + 1 < len(pipelines):
                    notes.append(f"auto_select_best_method is off: {'+'.join(methods)} is within the budget, so the "
                                 f"{len(pipelines) - index - 1} shorter fall-backs were not tried.")
                break
        return candidates

    def _try(self, methods: tuple[str, ...], base: nn.Module, ctx: MethodContext, original: dict[str, Any], prefixes: Prefixes) -> Candidate:
        try:
            candidate = build_candidate(methods, base, ctx, prefixes)
            if candidate.status != "rejected":
                measure_candidate(candidate, ctx, original)
        except RecoveryTimeoutError as err:  # loud: a time-capped model would depend on the machine's load
            logger.warning("candidate %s rejected: %s", "+".join(methods), err)
            candidate = Candidate(methods, status="rejected", reason=str(err))
        except Exception as err:  # a method that cannot handle this model must not lose the model
            logger.warning("candidate %s failed: %s: %s", "+".join(methods), type(err).__name__, err)
            logger.debug("candidate failure", exc_info=True)
            candidate = Candidate(methods, status="rejected", reason=f"{type(err).__name__}: {err}")
        if candidate.size_bytes is None:
            candidate.model = None
        return candidate

    def _time(self, base: nn.Module, candidates: list[Candidate], ctx: MethodContext, original: dict[str, Any]) -> float:
        """Time the original and every measured candidate in the same interleaved rounds; returns the noise.

        Candidates over the accuracy budget are timed too: the report and its chart show where they
        stood. Their models are released afterwards.
        """
        config = ctx.config
        if not config.benchmark_optimizations:
            return 0.0
        timed = [c for c in candidates if c.model is not None]
        timings = benchmark_interleaved(
            [base] + [c.model for c in timed], ctx.example_inputs, ctx.device,
            warmup=config.benchmark_warmup, runs=config.benchmark_runs, threads=config.benchmark_threads,
        )
        original["timing"] = timings[0]
        for candidate, timing in zip(timed, timings[1:]):
            candidate.timing = timing
            candidate.speedup = timings[0].median_latency_ms / timing.median_latency_ms
            if candidate.status == "rejected":
                candidate.model = None
        return timing_noise(timings)

    def _report(self, model_name, config, original, chosen, candidates, notes, device, seconds) -> dict[str, Any]:
        final_bytes = chosen.size_bytes if chosen else original["size_bytes"]
        final_timing = chosen.timing if chosen else original["timing"]
        metric = "task_accuracy" if original["accuracy"] is not None else original["fidelity_metric"]
        accuracy = {
            "metric": metric,
            "metric_description": TASK_METRICS.get(metric, "the accuracy eval_fn returns, original minus variant"),
            "evaluated_on": "eval_fn" if original["accuracy"] is not None else original["held_out_note"],
            "preserve_accuracy_threshold": config.preserve_accuracy_threshold,
            "accuracy_loss": chosen.accuracy_loss if chosen else 0.0,
            "within_threshold": True,
        }
        if original["accuracy"] is not None:
            accuracy["original_accuracy"] = original["accuracy"]
            accuracy["optimized_accuracy"] = chosen.accuracy if chosen else original["accuracy"]
        if chosen and chosen.fidelity:
            accuracy["output_cosine"] = chosen.fidelity.cosine
            accuracy["top1_agreement"] = chosen.fidelity.top1_agreement
            accuracy["max_abs_error"] = chosen.fidelity.max_abs_error
            accuracy["relative_output_error"] = chosen.fidelity.relative_error
            if chosen.fidelity.kl is not None:
                accuracy["kl"] = chosen.fidelity.kl
            if original["accuracy"] is None:
                accuracy["loss_standard_error"] = chosen.fidelity.standard_error
                accuracy["estimate_uncertain"] = chosen.fidelity.uncertain
        seen: set[str] = set()  # pipelines built on a shared prefix share its notes: report each once
        for candidate in candidates:
            for note in candidate.notes:
                if note not in seen:
                    seen.add(note)
                    notes.append(f"{'+'.join(candidate.methods)}: {note}")
        return {
            "report_version": REPORT_VERSION,
            "model_name": model_name,
            "optimization_enabled": True,
            "optimizations_applied": chosen.labels if chosen else [],
            "model_size_metrics": size_metrics(original["size_bytes"], final_bytes),
            "performance_metrics": performance_metrics(original["timing"], final_timing, config),
            "accuracy_metrics": accuracy,
            "optimization_time_seconds": round(seconds, 3),
            "selection": {
                "auto_select_best_method": config.auto_select_best_method,
                "score_weights": WEIGHTS,
                "selected": list(chosen.methods) if chosen else None,
            },
            "candidates": [c.summary(original["size_bytes"]) for c in candidates],
            "recipe": (chosen.model.pdo_recipe.to_dict() if chosen else Recipe().to_dict()),
            "notes": notes,
            "config": config.to_dict(),
            "config_hash": config.config_hash(),
            "environment": environment(device, config.benchmark_threads),
        }


def create_post_download_optimizer(config: PostDownloadOptimizationConfig | dict | str | None = None) -> PostDownloadOptimizer:
    """The seed's factory: `create_post_download_optimizer(config).optimize_model(...)`."""
    return PostDownloadOptimizer(config)


def optimize_downloaded_model(
    model: nn.Module, model_name: str = "model", config: PostDownloadOptimizationConfig | dict | str | None = None, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """The seed's one-call form, used right after a model is loaded."""
    return PostDownloadOptimizer(config).optimize_model(model, model_name, **kwargs)


def _unchanged_note(candidates: list[Candidate]) -> str:
    """Why the original comes back: each rejected candidate's reason (a method that failed, e.g. out of
    memory or on a layer it cannot take, or a result over the accuracy budget)."""
    reasons = [f"{'+'.join(c.methods)}: {c.reason[:300]}" for c in candidates if c.status == "rejected" and c.reason]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return f"No candidate qualified{why}: the original model is returned unchanged."


def _labelled_batches(train_data: Iterable[Any], device: torch.device) -> list[tuple[Inputs, torch.Tensor]]:
    batches = []
    for index, batch in enumerate(train_data):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError(f"train_data[{index}] is a {type(batch).__name__}; expected an (inputs, labels) pair.")
        batches.append((to_device(normalize_inputs(batch[0]), device), to_device(batch[1], device)))
    return batches
