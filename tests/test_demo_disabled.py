"""`pdo-hub demo --config file.yaml` with `enable_optimization: false` prints a report instead of crashing."""

from __future__ import annotations

import pytest
import yaml

from pdo_hub.cli import main
from pdo_hub.cli._output import print_report
from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers import create_post_download_optimizer
from tiny_models import build, example


def test_print_report_of_a_disabled_optimization(capsys):
    model = build("MLP")
    optimizer = create_post_download_optimizer(PostDownloadOptimizationConfig(enable_optimization=False))
    returned, report = optimizer.optimize_model(model=model, model_name="tiny-mlp", example_inputs=example("MLP"))
    assert returned is model and report["optimization_enabled"] is False

    print_report(report)

    out = capsys.readouterr().out
    assert "Model: tiny-mlp" in out
    assert "Optimization disabled: enable_optimization is false" in out
    assert "Applied optimizations: none (original kept)" in out
    assert "Optimization time:" in out


@pytest.mark.slow
def test_demo_command_with_optimization_disabled(tmp_path, capsys):
    config = tmp_path / "off.yaml"
    config.write_text(yaml.safe_dump({"post_download_optimization": {"enable_optimization": False}}))

    assert main(["demo", "--config", str(config), "--workdir", str(tmp_path / "demo")]) == 0

    out = capsys.readouterr().out
    assert "Optimization disabled" in out
    assert "Sentence-embedding cosine vs FP32: 1.0000" in out
