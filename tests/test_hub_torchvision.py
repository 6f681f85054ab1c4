"""pdo_hub.get_model: torchvision weights through torchvision's own cache, keyed by the file's sha256.

No download.pytorch.org here. Most tests pre-seed the torch hub cache with a state dict under the real
file name (torchvision checks the hash only on download, exactly as it would after a real download);
`test_weights_are_downloaded_by_torchvision_with_the_hash_prefix_checked` serves one from 127.0.0.1 so
that torchvision's own download and hash-prefix check run.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
from pathlib import Path

import pytest
import torch
from hub_helpers import FAST_CONFIG

import pdo_hub
from pdo_hub.core.errors import OfflineCacheMissError
from pdo_hub.hub import torchvision_models


def _logits(model, seed: int = 1) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed)))


def test_get_model_keys_by_file_hash_and_reuses_offline(resnet18_weights, monkeypatch):
    model = pdo_hub.get_model("resnet18", weights="DEFAULT", config=FAST_CONFIG)
    assert model.pdo_cache_status == "built"
    assert model.pdo_report["optimizations_applied"] == ["quantization_dynamic"]
    sha = hashlib.sha256(resnet18_weights.read_bytes()).hexdigest()
    assert Path(model.pdo_cache_path).name.startswith(sha)
    assert "ResNet18_Weights.IMAGENET1K_V1" in str(model.pdo_cache_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the optimizer ran on a cache hit")

    monkeypatch.setattr(torchvision_models, "create_post_download_optimizer", refuse)
    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    again = pdo_hub.get_model("resnet18", weights="IMAGENET1K_V1", config=FAST_CONFIG)
    assert again.pdo_cache_status == "hit"
    assert torch.equal(_logits(model), _logits(again))

    # Offline with the original file gone: the recorded file-name -> sha256 ref still finds the entry.
    hidden = resnet18_weights.with_name(resnet18_weights.name + ".moved")
    os.replace(resnet18_weights, hidden)
    try:
        third = pdo_hub.get_model("resnet18", config=FAST_CONFIG)
        assert third.pdo_cache_path == model.pdo_cache_path
    finally:
        os.replace(hidden, resnet18_weights)


def test_offline_without_weights_file_or_entry_raises_with_the_fix(resnet18_weights, monkeypatch):
    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    with pytest.raises(OfflineCacheMissError, match=r"pdo_hub.get_model\('resnet18'"):
        pdo_hub.get_model("resnet18", config=FAST_CONFIG)  # file present, entry missing
    with pytest.raises(OfflineCacheMissError, match="torch hub cache"):
        pdo_hub.get_model("resnet34", config=FAST_CONFIG)  # neither file nor entry


def test_weights_none_returns_the_plain_model(resnet18_weights):
    import torchvision

    model = pdo_hub.get_model("resnet18", weights=None)
    assert type(model) is torchvision.models.ResNet and not hasattr(model, "pdo_recipe")


@pytest.fixture()
def weights_server():
    """A plain HTTP server on 127.0.0.1 answering GET from `files` ({path: bytes}); `asked` lists the paths."""
    files: dict[str, bytes] = {}
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            asked.append(self.path)
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", files, asked
    finally:
        server.shutdown()
        server.server_close()


def test_weights_are_downloaded_by_torchvision_with_the_hash_prefix_checked(weights_server, monkeypatch):
    import torchvision

    base, files, asked = weights_server
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    member = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()

    # A name whose hash prefix does not match the bytes: torchvision refuses them and keeps nothing.
    wrong = "0000000000" if not sha.startswith("0000000000") else "1111111111"
    files[f"/pdo-test-mnv3-{wrong}.pth"] = data
    monkeypatch.setattr(member.value, "url", f"{base}/pdo-test-mnv3-{wrong}.pth")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        pdo_hub.get_model("mobilenet_v3_small", weights=member, config=FAST_CONFIG)
    assert asked == [f"/pdo-test-mnv3-{wrong}.pth"]
    assert not torchvision_models.weights_file(member).exists()

    # The right prefix: downloaded once by torchvision, then the variant is keyed by the file's sha256.
    name = f"pdo-test-mnv3-{sha[:10]}.pth"
    files[f"/{name}"] = data
    monkeypatch.setattr(member.value, "url", f"{base}/{name}")
    path = torchvision_models.weights_file(member)
    assert path.name == name and not path.exists()
    model = pdo_hub.get_model("mobilenet_v3_small", weights="IMAGENET1K_V1", config=FAST_CONFIG)
    assert asked.count(f"/{name}") == 1, asked
    assert path.read_bytes() == data
    assert model.pdo_cache_status == "built" and Path(model.pdo_cache_path).name.startswith(sha)
