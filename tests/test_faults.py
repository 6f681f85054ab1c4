"""A faulty upstream: 500s, 429 with Retry-After, timeouts, a connection cut mid-file, wrong Content-Length and
a branch that moves during a sync, served by the fault-injecting proxy of `fault_hub.py` in front of the real
`HubServer`.

Every fault ends in either the complete entry (after bounded retries, resuming where huggingface_hub can) or
a clear `FetchError`, and never in a corrupt entry: the optimized cache holds the complete, verified entry or
none, and the Hub client cache holds no file under its final name that disagrees with the Hub's hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from fault_hub import Fault, FaultHub, use_endpoint
from hub_helpers import FAST_CONFIG, save_tiny_bert

import pdo_hub
from pdo_hub.cache import OptimizedCache
from pdo_hub.core.errors import FetchError
from pdo_hub.hub import _retry

REPO = "faulty/tiny-bert"
WEIGHTS = r"/resolve/[0-9a-f]{40}/model\.safetensors$"
FAST_RETRIES = _retry.RetryPolicy(attempts=3, max_seconds=60, base_wait=0.1, max_wait=0.5)


@pytest.fixture(scope="module")
def fault_hub(tmp_path_factory):
    with FaultHub(tmp_path_factory.mktemp("fault_store")) as hub:
        hub.store.publish(REPO, save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_v1"), seed=0), message="v1")
        yield hub


@pytest.fixture
def hub(fault_hub, monkeypatch):
    """The fault hub as every Hub client's endpoint, short client timeouts, short pdo-hub backoff, no rules."""
    from huggingface_hub import constants

    use_endpoint(monkeypatch, fault_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    # huggingface_hub resumes from the bytes of the chunks it wrote (10 MiB each): test files are smaller.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setattr(_retry, "DEFAULT_POLICY", FAST_RETRIES)
    fault_hub.clear()
    yield fault_hub
    fault_hub.clear()


def _load(tmp_path: Path, **kwargs):
    return pdo_hub.from_pretrained(REPO, config=FAST_CONFIG, cache_dir=str(tmp_path / "hf"), **kwargs)


def _assert_complete_or_none(expected: int) -> None:
    """The optimized cache holds `expected` entries, each complete and verified, and no temp leftovers."""
    cache = OptimizedCache()
    entries = cache.list_entries()
    folders = sorted(cache.root.glob("*/entries/*"))
    assert len(entries) == len(folders) == expected, f"expected {expected} complete entries, found {folders}"
    for entry in entries:
        assert cache.lookup(entry.key, verify=True) is not None, f"{entry.path} is damaged"
    tmp = cache.root / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"half-written entries left in {tmp}"


def _assert_client_cache_sound(hf_cache: Path) -> None:
    """Every blob of the Hub client cache has the content its name (the Hub's ETag) says; nothing incomplete."""
    blobs = [p for p in hf_cache.rglob("blobs/*") if p.is_file()]
    assert not [p for p in blobs if p.name.endswith(".incomplete")], "an unfinished download was left behind"
    for blob in blobs:
        data = blob.read_bytes()
        digest = hashlib.sha256(data).hexdigest() if len(blob.name) == 64 else \
            hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert digest == blob.name, f"{blob} does not hold what its name says ({len(data)} bytes)"


def _faulted(hub: FaultHub, kind: str) -> list:
    return [seen for seen in hub.requests if seen.fault == kind]


def test_500s_on_metadata_and_files_are_retried_to_a_complete_entry(hub, tmp_path):
    hub.add(Fault("status", rf"/api/models/{REPO}/revision/main$", times=2),  # pdo-hub's model_info: no hf retry
            Fault("status", WEIGHTS, method="HEAD", times=1),  # huggingface_hub retries HEADs itself
            Fault("status", WEIGHTS, method="GET", times=2))  # a GET 500 is not retried by huggingface_hub
    model = _load(tmp_path)
    assert model.pdo_cache_status == "built"
    assert len(_faulted(hub, "status")) == 5, "every injected 500 was met and survived"
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")


def test_429_retry_after_is_honoured(hub, tmp_path):
    hub.add(Fault("status", rf"/api/models/{REPO}/revision/main$", status=429, headers={"Retry-After": "1"}),
            Fault("status", WEIGHTS, method="GET", status=429, headers={"Retry-After": "1"}))
    _load(tmp_path)
    seen = hub.requests
    for index, request in enumerate(seen):
        if request.fault == "status":
            retry = next(s for s in seen[index + 1:] if (s.method, s.path) == (request.method, request.path))
            assert retry.at - request.at >= 0.95, f"{request.method} {request.path} was retried before Retry-After"
    _assert_complete_or_none(1)


def test_a_server_slower_than_the_timeout_is_retried(hub, tmp_path):
    hub.add(Fault("delay", rf"/api/models/{REPO}/revision/main$", seconds=20),  # pdo-hub sets this timeout
            Fault("delay", WEIGHTS, method="GET", seconds=20))  # huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT
    started = time.monotonic()
    _load(tmp_path)
    assert time.monotonic() - started < 15, "the client waited for a stalled server instead of timing out"
    assert len(_faulted(hub, "delay")) == 2
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")


def test_a_connection_cut_mid_file_resumes_with_a_range_request(hub, tmp_path):
    hub.add(Fault("drop", WEIGHTS, method="GET"))
    _load(tmp_path)
    gets = [s for s in hub.requests if s.method == "GET" and s.path.endswith("/model.safetensors")]
    assert gets[0].fault == "drop" and gets[1].range and gets[1].range.startswith("bytes="), \
        f"the second GET should resume where the first stopped, got {gets[1]}"
    assert not gets[1].range.startswith("bytes=0-"), "resumed from the bytes already received"
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")


@pytest.mark.parametrize("faults", [
    pytest.param([Fault("length", WEIGHTS, method="HEAD", delta=50)], id="head-says-longer"),
    pytest.param([Fault("length", WEIGHTS, method="GET", delta=50)], id="get-says-longer"),
    # The same lie on HEAD and GET: huggingface_hub's size check passes and the truncated file lands under
    # its final name; pdo-hub's check against the Hub's sha256 catches and removes it.
    pytest.param([Fault("length", WEIGHTS, method="HEAD", delta=-100),
                  Fault("length", WEIGHTS, method="GET", delta=-100)], id="consistent-shorter"),
])
def test_a_wrong_content_length_never_leaves_a_corrupt_file(hub, tmp_path, faults):
    hub.add(*faults)
    model = _load(tmp_path)
    assert model.pdo_cache_status == "built"
    assert len(_faulted(hub, "length")) == len(faults)
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")


@pytest.mark.parametrize("fault", [
    pytest.param(Fault("status", WEIGHTS, method="GET", times=1000), id="500-forever"),
    pytest.param(Fault("length", WEIGHTS, method="*", delta=-100, times=1000), id="lying-length-forever"),
])
def test_a_failure_that_persists_is_a_clear_error_and_leaves_nothing(hub, tmp_path, fault):
    hub.add(fault)
    started = time.monotonic()
    with pytest.raises(FetchError) as failed:
        _load(tmp_path)
    assert time.monotonic() - started < 30, "retries are bounded"
    message = str(failed.value)
    assert REPO in message and "3 attempts" in message and "run the same call again" in message
    assert "model.safetensors" in message, "the message names the file"
    assert ("HTTP 500" in message) if fault.kind == "status" else ("where the Hub lists" in message)
    _assert_complete_or_none(0)
    _assert_client_cache_sound(tmp_path / "hf")

    hub.clear()  # the Hub recovers: the same call completes, reusing what was downloaded
    assert _load(tmp_path).pdo_cache_status == "built"
    assert not [s for s in hub.requests if s.path.endswith(("/config.json", "/tokenizer.json"))], \
        "complete files were not downloaded again"
    _assert_complete_or_none(1)


def test_mirror_retries_and_reports_what_kept_failing(hub, tmp_path, tmp_path_factory, capsys):
    from huggingface_hub import constants

    from pdo_hub.cli import main

    original_only = "faulty/original-only"
    hub.store.publish(original_only, save_tiny_bert(tmp_path_factory.mktemp("original_only"), seed=5))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"defaults:\n  config: {json.dumps(FAST_CONFIG)}\n"
                        f"models:\n  - hf:{REPO}\n  - source: hf:{original_only}\n    optimize: false\n")
    hub.add(Fault("status", rf"^/{REPO}{WEIGHTS}", method="GET", status=502),  # once: retried
            Fault("status", rf"^/{original_only}{WEIGHTS}", method="GET", times=1000))  # for ever: reported
    code = main(["mirror", str(manifest), "--json", "--quiet"])
    rows = {row["source"]: row for row in json.loads(capsys.readouterr().out)["entries"]}
    assert code == 1
    assert rows[f"hf:{REPO}"]["status"] == "optimized", rows[f"hf:{REPO}"]["error"]
    failed = rows[f"hf:{original_only}"]
    assert failed["status"] == "failed" and failed["error"].startswith("FetchError")
    assert "HTTP 500" in failed["error"] and "model.safetensors" in failed["error"] and "3 attempts" in failed["error"]
    _assert_complete_or_none(1)
    _assert_client_cache_sound(Path(constants.HF_HUB_CACHE) / "models--faulty--original-only")


def test_errors_retrying_cannot_fix_are_raised_at_once(hub, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        pdo_hub.from_pretrained("faulty/does-not-exist", config=FAST_CONFIG, cache_dir=str(tmp_path / "hf"))
    assert len(hub.requests) == 1, "a missing repo is not asked for again"
    _assert_complete_or_none(0)


def test_a_branch_that_moves_during_the_sync_gives_the_old_commits_entry(hub, tmp_path, tmp_path_factory):
    repo = "faulty/moving-bert"
    old_files = save_tiny_bert(tmp_path_factory.mktemp("moving_v1"), seed=1)
    old = hub.store.publish(repo, old_files, message="v1")
    new_files = save_tiny_bert(tmp_path_factory.mktemp("moving_v2"), seed=2)
    moved: list[str] = []

    def move_main() -> None:  # between the metadata request and the downloads
        moved.append(hub.store.publish(repo, new_files, message="v2"))

    hub.add(Fault("hook", rf"/api/models/{repo}/tree/", hook=move_main))
    model = pdo_hub.from_pretrained(repo, config=FAST_CONFIG, cache_dir=str(tmp_path / "hf"))
    assert moved and moved[0] != old and hub.store.resolve(repo) == moved[0], "main moved during the sync"

    entry = Path(model.pdo_cache_path)
    assert entry.name.startswith(old)
    assert json.loads((entry / "pdo_source.json").read_text())["revision"] == old
    snapshots = tmp_path / "hf" / "models--faulty--moving-bert" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [old], "nothing of the new commit was downloaded"
    assert (snapshots / old / "model.safetensors").read_bytes() == (old_files / "model.safetensors").read_bytes()
    assert (entry / "config.json").is_file()
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")

    again = pdo_hub.from_pretrained(repo, config=FAST_CONFIG, cache_dir=str(tmp_path / "hf"))
    assert Path(again.pdo_cache_path).name.startswith(moved[0]), "the next sync picks up the new commit"
    _assert_complete_or_none(2)


def test_a_published_variant_survives_faults_too(hub, tmp_path):
    from pdo_hub.push import push_entry

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PDO_HUB_CACHE", str(tmp_path / "builder"))
        built = _load(tmp_path / "builder_hf")
    push_entry(built.pdo_cache_path, "faulty/tiny-bert-pdo", endpoint=hub.server.url)
    hub.add(Fault("status", r"/api/models/faulty/tiny-bert-pdo/revision/main$", status=503),
            Fault("drop", WEIGHTS, method="GET"),
            Fault("length", r"/resolve/[0-9a-f]{40}/pdo_recipe\.json$", method="*", delta=-10, times=2))
    model = pdo_hub.from_pretrained("faulty/tiny-bert-pdo", cache_dir=str(tmp_path / "hf"))
    assert model.pdo_report == built.pdo_report
    assert {s.fault for s in hub.requests} >= {"status", "drop", "length"}
    _assert_complete_or_none(1)
    _assert_client_cache_sound(tmp_path / "hf")


def test_the_fault_rules_are_bounded():
    with pytest.raises(ValueError):
        Fault("delay", "/x", seconds=3600)
    with pytest.raises(ValueError):
        Fault("explode", "/x")
    fault = Fault("status", "/x", times=2)
    assert [fault.matches("GET", "/x") for _ in range(1)] == [True]
    fault.fired = 2
    assert not fault.matches("GET", "/x"), "a rule stops firing after `times`"
    assert os.environ.get("HF_HUB_OFFLINE") is None
