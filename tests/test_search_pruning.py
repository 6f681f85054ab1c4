"""Auto-selection does not build pipelines that cannot come back within the accuracy budget."""

from __future__ import annotations

import torch

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers import create_post_download_optimizer
from pdo_hub.optimizers.candidates import Candidate, over_budget_prefix
from tiny_models import MLP


def _measured(methods: tuple[str, ...], loss: float) -> Candidate:
    return Candidate(methods, status="rejected" if loss > 0.02 else "accepted", accuracy_loss=loss)


def test_an_over_budget_prefix_rules_out_only_post_training_int8_after_it():
    svd = _measured(("svd",), 0.045)
    assert over_budget_prefix(("svd", "dynamic"), [svd], 0.02) is svd
    assert over_budget_prefix(("svd", "static"), [svd], 0.02) is svd
    assert over_budget_prefix(("svd", "qat"), [svd], 0.02) is None, "qat trains: it may win the loss back"
    assert over_budget_prefix(("svd", "prune"), [svd], 0.02) is None, "pruning recovers by distillation"
    assert over_budget_prefix(("svd", "dynamic"), [_measured(("svd",), 0.019)], 0.02) is None
    assert over_budget_prefix(("tucker", "dynamic"), [svd], 0.02) is None
    assert over_budget_prefix(("svd",), [svd], 0.02) is None


def test_the_search_reports_the_pipeline_it_did_not_build():
    torch.manual_seed(0)
    model = MLP(width=64).eval()
    # A threshold no factorization of a random MLP meets: svd is measured and rejected, so svd+dynamic is not built.
    config = PostDownloadOptimizationConfig(quantization_method="dynamic", enable_low_rank_optimization=True, low_rank_method="svd",
                                            target_compression_ratio=0.3, preserve_accuracy_threshold=0.002, auto_select_best_method=True,
                                            recovery_steps=0, calibration_samples=8, benchmark_runs=2, benchmark_warmup=1)
    _, report = create_post_download_optimizer(config).optimize_model(model=model, model_name="mlp", example_inputs=torch.randn(1, 32))
    by_chain = {tuple(c["methods"]): c for c in report["candidates"]}
    assert by_chain[("svd",)]["accuracy_loss"] > 0.002
    skipped = by_chain[("svd", "dynamic")]
    assert skipped["status"] == "rejected" and skipped["reason"].startswith("not built: its prefix svd"), skipped
    assert "size_mb" not in skipped
