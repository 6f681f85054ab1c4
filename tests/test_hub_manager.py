"""The seed's model manager (`pdo_hub.core.base_model`) over torchvision, Hub and local sources."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert
from safetensors.torch import save_file

from pdo_hub.core.errors import ConfigError


@pytest.fixture
def manager():
    from pdo_hub.core.base_model import get_model_manager, reset_model_manager

    reset_model_manager()
    yield get_model_manager(config=FAST_CONFIG)
    reset_model_manager()


def test_seed_example_torchvision(manager, resnet18_weights):
    from pdo_hub.core.base_model import get_model_manager

    model_manager = get_model_manager()
    assert model_manager is manager
    model_manager.download_and_load_model(source="torchvision", model_id="resnet18", name="optimized_resnet18")
    model = model_manager.get_model("optimized_resnet18")
    report = getattr(model.metadata, "optimization_report", {})
    assert report["optimizations_applied"] == ["quantization_dynamic"]
    assert model_manager.list_models() == ["optimized_resnet18"]
    assert model.metadata.source == "torchvision" and len(model.metadata.revision) == 64
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_huggingface_and_unknown_names(manager, hub_server, tmp_path):
    hub_server.store.publish("pdo-test/managed-bert", save_tiny_bert(tmp_path / "bert", seed=4))
    managed = manager.download_and_load_model("huggingface", "pdo-test/managed-bert", "bert")
    assert managed.metadata.optimization_report["optimizations_applied"] == ["quantization_dynamic"]
    assert managed.metadata.cache_status == "built"
    with pytest.raises(KeyError, match="loaded models: \\['bert'\\]"):
        manager.get_model("nope")
    with pytest.raises(ConfigError, match="torchvision, huggingface, local"):
        manager.download_and_load_model("ftp", "x")


def test_local_state_dicts_and_folders(manager, tmp_path, resnet18_weights):
    pt = tmp_path / "my resnet.pth"
    pt.write_bytes(resnet18_weights.read_bytes())
    vision = manager.download_and_load_model("local", str(pt), "vision", architecture="resnet18")
    assert vision.metadata.optimization_report["optimizations_applied"] == ["quantization_dynamic"]
    again = manager.download_and_load_model("local", str(pt), "vision2", architecture="resnet18", local_files_only=True)
    assert again.metadata.cache_status == "hit"

    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))  # noqa: E731
    st = tmp_path / "mlp.safetensors"
    save_file(make().state_dict(), str(st))
    mlp = manager.download_and_load_model("local", str(st), "mlp", architecture=make)
    assert mlp.model(torch.randn(3, 16)).shape == (3, 4)
    with pytest.raises(ConfigError, match="architecture="):
        manager.download_and_load_model("local", str(st), "mlp")

    folder = save_tiny_bert(tmp_path / "bert folder", seed=5)
    bert = manager.download_and_load_model("local", str(folder), "bert")
    assert bert.metadata.optimization_report["optimizations_applied"] == ["quantization_dynamic"]
    reloaded = manager.download_and_load_model("local", str(folder), "bert", local_files_only=True)
    assert torch.equal(hidden(bert.model, encode()), hidden(reloaded.model, encode()))


def test_seed_custom_model_class(tmp_path):
    from pdo_hub.core.base_model import BaseModel
    from pdo_hub.optimizers import optimize_downloaded_model

    path = tmp_path / "weights.pt"
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict(), path)

    class MyModel(BaseModel):
        def load_model(self, model_path):
            self.model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
            self.model.load_state_dict(torch.load(model_path, weights_only=True))
            if self.config.post_download_optimization.enable_optimization:
                self.model, report = optimize_downloaded_model(
                    self.model, "my_model", config=self.config.post_download_optimization,
                    example_inputs=torch.randn(1, 8))
                self.logger.info(f"Applied optimizations: {report['optimizations_applied']}")

    model = MyModel(config=FAST_CONFIG)
    model.load_model(path)
    assert model.model.pdo_report["optimizations_applied"] == ["quantization_dynamic"]
    assert model.predict(torch.randn(4, 8)).shape == (4, 2)
