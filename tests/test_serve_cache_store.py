"""`CacheRepoStore`: optimized cache entries served as Hub repos, each variant under its own commit sha."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.serve import UnknownEntryError, UnknownRepoError, UnknownRevisionError
from pdo_hub.serve.cache_store import CacheRepoStore, variant_branch

UPSTREAM = "a" * 40
OTHER_UPSTREAM = "b" * 40
VARIANT_A = "1" * 64
VARIANT_B = "2" * 64


def _commit(cache: OptimizedCache, key: CacheKey, weights: bytes) -> Path:
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "config.json").write_text('{"model_type": "bert"}')
        (folder / "README.md").write_text("---\nlibrary_name: pdo-hub\ntags: [pdo-hub]\n---\n# card\n")

    return cache.commit(key, write).path


@pytest.fixture
def cache(tmp_path) -> OptimizedCache:
    return OptimizedCache(tmp_path / "cache")


def test_variant_is_served_under_its_own_sha_with_manifest_sizes_and_hashes(cache):
    weights = b"\x01" * 1000
    folder = _commit(cache, CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_A), weights)
    store = CacheRepoStore(cache)
    sha = store.resolve("org/model")
    assert sha != UPSTREAM and len(sha) == 40
    commit = store.get_commit("org/model", sha)
    assert sorted(commit.files) == ["README.md", "config.json", "model.safetensors"], "manifest and stamp stay private"
    entry = store.file_entry("org/model", sha, "model.safetensors")
    assert entry.size == 1000 and entry.sha256 == hashlib.sha256(weights).hexdigest()
    assert store.open_file("org/model", sha, entry) == folder / "model.safetensors"
    small = store.file_entry("org/model", sha, "config.json")
    content = (folder / "config.json").read_bytes()
    assert small.oid == hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()


def test_main_prefers_the_default_config_variant_and_each_variant_has_a_branch(cache):
    _commit(cache, CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_A), b"a")
    time.sleep(0.01)
    _commit(cache, CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_B), b"b")
    newest_main = CacheRepoStore(cache).resolve("org/model", "main")
    store = CacheRepoStore(cache, main_variant_hashes=(VARIANT_A,))
    branches = store.refs("org/model").branches
    assert set(branches) == {"main", variant_branch(VARIANT_A), variant_branch(VARIANT_B)}
    assert branches["main"] == branches[variant_branch(VARIANT_A)] != newest_main
    assert newest_main == branches[variant_branch(VARIANT_B)], "without a preference main is the newest variant"


def test_a_new_upstream_revision_moves_the_variant_branch_and_keeps_the_old_commit(cache):
    _commit(cache, CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_A), b"old")
    store = CacheRepoStore(cache)
    old = store.resolve("org/model", variant_branch(VARIANT_A))
    time.sleep(0.01)
    _commit(cache, CacheKey("huggingface", "org/model", OTHER_UPSTREAM, VARIANT_A), b"new")
    new = store.resolve("org/model", variant_branch(VARIANT_A))
    assert new != old
    assert store.resolve("org/model", old) == old, "an older variant stays reachable by its sha"


def test_torchvision_entries_are_served_under_the_torchvision_namespace(cache):
    _commit(cache, CacheKey("torchvision", "ResNet18_Weights.IMAGENET1K_V1", "c" * 64, VARIANT_A), b"w")
    store = CacheRepoStore(cache)
    assert store.list_repos() == ["torchvision/ResNet18_Weights.IMAGENET1K_V1"]
    assert store.exists("torchvision/ResNet18_Weights.IMAGENET1K_V1")


def test_local_entries_are_never_served(cache):
    _commit(cache, CacheKey("local", "my_model.pt", "d" * 64, VARIANT_A), b"w")
    store = CacheRepoStore(cache)
    assert store.list_repos() == [] and not store.exists("my_model.pt")


def test_unknown_repo_revision_and_file_raise_store_errors(cache):
    _commit(cache, CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_A), b"w")
    store = CacheRepoStore(cache)
    with pytest.raises(UnknownRepoError):
        store.resolve("org/other")
    with pytest.raises(UnknownRevisionError):
        store.resolve("org/model", UPSTREAM)  # the upstream sha is never a variant's
    with pytest.raises(UnknownEntryError):
        store.file_entry("org/model", store.resolve("org/model"), "pytorch_model.bin")


def test_an_evicted_variant_is_gone_and_a_removed_file_is_not_served(cache):
    key = CacheKey("huggingface", "org/model", UPSTREAM, VARIANT_A)
    folder = _commit(cache, key, b"w" * 10)
    store = CacheRepoStore(cache)
    sha = store.resolve("org/model")
    entry = store.file_entry("org/model", sha, "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"short")
    with pytest.raises(UnknownEntryError):
        store.open_file("org/model", sha, entry)
    cache.remove(key)
    assert not store.exists("org/model")
