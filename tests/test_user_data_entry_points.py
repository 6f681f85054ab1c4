"""The user's calibration data and task metric reach the optimizer through every entry point: get_model,
from_pretrained, intercept(), the model manager and local files; both are part of the cache key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_helpers import FAST_CONFIG, encode, save_tiny_bert

import pdo_hub
from pdo_hub.core.errors import ConfigError
from pdo_hub.hub.calibration import eval_fn_record, read_calibration

IMAGES = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]


class CountingMetric:
    """A task metric that counts its calls; accuracy 1.0 for any model."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model) -> float:
        self.calls += 1
        with torch.inference_mode():
            model(IMAGES[0])
        return 1.0


def _loader(model) -> dict:
    return json.loads((Path(model.pdo_cache_path) / "pdo_source.json").read_text())["loader"]


#: What `_user_evidence` finds when the user's batches calibrated the model and `eval_fn` judged it.
JUDGED_BY_USER = {"eval_fn judged original and candidate": True, "metric": "task_accuracy", "evaluated_on": "eval_fn",
                  "calibration": ("batches", len(IMAGES)), "eval_fn": "CountingMetric"}


def _user_evidence(model, metric: CountingMetric) -> dict:
    """What the stored entry and report say about the user's data and metric (compare with JUDGED_BY_USER)."""
    accuracy, loader = model.pdo_report["accuracy_metrics"], _loader(model)
    return {"eval_fn judged original and candidate": metric.calls >= 2, "metric": accuracy["metric"],
            "evaluated_on": accuracy["evaluated_on"],
            "calibration": (loader["calibration"]["kind"], loader["calibration"]["examples"]),
            "eval_fn": loader["eval_fn"]["name"]}


def test_get_model_calibrates_on_user_batches_judges_with_eval_fn_and_keys_by_both(resnet18_weights):
    metric = CountingMetric()
    model = pdo_hub.get_model("resnet18", config=FAST_CONFIG, calibration_data=IMAGES, eval_fn=metric)
    assert _user_evidence(model, metric) == JUDGED_BY_USER
    other_data = pdo_hub.get_model("resnet18", config=FAST_CONFIG, calibration_data=IMAGES[:3], eval_fn=metric)
    assert other_data.pdo_cache_path != model.pdo_cache_path, "other calibration data must be another entry"
    again = pdo_hub.get_model("resnet18", config=FAST_CONFIG, calibration_data=[x.clone() for x in IMAGES], eval_fn=metric)
    assert again.pdo_cache_status == "hit" and again.pdo_cache_path == model.pdo_cache_path, "same content, same key"


def test_intercept_passes_calibration_data_and_eval_fn_to_torchvision_builders(resnet18_weights):
    import torchvision

    metric = CountingMetric()
    with pdo_hub.intercept(FAST_CONFIG, calibration_data=IMAGES, eval_fn=metric):
        model = torchvision.models.resnet18(weights="DEFAULT")
    assert _user_evidence(model, metric) == JUDGED_BY_USER


def test_model_manager_passes_calibration_data_and_eval_fn(resnet18_weights):
    from pdo_hub.core.base_model import get_model_manager, reset_model_manager

    reset_model_manager()
    try:
        metric = CountingMetric()
        managed = get_model_manager(config=FAST_CONFIG).download_and_load_model(
            "torchvision", "resnet18", calibration_data=IMAGES, eval_fn=metric)
        assert _user_evidence(managed.model, metric) == JUDGED_BY_USER
        assert managed.metadata.optimization_report["accuracy_metrics"]["metric"] == "task_accuracy"
    finally:
        reset_model_manager()


def test_local_state_dict_takes_tensor_batches(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18(weights=None).state_dict(), str(path))
    metric = CountingMetric()
    from pdo_hub.hub import load_local

    model = load_local(path, architecture="resnet18", config=FAST_CONFIG, calibration_data=IMAGES, eval_fn=metric)
    assert _user_evidence(model, metric) == JUDGED_BY_USER


def test_from_pretrained_takes_tokenized_batches(hub_server, tmp_path):
    repo_id = "pdo-test/calibrated-bert"
    hub_server.store.publish(repo_id, save_tiny_bert(tmp_path / "bert", seed=4))
    batches = [encode(text) for text in ("A first sentence.", "Another one, longer than the first.", "Third.", "Four.")]
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG, calibration_data=batches)
    assert _loader(model)["calibration"] == {"kind": "batches", "examples": 4,
                                             "sha256": read_calibration(batches).digest()}
    assert model.pdo_report["accuracy_metrics"]["evaluated_on"] == "1 held-out calibration batch"


def test_bad_calibration_data_and_eval_fn_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="pass a text file, a folder of images, a list of sentences, a tensor"):
        read_calibration(42)
    with pytest.raises(ConfigError, match="not callable"):
        eval_fn_record("accuracy")
    with pytest.raises(ConfigError, match="calibration_data= only"):
        pdo_hub.get_model("resnet18", calibration_data=IMAGES, calibration=IMAGES)
    with pytest.raises(ConfigError, match="not sentences"):
        pdo_hub.get_model("resnet18", calibration_data=["a sentence"])


def test_eval_fn_key_follows_the_function_not_the_object():
    def accuracy(model):
        return 1.0

    def other(model):
        return 0.5

    assert eval_fn_record(accuracy) == eval_fn_record(accuracy)
    assert eval_fn_record(accuracy) != eval_fn_record(other)
