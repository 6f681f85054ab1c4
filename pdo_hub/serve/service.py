"""What `pdo-hub serve` puts together: the stores it answers from, the tokens, the optional endpoints.

Repos are answered, in this order, from: repos pushed to this server (a `RepoStore`, writable with a
write-scoped token), the optimized cache (`CacheRepoStore`: every variant under its own commit sha),
and, with an upstream URL, the upstream Hub passed through (originals fetched once, then served from
disk). The same `HubServer` is what the tests start: one implementation of the Hub protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pdo_hub.cache import OptimizedCache
from pdo_hub.core import constants
from pdo_hub.serve.cache_store import CacheRepoStore, default_main_hashes
from pdo_hub.serve.repo_store import RepoStore
from pdo_hub.serve.server import HubServer


@dataclass(frozen=True)
class ServeOptions:
    """Settings of `pdo-hub serve` (see its `--help`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    cache: str | os.PathLike[str] | None = None
    repos: str | os.PathLike[str] | None = None
    upstream: str | None = None
    tokens_file: str | os.PathLike[str] | None = None
    public_url: str | None = None
    insecure: bool = False
    config: str | None = None
    allow_downloads: bool = False


def build_server(options: ServeOptions) -> HubServer:
    """The configured (not yet started) server; `server.pdo_cache_root` names the cache it serves.

    Raises:
        ConfigError: a bad token file, a non-loopback host without tokens (and no `insecure`), ...
    """
    from pdo_hub.serve.store_chain import StoreChain
    from pdo_hub.serve.tokens import load_token_file

    cache = OptimizedCache(options.cache) if options.cache else OptimizedCache()
    cache.shared  # noqa: B018 -- a bad PDO_HUB_SHARED_CACHE (ConfigError) stops the server here, not each request
    refresh = constants.shared_refresh_seconds()  # likewise a bad PDO_HUB_SHARED_REFRESH_SECONDS
    root = cache.root
    repos = RepoStore(Path(options.repos).expanduser() if options.repos else root / ".hub-repos")
    stores = [repos, CacheRepoStore(cache, main_variant_hashes=default_main_hashes(options.config),
                                    shared_refresh_seconds=refresh)]
    if options.upstream:
        from pdo_hub.serve.upstream_store import UpstreamStore

        stores.append(UpstreamStore(options.upstream, root / ".upstream", token=upstream_token(options.upstream)))
    tokens = load_token_file(options.tokens_file) if options.tokens_file else None
    extra_routes = None
    if options.allow_downloads:
        from pdo_hub.serve.downloads import download_routes

        extra_routes = download_routes(cache, options.config)
    server = HubServer(StoreChain(stores, writable=repos), host=options.host, port=options.port, tokens=tokens,
                       public_url=options.public_url, insecure=options.insecure, extra_routes=extra_routes)
    server.pdo_cache_root = root
    return server


def upstream_token(url: str) -> str | bool | None:
    """The token sent to the upstream: `PDO_HUB_UPSTREAM_TOKEN`, or the user's Hub login for the Hub itself only.

    huggingface_hub would otherwise send the saved login (or `HF_TOKEN`) to whatever URL `--upstream` names.
    """
    explicit = os.environ.get("PDO_HUB_UPSTREAM_TOKEN")
    if explicit:
        return explicit
    from urllib.parse import urlparse

    return None if urlparse(url).hostname == "huggingface.co" else False
