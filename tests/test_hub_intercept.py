"""pdo_hub.intercept(): unmodified transformers and torchvision calls return optimized models."""

from __future__ import annotations

import sys

import pytest
import torch
from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert

import pdo_hub


def _entry_points() -> dict[str, object]:
    """Every object intercept() replaces, by where it lives."""
    import torchvision
    from torchvision.models import _api
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    import transformers

    return {
        "tv.resnet18": torchvision.models.resnet18,
        "tv.resnet.resnet18": sys.modules["torchvision.models.resnet"].resnet18,
        "tv.registry": dict(_api.BUILTIN_MODELS),
        "tv.get_model": torchvision.models.get_model,
        "base.from_pretrained": vars(_BaseAutoModelClass)["from_pretrained"],
        "AutoModel.dict": dict(vars(transformers.AutoModel)),
        "CausalLM.from_pretrained": vars(transformers.AutoModelForCausalLM)["from_pretrained"],
    }


def _assert_restored(before: dict[str, object]) -> None:
    after = _entry_points()
    for name, value in before.items():
        if isinstance(value, dict):
            assert value.keys() == after[name].keys() and all(after[name][k] is v for k, v in value.items()), name
        else:
            assert after[name] is value, f"{name} was not restored"


@pytest.fixture(scope="module")
def tiny_repo(hub_server, tmp_path_factory):
    repo_id = "pdo-test/intercepted-bert"
    hub_server.store.publish(repo_id, save_tiny_bert(tmp_path_factory.mktemp("bert"), seed=3))
    return repo_id


def test_torchvision_builders_and_get_model_return_optimized_models(resnet18_weights):
    import torchvision
    from torchvision.models import ResNet18_Weights

    before = _entry_points()
    with pdo_hub.intercept(FAST_CONFIG):
        direct = torchvision.models.resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
        registry = torchvision.models.get_model("resnet18", weights="DEFAULT")
        plain = torchvision.models.resnet18()
    _assert_restored(before)
    assert direct.pdo_report["optimizations_applied"] == ["quantization_dynamic"]
    assert registry.pdo_cache_status == "hit" and registry.pdo_cache_path == direct.pdo_cache_path
    assert not hasattr(plain, "pdo_recipe"), "weights=None is a random model: nothing to optimize"
    assert not hasattr(torchvision.models.resnet18(weights=None), "pdo_recipe")


def test_transformers_auto_classes_return_optimized_models(tiny_repo):
    import transformers

    before = _entry_points()
    with pdo_hub.intercept(FAST_CONFIG):
        model = transformers.AutoModel.from_pretrained(tiny_repo)
        classifier = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_repo, num_labels=2)
    _assert_restored(before)
    assert model.pdo_report["optimizations_applied"] == ["quantization_dynamic"]
    assert classifier.pdo_cache_path != model.pdo_cache_path
    stock = transformers.AutoModel.from_pretrained(tiny_repo)
    assert not hasattr(stock, "pdo_recipe")
    assert torch.nn.functional.cosine_similarity(hidden(model, encode()).flatten(), hidden(stock, encode()).flatten(), dim=0) > 0.99


def test_originals_restored_after_an_exception_and_when_nested(tiny_repo):
    import torchvision

    before = _entry_points()
    with pytest.raises(RuntimeError, match="boom"):
        with pdo_hub.intercept(FAST_CONFIG):
            with pdo_hub.intercept(FAST_CONFIG):
                assert torchvision.models.resnet18 is not before["tv.resnet18"]
            raise RuntimeError("boom")
    _assert_restored(before)
