"""The seed's three presets on both model families: each stores a variant within its budget, and the
presets keep their intent (aggressive the smallest, quality the most faithful) on each family.

Measured before the fix (issue 13): MiniLM with `aggressive` came back unchanged (prune crashed in the
attention reshape, static was over budget, dynamic never tried) and `quality` kept only a Tucker
factorization at 1.00x. Each run takes minutes (real all-MiniLM-L6-v2, the digits-trained ResNet-18),
so every preset runs once per model and the tests read the results.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

PRESETS = ("conservative", "aggressive", "quality")


def _run(family: str) -> dict[str, dict]:
    import check_presets

    results = {}
    for preset in PRESETS:
        config = check_presets.preset_config(preset)
        # Step-bounded recovery whatever the machine's load: a loaded test machine must not turn a
        # distillation into a rejected candidate and so change what the preset stores.
        config.recovery_max_seconds = 7200.0
        report, _ = (check_presets.minilm_run if family == "minilm" else check_presets.digits_run)(config)
        results[preset] = report
    return results


@pytest.fixture(scope="module", params=["minilm", "digits"])
def preset_reports(request) -> tuple[str, dict[str, dict]]:
    return request.param, _run(request.param)


def _size(report: dict) -> int:
    return report["model_size_metrics"]["optimized_size_bytes"]


def _loss(report: dict) -> float:
    return round(report["accuracy_metrics"]["accuracy_loss"], 6)


@pytest.mark.slow
def test_every_preset_stores_an_optimized_variant_within_its_budget(preset_reports):
    family, reports = preset_reports
    for preset, report in reports.items():
        assert report["optimizations_applied"], f"{family}/{preset} kept the original: {report['candidates']}"
        assert _loss(report) <= report["accuracy_metrics"]["preserve_accuracy_threshold"], f"{family}/{preset}"
        crashes = [c for c in report["candidates"] if c["status"] == "rejected" and c.get("reason", "").startswith(("RuntimeError", "AttributeError"))]
        assert not crashes, f"{family}/{preset}: methods crashed instead of declining: {crashes}"


def _standard_error(report: dict) -> float:
    return report["accuracy_metrics"].get("loss_standard_error") or 0.0


@pytest.mark.slow
def test_aggressive_is_the_smallest_and_quality_the_most_faithful_within_the_losses_standard_errors(preset_reports):
    family, reports = preset_reports
    sizes = {preset: _size(report) for preset, report in reports.items()}
    losses = {preset: _loss(report) for preset, report in reports.items()}
    assert sizes["aggressive"] == min(sizes.values()), f"{family}: sizes {sizes}"
    # Each loss is an estimate on held-out samples, reported with its standard error. Two int8 schemes can
    # land closer than that, in an order that depends on the CPU's kernels (digits on a Xeon with AMX-INT8:
    # conservative's `static` 0.00083 +- 0.00061, quality's `fx` 0.00177 +- 0.00137); then neither is the
    # more faithful, so quality must only not be worse by more than twice their combined error.
    for preset, loss in losses.items():
        margin = 2 * math.hypot(_standard_error(reports["quality"]), _standard_error(reports[preset]))
        assert losses["quality"] <= loss + margin, f"{family}: quality {losses['quality']} vs {preset} {loss} (+- {margin:.6f})"
