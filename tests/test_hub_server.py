"""The Hub-compatible server against the REAL clients (huggingface_hub 2.4, transformers 5.x).

HF_ENDPOINT points at the session `hub_server` (see conftest.py); every client call gets its own
`cache_dir` so no test is served from another test's client cache.
"""

from __future__ import annotations

import _thread
import hashlib
import http.client
import json
import os
import signal
import threading
import tracemalloc
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from hub_fixtures import minilm_source_files

from pdo_hub.core.errors import InvalidRepoIdError
from pdo_hub.serve import HubServer, RepoStore, UnknownRevisionError


def _raw(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, Message, bytes]:
    """One plain HTTP request (no client logic in between): status, headers (case-insensitive), body."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


# -- downloads ----------------------------------------------------------------------------------
def test_hf_hub_download_by_branch_and_by_sha(minilm_repo, tmp_path):
    repo_id, sha = minilm_repo
    source = minilm_source_files()
    by_branch = hf_hub_download(repo_id, "config.json", cache_dir=tmp_path / "a")
    by_sha = hf_hub_download(repo_id, "1_Pooling/config.json", revision=sha, cache_dir=tmp_path / "b")
    assert Path(by_branch).read_bytes() == source["config.json"].read_bytes()
    assert Path(by_sha).read_bytes() == source["1_Pooling/config.json"].read_bytes()
    assert f"snapshots/{sha}/" in Path(by_branch).as_posix()
    assert (tmp_path / "a" / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").read_text() == sha


def test_etags_follow_hub_convention(minilm_repo):
    repo_id, sha = minilm_repo
    source = minilm_source_files()
    weights = get_hf_file_metadata(hf_hub_url(repo_id, "model.safetensors"))
    config = get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))
    assert weights.commit_hash == sha and config.commit_hash == sha
    assert weights.etag == hashlib.sha256(source["model.safetensors"].read_bytes()).hexdigest()  # LFS: sha256
    assert weights.size == source["model.safetensors"].stat().st_size
    assert config.etag == _git_sha1(source["config.json"].read_bytes())  # regular file: git blob sha1


def test_missing_file_repo_and_revision_raise_the_client_errors(minilm_repo, tmp_path):
    repo_id, _ = minilm_repo
    with pytest.raises(RemoteEntryNotFoundError) as missing_file:
        hf_hub_download(repo_id, "no_such_file.json", cache_dir=tmp_path)
    assert isinstance(missing_file.value, EntryNotFoundError)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="0" * 40, cache_dir=tmp_path)


def test_snapshot_download_fetches_every_file(minilm_repo, tmp_path):
    repo_id, sha = minilm_repo
    folder = Path(snapshot_download(repo_id, cache_dir=tmp_path))
    assert folder.name == sha
    source = minilm_source_files()
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == set(source)
    for name, path in source.items():
        assert (folder / name).read_bytes() == path.read_bytes(), name


def test_cached_sha_download_makes_no_request(hub_server, minilm_repo, tmp_path):
    repo_id, sha = minilm_repo
    hf_hub_download(repo_id, "vocab.txt", revision=sha, cache_dir=tmp_path)
    hub_server.clear_requests()
    hf_hub_download(repo_id, "vocab.txt", revision=sha, cache_dir=tmp_path)
    assert hub_server.requests == []


def test_model_info_list_files_and_refs(minilm_repo):
    repo_id, sha = minilm_repo
    api = HfApi()
    info = api.model_info(repo_id)
    assert info.id == repo_id and info.sha == sha
    assert info.last_modified is not None and info.last_modified.tzinfo is not None
    assert info.library_name == "sentence-transformers"
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(minilm_source_files())
    assert siblings["model.safetensors"].lfs is not None and siblings["config.json"].lfs is None
    assert api.model_info(repo_id, revision=sha).sha == sha
    assert sorted(api.list_repo_files(repo_id)) == sorted(minilm_source_files())
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", sha)]
    assert refs.tags == [] and refs.converts == []


def test_tree_listing_is_per_folder_unless_recursive(minilm_repo):
    repo_id, _ = minilm_repo
    top = {e.path: type(e).__name__ for e in HfApi().list_repo_tree(repo_id)}
    assert top["1_Pooling"] == "RepoFolder" and "1_Pooling/config.json" not in top
    inside = [e.path for e in HfApi().list_repo_tree(repo_id, path_in_repo="1_Pooling")]
    assert inside == ["1_Pooling/config.json"]
    status, headers, _ = _raw(f"{HfApi().endpoint}/api/models/{repo_id}/tree/main/additional_chat_templates")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"


def test_new_commit_on_main_moves_main_but_not_the_old_sha(hub_server, tmp_path):
    store, repo_id = hub_server.store, "pdo-tests/moving"
    first = store.publish(repo_id, {"config.json": b'{"v": 1}'})
    assert Path(hf_hub_download(repo_id, "config.json", cache_dir=tmp_path)).read_bytes() == b'{"v": 1}'
    second = store.publish(repo_id, {"config.json": b'{"v": 2}', "extra.txt": b"x"}, message="v2")
    assert second != first and store.resolve(repo_id) == second
    assert Path(hf_hub_download(repo_id, "config.json", cache_dir=tmp_path)).read_bytes() == b'{"v": 2}'
    old = hf_hub_download(repo_id, "config.json", revision=first, cache_dir=tmp_path / "old")
    assert Path(old).read_bytes() == b'{"v": 1}'
    assert store.publish(repo_id, {"config.json": b'{"v": 2}', "extra.txt": b"x"}, message="v2") == second
    history = HfApi().list_repo_commits(repo_id)
    assert [(c.commit_id, c.title) for c in history[:2]] == [(second, "v2"), (first, "Publish files")]


def test_branches_tags_and_pr_refs(hub_server, tmp_path):
    store, repo_id = hub_server.store, "pdo-tests/refs"
    base = store.publish(repo_id, {"a.txt": b"main"})
    store.create_tag(repo_id, "v1.0")
    dev = store.publish(repo_id, {"a.txt": b"dev"}, branch="dev")
    pr = store.open_pull_request(repo_id)
    pr_sha = store.commit(repo_id, branch=pr, add={"a.txt": b"pr"})
    assert pr == "refs/pr/1"
    for revision, content in (("v1.0", b"main"), ("dev", b"dev"), (pr, b"pr"), (base, b"main")):
        path = hf_hub_download(repo_id, "a.txt", revision=revision, cache_dir=tmp_path)
        assert Path(path).read_bytes() == content, revision
    refs = HfApi().list_repo_refs(repo_id, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": base, "dev": dev}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0", base)]
    assert [(p.name, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr_sha)]


# -- raw protocol details ------------------------------------------------------------------------
def test_range_requests(minilm_repo):
    repo_id, sha = minilm_repo
    data = minilm_source_files()["vocab.txt"].read_bytes()
    url = hf_hub_url(repo_id, "vocab.txt")
    status, headers, body = _raw(url, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert headers["X-Repo-Commit"] == sha
    status, _, body = _raw(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert (status, body) == (206, data[-5:])
    status, _, body = _raw(url, headers={"Range": "bytes=-7"})
    assert (status, body) == (206, data[-7:])
    status, headers, _ = _raw(url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = _raw(url, method="HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, len(data), b"")
    assert "X-Xet-Hash" not in headers


def test_large_file_streams_in_chunks_with_range_and_head(tmp_path):
    data = os.urandom(48 * 1024 * 1024 + 3)
    store = RepoStore(tmp_path / "store")
    sha = store.publish("org/big", {"model.safetensors": data})
    with HubServer(store) as server:
        url = f"{server.url}/org/big/resolve/main/model.safetensors"
        metadata = get_hf_file_metadata(url)
        assert (metadata.size, metadata.commit_hash) == (len(data), sha)
        status, headers, body = _raw(url, method="HEAD")
        assert (status, int(headers["Content-Length"]), body) == (200, len(data), b"")
        status, headers, body = _raw(url, headers={"Range": f"bytes={len(data) - 10}-"})
        assert (status, body, headers["Content-Range"]) == (206, data[-10:], f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}")
        tracemalloc.start()
        try:
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as response:
                assert int(response.headers["Content-Length"]) == len(data)
                while chunk := response.read(1024 * 1024):
                    digest.update(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        assert peak < 16 * 1024 * 1024, f"serving a 48 MiB file peaked at {peak / 2**20:.1f} MiB: not streamed"
        path = hf_hub_download("org/big", "model.safetensors", endpoint=server.url, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == data


def test_sixteen_concurrent_clients_download_a_large_file_identically(tmp_path):
    data = os.urandom(12 * 1024 * 1024 + 5)
    store = RepoStore(tmp_path / "store")
    store.publish("org/big", {"model.safetensors": data})
    with HubServer(store) as server, ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda n: hf_hub_download("org/big", "model.safetensors", endpoint=server.url,
                                                        cache_dir=tmp_path / f"c{n}"), range(16)))
    want = hashlib.sha256(data).hexdigest()
    assert [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths] == [want] * 16


def test_error_answers_carry_error_codes(minilm_repo):
    repo_id, sha = minilm_repo
    endpoint = HfApi().endpoint
    status, headers, body = _raw(f"{endpoint}/{repo_id}/resolve/main/missing.bin", method="GET")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    assert "missing.bin" in json.loads(body)["error"]
    status, headers, _ = _raw(f"{endpoint}/api/models/{repo_id}/revision/refs%2Fpr%2F99")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = _raw(f"{endpoint}/api/models/nobody/nothing")
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")
    status, headers, body = _raw(f"{endpoint}/{repo_id}/resolve/main/..%2F..%2Frefs.json")
    assert (status, headers["X-Error-Code"]) == (400, "BadRequest") and ".." in json.loads(body)["error"]


@pytest.mark.parametrize("bad", ["", "a/b/c", "/a", "a/", "a//b", "a/..", "a/b..c", "a b", "a/b\\c", ".a", "a-"])
def test_invalid_repo_ids_are_refused(tmp_path, bad):
    with pytest.raises(InvalidRepoIdError):
        RepoStore(tmp_path).publish(bad, {"x": b""})


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "a\\b", "a//b", "./a", "a/"])
def test_invalid_file_paths_are_refused(tmp_path, bad):
    with pytest.raises(InvalidRepoIdError, match="path"):
        RepoStore(tmp_path).publish("org/ok", {bad: b""})


def test_store_commits_are_deterministic_and_resolve_revisions(tmp_path):
    files = {"config.json": b"{}", "model.safetensors": b"w" * 64}
    one, two = RepoStore(tmp_path / "1"), RepoStore(tmp_path / "2")
    sha = one.publish("org/m", files)
    assert sha == two.publish("org/m", files) and len(sha) == 40
    assert one.resolve("org/m") == one.resolve("org/m", "main") == one.resolve("org/m", "refs/heads/main") == sha
    entry = one.file_entry("org/m", sha, "model.safetensors")
    assert entry.lfs and entry.etag == hashlib.sha256(b"w" * 64).hexdigest() and entry.oid == _git_sha1(b"w" * 64)
    with pytest.raises(UnknownRevisionError):
        one.resolve("org/m", "nope")


def test_stop_releases_the_port_and_cuts_keepalive_connections(tmp_path):
    store = RepoStore(tmp_path)
    store.publish("org/a", {"a.txt": b"1"})
    server = HubServer(store).start()
    port = server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/org/a/resolve/main/a.txt")
    assert connection.getresponse().read() == b"1"
    server.stop()
    with pytest.raises((OSError, http.client.HTTPException)):  # the old handler must not answer anymore
        connection.request("GET", "/org/a/resolve/main/a.txt")
        connection.getresponse().read()
    with HubServer(store, port=port) as again:
        assert _raw(f"{again.url}/org/a/resolve/main/a.txt")[2] == b"1"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn must shut down cleanly
def test_serve_forever_says_whether_ctrl_c_or_a_failure_ended_it_and_releases_the_port(tmp_path):
    # A shell starts a background job (`cmd &` without job control) with SIGINT ignored; interrupt_main()
    # then does nothing and this test would wait forever. Install Ctrl-C's handler, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        store = RepoStore(tmp_path)
        server = HubServer(store).start()
        port = server.port
        threading.Timer(0.3, _thread.interrupt_main).start()  # what Ctrl-C does to the main thread
        assert server.serve_forever() is True
        with HubServer(store, port=port) as again:  # the port is free again
            threading.Timer(0.3, lambda: setattr(again._server, "should_exit", True)).start()  # uvicorn ends by itself
            assert again.serve_forever() is False
    finally:
        signal.signal(signal.SIGINT, previous)


# -- access control ------------------------------------------------------------------------------
def test_private_and_gated_repos_need_a_token(tmp_path):
    store = RepoStore(tmp_path / "store")
    store.publish("org/secret", {"a.txt": b"s"}, private=True)
    store.publish("org/gated", {"a.txt": b"g"})
    store.set_access("org/gated", gated=True)
    with HubServer(store, tokens={"good-token": "alice"}) as server:
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("org/secret", "a.txt", endpoint=server.url, cache_dir=tmp_path / "c1", token=False)
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=server.url, token="bad-token").model_info("org/secret")
        with pytest.raises(GatedRepoError):
            hf_hub_download("org/gated", "a.txt", endpoint=server.url, cache_dir=tmp_path / "c2", token=False)
        assert HfApi(endpoint=server.url, token=False).model_info("org/gated").gated == "auto"
        for repo_id, content in (("org/secret", b"s"), ("org/gated", b"g")):
            path = hf_hub_download(repo_id, "a.txt", endpoint=server.url, cache_dir=tmp_path / "ok", token="good-token")
            assert Path(path).read_bytes() == content
        assert HfApi(endpoint=server.url, token="good-token").whoami()["name"] == "alice"
        with pytest.raises(HfHubHTTPError) as refused:
            HfApi(endpoint=server.url, token="bad-token").create_repo("org/new")
        assert refused.value.response.status_code == 401
        assert not store.exists("org/new")


# -- uploads -------------------------------------------------------------------------------------
def test_upload_with_stock_client_then_download_back(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url, token="any-token")
    repo_id = "pdo-tests/uploaded"
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo(repo_id)
    assert exists.value.response.status_code == 409

    folder = tmp_path / "variant"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 100)
    (folder / "sub" / "notes.txt").write_text("hello")
    api.upload_file(path_or_fileobj=b"---\nlicense: apache-2.0\ntags: [pdo-hub]\n---\n# Card\n",
                    path_in_repo="README.md", repo_id=repo_id)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Add variant")
    assert hub_server.store.resolve(repo_id) == info.oid

    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))
    assert snapshot.name == info.oid
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (snapshot / "sub" / "notes.txt").read_text() == "hello"
    assert HfApi().model_info(repo_id).card_data.tags == ["pdo-hub"]

    api.delete_file("sub/notes.txt", repo_id=repo_id)
    assert "sub/notes.txt" not in HfApi().list_repo_files(repo_id)
    unchanged = api.upload_folder(folder_path=folder, repo_id=repo_id, allow_patterns=["config.json"])
    assert unchanged.oid == hub_server.store.resolve(repo_id)  # unchanged file: no new commit

    proposal = api.upload_file(path_or_fileobj=b"proposed", path_in_repo="notes.txt", repo_id=repo_id, create_pr=True)
    assert proposal.pr_revision == "refs/pr/1" and hub_server.store.resolve(repo_id) == unchanged.oid
    assert hub_server.store.read_bytes(repo_id, "notes.txt", revision="refs/pr/1") == b"proposed"


def test_large_inline_commit_is_spooled_and_decoded_in_slices(hub_server, tmp_path):
    """A 12 MiB file travels as ~16 MiB of base64 in one NDJSON line: spooled to disk, decoded to a staging file."""
    data = os.urandom(12 * 1024 * 1024 + 1)
    api = HfApi(endpoint=hub_server.url, token=False)
    api.create_repo("pdo-tests/big-inline")
    info = api.upload_file(path_or_fileobj=data, path_in_repo="weights/big.bin", repo_id="pdo-tests/big-inline")
    assert hub_server.store.resolve("pdo-tests/big-inline") == info.oid
    assert hub_server.store.read_bytes("pdo-tests/big-inline", "weights/big.bin") == data


# -- transformers ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_transformers_auto_classes_load_from_the_server(hub_server, minilm_repo, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    repo_id, sha = minilm_repo
    local = Path(minilm_source_files()["config.json"]).parent
    hub_server.clear_requests()
    config = AutoConfig.from_pretrained(repo_id, cache_dir=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, cache_dir=tmp_path)
    model = AutoModel.from_pretrained(repo_id, cache_dir=tmp_path).eval()
    assert config.model_type == "bert" and config.hidden_size == 384
    assert ("GET", f"/{repo_id}/resolve/{sha}/model.safetensors") in hub_server.requests, hub_server.requests

    reference = AutoModel.from_pretrained(local).eval()
    batch = tokenizer(["a mirror that optimizes models"], return_tensors="pt")
    assert batch["input_ids"].tolist() == AutoTokenizer.from_pretrained(local)(["a mirror that optimizes models"],
                                                                              return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        got, want = model(**batch).last_hidden_state, reference(**batch).last_hidden_state
    assert torch.equal(got, want), "weights served by the mirror differ from the source"
    assert (tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").read_text() == sha
