"""`POST /models/download`: the seed's "API Integration" as a real endpoint of `pdo-hub serve`.

Body (JSON, or the same names as query parameters): `source` (`huggingface` or `torchvision`, as the
seed's model manager names them), `model_id` (`org/name`, or a torchvision model name with optional
`:WEIGHTS`), `optimize` (default true; false only fetches the original) and optional `revision` /
`preset`. It fetches and optimizes into the served cache (blocking the request: an optimization takes
seconds to minutes), and answers with the status, the report summary and where the variant is served.
Enabled with `pdo-hub serve --allow-downloads`; on a server with tokens it needs a write-scoped token,
since it makes the server download and compute.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from pdo_hub.cache import OptimizedCache
from pdo_hub.core.errors import ConfigError, PdoHubError
from pdo_hub.serve._http import HubHTTPError, Request, Response, json_response

logger = logging.getLogger(__name__)

_SOURCES = {"huggingface": "hf", "hf": "hf", "torchvision": "torchvision"}
_PRESETS = ("conservative", "aggressive", "quality")


def download_routes(cache: OptimizedCache, config: str | None = None) -> dict[tuple[str, str], Callable[[Request], Response]]:
    """The endpoint, for `HubServer(extra_routes=...)`.

    Args:
        cache: The optimized cache the server serves (variants are built into it).
        config: The default optimization config (preset name or YAML path; None: the seed's defaults).
    """
    building = threading.Lock()  # one optimization at a time: each one uses every core

    def download_model(request: Request) -> Response:
        if request.config.tokens and (request.token is None or not request.token.can_write):
            raise HubHTTPError(403 if request.token else 401, "Forbidden" if request.token else "Unauthorized",
                               "POST /models/download makes this server fetch and optimize: it needs a token with the 'write' scope.")
        fields = {**request.query, **(request.json() if request.body.size else {})}
        spec = _spec(fields)
        optimize = _flag(fields.get("optimize", True))
        preset = fields.get("preset") or config
        if preset is not None and preset != config and preset not in _PRESETS:
            raise HubHTTPError(400, "BadRequest", f"preset must be one of {', '.join(_PRESETS)}, got {preset!r}.")
        with building:
            try:
                result = _fetch(spec, optimize, preset, cache)
            except (ConfigError, PdoHubError) as err:
                raise HubHTTPError(400 if isinstance(err, ConfigError) else 502, "DownloadFailed", str(err)) from err
            except Exception as err:  # noqa: BLE001 -- upstream errors (missing repo, network) as one clear answer
                logger.warning("POST /models/download of %s failed: %s", spec, err)
                raise HubHTTPError(502, "DownloadFailed", f"Fetching {spec} failed: {type(err).__name__}: {err}") from err
        return json_response(result)

    return {("POST", "/models/download"): download_model}


def _spec(fields: dict[str, Any]):
    from pdo_hub.sources import parse_source

    source, model_id = fields.get("source"), fields.get("model_id")
    if not isinstance(source, str) or source not in _SOURCES:  # a JSON list is not hashable: no dict lookup
        raise HubHTTPError(400, "BadRequest", f"source must be one of {sorted(set(_SOURCES))}, got {source!r}.")
    if not isinstance(model_id, str) or not model_id:
        raise HubHTTPError(400, "BadRequest", "model_id is required (e.g. sentence-transformers/all-MiniLM-L6-v2).")
    revision = fields.get("revision")
    try:
        return parse_source(f"{_SOURCES[source]}:{model_id}", revision=revision if isinstance(revision, str) else None)
    except ConfigError as err:
        raise HubHTTPError(400, "BadRequest", str(err)) from err


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes"):
        return True
    if str(value).strip().lower() in ("0", "false", "no"):
        return False
    raise HubHTTPError(400, "BadRequest", f"optimize must be true or false, got {value!r}.")


def _fetch(spec, optimize: bool, preset: str | None, cache: OptimizedCache) -> dict[str, Any]:
    from pdo_hub.optimizers.report import report_summary
    from pdo_hub.serve.cache_store import repo_id_of
    from pdo_hub.sources import optimize_source

    if not optimize:
        if spec.kind != "huggingface":
            raise ConfigError("optimize=false fetches Hub originals only; torchvision weights are fetched when optimized.")
        from pdo_hub.hub import _retry, revisions

        sha = revisions.resolve_hf_revision(spec.id, spec.revision, offline=False, cache=OptimizedCache())
        files = _retry.download_snapshot(spec.id, sha)
        revisions.record_hf_cache_ref(spec.id, spec.revision, sha, None)
        # The server's own paths stay private: the answer names the commit and the files fetched.
        return {"status": "success", "source": str(spec), "optimized": False, "optimizations_applied": [],
                "revision": sha, "files": sorted(p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file())}
    with _cache_root(cache):
        model = optimize_source(spec, config=preset)
    report = model.pdo_report
    from pdo_hub.cache import CacheKey
    from pdo_hub.cache.manifest import read_manifest

    key = CacheKey.from_dict(read_manifest(model.pdo_cache_path)["key"])
    return {"status": "success", "source": str(spec), "optimized": True, "cache_status": model.pdo_cache_status,
            "optimizations_applied": report.get("optimizations_applied") or [], "summary": report_summary(report),
            "served_as": {"repo_id": repo_id_of(key), "branch": f"pdo-{key.config_hash[:16]}"}}


class _cache_root:
    """Builds go into the served cache even when it is not `PDO_HUB_CACHE` (e.g. `serve --cache DIR`)."""

    def __init__(self, cache: OptimizedCache) -> None:
        self.root = str(cache.root)

    def __enter__(self) -> None:
        import os

        self.previous = os.environ.get("PDO_HUB_CACHE")
        os.environ["PDO_HUB_CACHE"] = self.root

    def __exit__(self, *exc: object) -> None:
        import os

        if self.previous is None:
            os.environ.pop("PDO_HUB_CACHE", None)
        else:
            os.environ["PDO_HUB_CACHE"] = self.previous
