"""Pass-through serving: an `UpstreamStore` behind a `HubServer`, with another `HubServer` as the upstream.

Stock huggingface_hub clients download through the pass-through server; the upstream's request log
shows what the pass-through asked for.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError

from pdo_hub.serve import HubServer, RepoStore, StoreChain, UpstreamStore

REPO = "up-org/tiny"
FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": os.urandom(3 * 1024 * 1024 + 17),  # LFS by suffix: verified by sha256
    "sub/notes.txt": b"hello from upstream",  # a regular file: verified by its git blob sha1
    "README.md": b"---\nlibrary_name: transformers\ntags: [tiny]\n---\n# Tiny\n",
}


@pytest.fixture()
def upstream(tmp_path):
    store = RepoStore(tmp_path / "upstream")
    store.publish(REPO, FILES)
    with HubServer(store) as server:
        yield server


@pytest.fixture()
def passthrough(upstream, tmp_path):
    with HubServer(UpstreamStore(upstream.url, tmp_path / "pass", token=False)) as server:
        yield server


def _resolve_gets(server: HubServer) -> list[str]:
    return [path for method, path in server.requests if method == "GET" and "/resolve/" in path]


def test_download_through_passthrough_fetches_each_file_from_upstream_once(upstream, passthrough, tmp_path):
    first = hf_hub_download(REPO, "model.safetensors", endpoint=passthrough.url, cache_dir=tmp_path / "c1")
    assert Path(first).read_bytes() == FILES["model.safetensors"]
    assert len(_resolve_gets(upstream)) == 1
    upstream.clear_requests()
    second = hf_hub_download(REPO, "model.safetensors", endpoint=passthrough.url, cache_dir=tmp_path / "c2")
    assert Path(second).read_bytes() == FILES["model.safetensors"]
    assert upstream.requests == [], "a file and a fresh branch already seen must not reach the upstream again"


def test_expired_branch_is_asked_again_but_the_file_is_not_downloaded_again(upstream, tmp_path):
    with HubServer(UpstreamStore(upstream.url, tmp_path / "pass", token=False, ref_ttl=0)) as passthrough:
        hf_hub_download(REPO, "sub/notes.txt", endpoint=passthrough.url, cache_dir=tmp_path / "c1")
        upstream.clear_requests()
        path = hf_hub_download(REPO, "sub/notes.txt", endpoint=passthrough.url, cache_dir=tmp_path / "c2")
    assert Path(path).read_bytes() == FILES["sub/notes.txt"]
    assert upstream.requests and _resolve_gets(upstream) == [], upstream.requests


def test_snapshot_and_metadata_match_the_upstream(upstream, passthrough, tmp_path):
    sha = upstream.store.resolve(REPO)
    folder = Path(snapshot_download(REPO, endpoint=passthrough.url, cache_dir=tmp_path / "c"))
    assert folder.name == sha
    for name, content in FILES.items():
        assert (folder / name).read_bytes() == content, name
    info = HfApi(endpoint=passthrough.url).model_info(REPO)
    assert info.sha == sha and info.library_name == "transformers"
    siblings = {s.rfilename: s for s in HfApi(endpoint=passthrough.url).model_info(REPO, files_metadata=True).siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert [b.target_commit for b in HfApi(endpoint=passthrough.url).list_repo_refs(REPO).branches] == [sha]


def test_missing_things_upstream_raise_the_client_errors(passthrough, tmp_path):
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.json", endpoint=passthrough.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("up-org/missing", "config.json", endpoint=passthrough.url, cache_dir=tmp_path)


def test_content_not_matching_the_announced_digest_is_refused_and_not_kept(upstream, passthrough, tmp_path):
    HfApi(endpoint=passthrough.url).model_info(REPO)  # the pass-through learns the true digests first
    blob = upstream.store.blob_path(hashlib.sha256(FILES["model.safetensors"]).hexdigest())
    blob.write_bytes(os.urandom(len(FILES["model.safetensors"])))  # same size, other bytes
    url = f"{passthrough.url}/{REPO}/resolve/main/model.safetensors"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 502 and refused.value.headers["X-Error-Code"] == "UpstreamError"
    content = FILES["model.safetensors"]
    oid = hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()
    assert not (tmp_path / "pass" / "files" / oid[:2] / oid).exists(), "an unverified file was kept"


def test_known_commit_is_served_while_the_upstream_is_down(upstream, tmp_path):
    store = UpstreamStore(upstream.url, tmp_path / "pass", token=False)
    sha = upstream.store.resolve(REPO)
    with HubServer(store) as passthrough:
        hf_hub_download(REPO, "config.json", revision=sha, endpoint=passthrough.url, cache_dir=tmp_path / "c1")
        upstream.stop()
        path = hf_hub_download(REPO, "config.json", revision=sha, endpoint=passthrough.url, cache_dir=tmp_path / "c2")
    assert Path(path).read_bytes() == FILES["config.json"]


def test_chain_serves_pushed_repos_first_and_refuses_pushes_to_mirrored_ones(upstream, tmp_path):
    pushed = RepoStore(tmp_path / "pushed")
    chain = StoreChain([UpstreamStore(upstream.url, tmp_path / "pass", token=False)], writable=pushed)
    with HubServer(chain, tokens={"w": "me"}) as server:
        api = HfApi(endpoint=server.url, token="w")
        api.create_repo("me/variant")
        api.upload_file(path_or_fileobj=b"mine", path_in_repo="a.txt", repo_id="me/variant")
        assert pushed.read_bytes("me/variant", "a.txt") == b"mine"
        got = hf_hub_download(REPO, "config.json", endpoint=server.url, cache_dir=tmp_path / "c")
        assert Path(got).read_bytes() == FILES["config.json"]
        assert sorted(m.id for m in api.list_models()) == ["me/variant", REPO]
        with pytest.raises(HfHubHTTPError) as refused:
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
        assert refused.value.response.status_code == 403
        assert refused.value.response.headers["X-Error-Code"] == "ReadOnly"
    assert not pushed.exists(REPO)
