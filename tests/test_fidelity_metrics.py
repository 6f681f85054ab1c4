"""Without eval_fn, candidates are judged by a metric that fits what the model outputs, and the report names it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pdo_hub.optimizers import create_post_download_optimizer
from pdo_hub.optimizers.evaluate import TASK_METRICS, fidelity, fidelity_measure, outputs_logits, reference_outputs

CPU = torch.device("cpu")


class Shifted(nn.Module):
    """Returns `wrapped`'s output with `delta` added to the first class / hidden unit of the last sample."""

    def __init__(self, wrapped: nn.Module, delta: float) -> None:
        super().__init__()
        self.wrapped, self.delta = wrapped, delta

    def forward(self, *args, **kwargs):
        out = self.wrapped(*args, **kwargs)
        tensor = out["logits"] if isinstance(out, dict) else out
        tensor = tensor.clone()
        tensor[-1, ..., 0] += self.delta
        return {"logits": tensor} if isinstance(out, dict) else tensor


class TinyLM(nn.Module):
    """A causal-LM-shaped model: token ids -> {"logits": [batch, tokens, vocab]}."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 50)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.head(self.embed(input_ids))}


class TinyEncoder(nn.Module):
    """A sentence-encoder-shaped model: token ids -> hidden states [batch, tokens, hidden]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


def test_classifier_is_judged_by_softmax_disagreement_with_kl_and_top1_agreement():
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    inputs = [torch.randn(4, 8) for _ in range(3)]
    refs = reference_outputs(model, inputs, CPU)
    same = fidelity(model, inputs, refs, CPU)
    assert same.measure == "classifier_disagreement" and same.task_loss == pytest.approx(0.0, abs=1e-6)
    moved = fidelity(Shifted(model, 30.0), inputs, refs, CPU)  # the last sample of each batch flips to class 0
    assert moved.measure == "classifier_disagreement"
    assert 0.1 < moved.task_loss <= 0.25 + 1e-6, "3 of 12 samples changed class: about a quarter disagrees"
    assert moved.kl > 0.1 and moved.top1_agreement <= 0.9
    assert len(moved.samples) == 12 and moved.uncertain, "3 flips in 12 samples cannot resolve half a point"


def test_language_model_logits_are_judged_per_real_token():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    inputs = [{"input_ids": ids, "attention_mask": mask}]
    assert outputs_logits(model, inputs[0], CPU)
    refs = reference_outputs(model, inputs, CPU)
    assert fidelity_measure(inputs, refs, logits=True) == "next_token_disagreement"
    result = fidelity(Shifted(model, 50.0), inputs, refs, CPU, logits=True)
    assert result.measure == "next_token_disagreement"
    assert result.samples[0] == pytest.approx(0.0, abs=1e-6) and result.samples[1] > 0.5, "only the changed sample loses"


def test_encoders_keep_pooled_embedding_cosine_and_other_outputs_report_relative_error():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    inputs = [{"input_ids": torch.randint(0, 30, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}]
    refs = reference_outputs(encoder, inputs, CPU)
    assert fidelity_measure(inputs, refs) == "pooled_embedding_cosine"
    regressor = nn.Conv2d(3, 4, 3)
    images = [torch.randn(2, 3, 8, 8)]
    result = fidelity(regressor, images, reference_outputs(regressor, images, CPU), CPU)
    assert result.measure == "output_cosine" and result.relative_error == pytest.approx(0.0, abs=1e-6)


def test_report_names_and_describes_the_metric_and_whether_the_estimate_is_certain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    batches = [torch.randn(8, 256) for _ in range(8)]
    config = {"enable_low_rank_optimization": False, "benchmark_optimizations": False}
    _, report = create_post_download_optimizer(config).optimize_model(model, "mlp", batches[0], calibration_data=batches)
    accuracy = report["accuracy_metrics"]
    assert accuracy["metric"] == "classifier_disagreement"
    assert accuracy["metric_description"] == TASK_METRICS["classifier_disagreement"]
    assert isinstance(accuracy["estimate_uncertain"], bool) and accuracy["kl"] >= 0.0
    tried = [c for c in report["candidates"] if "accuracy_loss" in c]
    assert tried and all("estimate_uncertain" in c and "loss_standard_error" in c for c in tried)
