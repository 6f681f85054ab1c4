"""`pdo-hub serve` replicas with their own local caches and one shared tier (moto's S3 server on
127.0.0.1): a variant built by any worker or replica is listed and served by every replica, to the
stock huggingface_hub client."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from shared_tier_fixtures import env, s3  # noqa: F401  (fixtures)

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.serve import HubServer
from pdo_hub.serve.cache_store import CacheRepoStore, variant_branch

REPO = "org/model"
FIRST = CacheKey("huggingface", REPO, "a" * 40, "1" * 64)
SECOND = CacheKey("huggingface", REPO, "a" * 40, "2" * 64)


def _writer(weights: bytes):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "config.json").write_text('{"model_type": "bert"}')
        (folder / "README.md").write_text("---\nlibrary_name: pdo-hub\ntags: [pdo-hub]\n---\n# card\n")

    return write


def _replica(root: Path) -> HubServer:
    # Refresh 0: each request lists the tier, so the test needs no sleep (the default reuses it for 2 s).
    return HubServer(CacheRepoStore(OptimizedCache(root), shared_refresh_seconds=0))


def test_a_variant_built_by_any_worker_is_listed_and_served_by_every_replica(env, tmp_path):
    worker_weights, replica_weights = b"\x01" * 300_000, b"\x02" * 200_000
    with _replica(tmp_path / "replica-a") as a, _replica(tmp_path / "replica-b") as b:
        assert list(HfApi(endpoint=a.url).list_models()) == list(HfApi(endpoint=b.url).list_models()) == []
        OptimizedCache(tmp_path / "worker").commit(FIRST, _writer(worker_weights))  # a mirror worker elsewhere
        shas = set()
        for name, server in (("a", a), ("b", b)):
            assert [model.id for model in HfApi(endpoint=server.url).list_models()] == [REPO]
            path = hf_hub_download(REPO, "model.safetensors", endpoint=server.url, cache_dir=tmp_path / f"client-{name}")
            assert Path(path).read_bytes() == worker_weights
            shas.add(HfApi(endpoint=server.url).model_info(REPO).sha)
        assert len(shas) == 1, "every replica serves the variant under the same commit sha"

        # A variant built by replica a (e.g. through POST /models/download) is served by replica b.
        OptimizedCache(tmp_path / "replica-a").commit(SECOND, _writer(replica_weights))
        path = hf_hub_download(REPO, "model.safetensors", revision=variant_branch(SECOND.config_hash),
                               endpoint=b.url, cache_dir=tmp_path / "client-b2")
        assert Path(path).read_bytes() == replica_weights
        assert (tmp_path / "replica-b" / "models--org--model" / "entries").is_dir(), "served from b's local copy"


def test_a_tampered_variant_in_the_shared_tier_is_not_served(env, tmp_path):
    from pdo_hub.cache.shared_tier import SharedTier

    OptimizedCache(tmp_path / "worker").commit(FIRST, _writer(b"\x01" * 1000))
    tier = SharedTier(env["PDO_HUB_SHARED_CACHE"])
    [weights] = [p for p in tier.objects.find(tier.objects.base) if p.endswith("model.safetensors")]
    tier.objects.write(weights, b"\x09" * 1000)
    with _replica(tmp_path / "replica") as server:
        assert list(HfApi(endpoint=server.url).list_models()) == []


def test_serve_refuses_to_start_with_an_unusable_shared_cache_url(tmp_path, monkeypatch):
    import pytest

    from pdo_hub.core.errors import ConfigError
    from pdo_hub.serve.service import ServeOptions, build_server

    monkeypatch.setenv("PDO_HUB_SHARED_CACHE", "gs://bucket/prefix")
    with pytest.raises(ConfigError, match="'gs' protocol is not supported"):
        build_server(ServeOptions(port=0, cache=tmp_path / "cache"))


def test_serve_reuses_a_repos_shared_listing_for_PDO_HUB_SHARED_REFRESH_SECONDS(env, tmp_path, monkeypatch):
    import pytest
    from huggingface_hub.errors import RepositoryNotFoundError

    from pdo_hub.core.errors import ConfigError
    from pdo_hub.serve.service import ServeOptions, build_server

    monkeypatch.setenv("PDO_HUB_SHARED_REFRESH_SECONDS", "-1")
    with pytest.raises(ConfigError, match="PDO_HUB_SHARED_REFRESH_SECONDS"):
        build_server(ServeOptions(port=0, cache=tmp_path / "replica"))
    for seconds, found in (("3600", False), ("0", True)):
        repo = f"org/refresh-{seconds}"  # one tier for both cases: a repo each
        monkeypatch.setenv("PDO_HUB_SHARED_REFRESH_SECONDS", seconds)
        with build_server(ServeOptions(port=0, cache=tmp_path / f"replica-{seconds}")) as server:
            api = HfApi(endpoint=server.url)
            with pytest.raises(RepositoryNotFoundError):
                api.model_info(repo)  # lists the tier for this repo: nothing yet
            OptimizedCache(tmp_path / "worker").commit(CacheKey("huggingface", repo, "a" * 40, "1" * 64), _writer(b"\x01" * 1000))
            if found:
                assert api.model_info(repo).sha, "listed again at once with 0 s"
            else:
                with pytest.raises(RepositoryNotFoundError):
                    api.model_info(repo)  # the listing of a moment ago is reused: one LIST per repo and hour


def test_the_model_listing_lists_the_tier_once_per_refresh_period(env, tmp_path):
    worker = OptimizedCache(tmp_path / "worker")
    worker.commit(FIRST, _writer(b"\x01" * 1000))
    with HubServer(CacheRepoStore(OptimizedCache(tmp_path / "replica"), shared_refresh_seconds=3600)) as server:
        assert [model.id for model in HfApi(endpoint=server.url).list_models()] == [REPO]
        worker.commit(CacheKey("huggingface", "org/later", "a" * 40, "1" * 64), _writer(b"\x02" * 1000))
        assert [model.id for model in HfApi(endpoint=server.url).list_models()] == [REPO], "the tier was listed again"
    with _replica(tmp_path / "replica-0") as server:  # refresh 0: every listing sees the tier as it is
        assert sorted(model.id for model in HfApi(endpoint=server.url).list_models()) == ["org/later", REPO]
