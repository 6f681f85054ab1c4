"""After pdo-hub fetches an original, the Hub client cache holds `refs/<branch>` as stock clients leave it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_helpers import FAST_CONFIG, save_tiny_bert

import pdo_hub
from pdo_hub.hub import revisions

REPO = "pdo-test/refs-bert"

# A stock transformers program, nothing from pdo-hub: loads the repo by name through the client cache.
STOCK_OFFLINE_LOAD = """
import sys
from transformers import AutoModel
revision = sys.argv[2] if len(sys.argv) > 2 else None
model = AutoModel.from_pretrained(sys.argv[1], revision=revision)
print(type(model).__name__, model.config.hidden_size)
"""


def _hf_cache_ref(repo_id: str, name: str) -> Path:
    return Path(os.environ["HF_HUB_CACHE"], "models--" + repo_id.replace("/", "--"), "refs", *name.split("/"))


def _stock_load_offline(repo_id: str, revision: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", STOCK_OFFLINE_LOAD, repo_id] + ([revision] if revision else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def refs_repo(hub_server, tmp_path_factory) -> tuple[str, str]:
    sha = hub_server.store.publish(REPO, save_tiny_bert(tmp_path_factory.mktemp("refs_bert")), message="tiny bert")
    hub_server.store.create_branch(REPO, "dev", sha)
    return REPO, sha


def test_stock_transformers_loads_offline_after_pdo_hub_fetched_online(refs_repo):
    repo_id, sha = refs_repo
    model = pdo_hub.from_pretrained(repo_id, config=FAST_CONFIG)
    assert model.pdo_cache_status == "built"
    assert _hf_cache_ref(repo_id, "main").read_text() == sha

    result = _stock_load_offline(repo_id)

    assert result.returncode == 0, f"stock AutoModel.from_pretrained failed offline:\n{result.stderr[-3000:]}"
    assert "BertModel 32" in result.stdout


def test_branch_ref_is_written_and_a_sha_revision_writes_none(refs_repo, monkeypatch):
    repo_id, sha = refs_repo
    pdo_hub.from_pretrained(repo_id, revision="dev", config=FAST_CONFIG)
    assert _hf_cache_ref(repo_id, "dev").read_text() == sha

    calls = []
    monkeypatch.setattr(revisions.refs, "set_ref", lambda *args: calls.append(args))
    revisions.record_hf_cache_ref(repo_id, sha, sha)
    revisions.record_hf_cache_ref(repo_id, "dev", sha)  # unchanged: not rewritten (read-only caches stay usable)
    assert calls == []


def test_invalid_ref_name_is_refused_without_failing_the_load(tmp_path, caplog):
    revisions.record_hf_cache_ref("org/model", "../escape", "a" * 40, tmp_path)
    assert not any(tmp_path.rglob("*")), "nothing may be written for an invalid ref name"
    assert "Cannot record ref" in caplog.text


def test_ref_goes_into_the_given_cache_dir(tmp_path):
    revisions.record_hf_cache_ref("org/model", "refs/pr/1", "b" * 40, tmp_path)
    assert (tmp_path / "models--org--model" / "refs" / "refs" / "pr" / "1").read_text() == "b" * 40
