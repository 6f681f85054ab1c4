"""The Hub token never appears in anything pdo-hub writes or says.

A push (`pdo-hub push`, `push_entry`) and a mirror run with `--push ORG` go to a `HubServer` with scoped
tokens, with a distinctive token passed through `HF_TOKEN` and as `token=` (both travel in the Authorization
header), every log at DEBUG (pdo_hub, huggingface_hub, httpx2, httpcore2, urllib3, the root) captured to a
file, and failing pushes (unreachable endpoint, a namespace the token cannot write, a repo that does not
exist). Then every byte written is searched: the optimized cache, the Hub client caches, the server's store
(what was pushed), the test's folder (manifests, configs, logs), stdout/stderr, and the failures' messages
and tracebacks.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest
from fault_hub import use_endpoint
from hub_helpers import FAST_CONFIG, save_tiny_bert

import pdo_hub
from pdo_hub.cli import main
from pdo_hub.core.errors import PushError
from pdo_hub.push import push_entry
from pdo_hub.serve import HubServer, RepoStore

TOKEN = "hf_pdoSecretTok3n_9f8e7d6c5b4a"  # distinctive: any hit is this token, nothing else
BASE = "org/secret-base-bert"
_LOGGERS = ("", "pdo_hub", "huggingface_hub", "httpx2", "httpcore2", "urllib3", "transformers")


@pytest.fixture
def debug_log(tmp_path):
    """Every log record at DEBUG, from the libraries on the way, into one file."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.level, logger.propagate)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        logger.propagate = name == ""  # one copy of each record, from its own logger's handler
    yield path
    for name, (level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    handler.close()


@pytest.fixture
def token_hub(tmp_path, monkeypatch):
    """A server that lets `TOKEN` write to `org/*` only, as the endpoint of every Hub client; HF_TOKEN set."""
    store = RepoStore(tmp_path / "server_store")
    store.publish(BASE, save_tiny_bert(tmp_path / "base_files", seed=4), message="tiny bert")
    scope = {"user": "ci-bot", "scopes": ["read", "write"], "namespaces": ["org"]}
    with HubServer(store, tokens={TOKEN: scope}) as server:
        use_endpoint(monkeypatch, server.url)
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # what `pdo-hub push` and `mirror --push` push to
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("PDO_HUB_VERBOSITY", "debug")
        yield server


def _failures(entry: Path, server: HubServer) -> list[BaseException]:
    """Pushes that fail: the token must not be in what they say."""
    failures = []
    for call in (lambda: push_entry(entry, "org/nowhere", endpoint="http://127.0.0.1:9", token=TOKEN),
                 lambda: push_entry(entry, "elsewhere/not-mine", endpoint=server.url, token=TOKEN),
                 lambda: push_entry(entry, "elsewhere/not-mine", endpoint=server.url),
                 lambda: pdo_hub.from_pretrained("org/does-not-exist", config=FAST_CONFIG, token=TOKEN)):
        with pytest.raises(Exception) as failed:
            call()
        failures.append(failed.value)
    assert isinstance(failures[0], PushError) and isinstance(failures[1], PushError)
    assert "write" in str(failures[1]), "a 403 says the token may not write there"
    return failures


def _files_holding(secret: bytes, *folders: Path) -> list[str]:
    hits = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                hits.append(str(path))
    return hits


def test_the_token_is_nowhere_after_push_and_mirror(token_hub, debug_log, tmp_path, capfd, session_root):
    config = tmp_path / "fast.yaml"
    config.write_text("post_download_optimization:\n"
                      + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in FAST_CONFIG.items()))
    assert main(["push", f"hf:{BASE}", "--repo-id", "org/secret-cli", "--config", str(config)]) == 0

    entry = Path(pdo_hub.from_pretrained(BASE, config=FAST_CONFIG, token=TOKEN).pdo_cache_path)
    pushed = push_entry(entry, "org/secret-api", token=TOKEN)

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"defaults:\n  config: {json.dumps({**FAST_CONFIG, 'calibration_samples': 3})}\n"
                        f"models:\n  - hf:{BASE}\n")
    assert main(["mirror", str(manifest), "--push", "org"]) == 0
    assert main(["push", f"hf:{BASE}", "--repo-id", "elsewhere/x", "--config", str(config)]) == 2, "403: exit 2"

    failures = _failures(entry, token_hub)
    store = token_hub.store
    assert store.resolve("org/secret-cli") and store.resolve("org/secret-api") == pushed["commit_sha"]
    assert [repo for repo in store.list_repos() if repo.startswith("org/secret-base-bert-pdo")], "mirror pushed"
    assert not store.exists("elsewhere/x") and not store.exists("elsewhere/not-mine")

    out, err = capfd.readouterr()
    secret = TOKEN.encode()
    assert TOKEN not in out and TOKEN not in err, "the token was printed"
    log_text = debug_log.read_text(encoding="utf-8")
    assert "huggingface_hub" in log_text and "pdo_hub" in log_text and "httpx2" in log_text, "DEBUG logs were captured"
    assert TOKEN not in log_text, "the token is in a DEBUG log"
    for failure in failures:
        told = "".join(traceback.format_exception(failure))
        assert TOKEN not in told and TOKEN not in repr(failure), \
            f"the token is in {type(failure).__name__}: {told[-500:]}"
    hits = _files_holding(secret, tmp_path, session_root)  # session_root: HF_HOME, HF_HUB_CACHE, TORCH_HOME
    assert hits == [], f"the token was written into {hits}"
