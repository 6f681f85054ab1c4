"""Branch/tag -> commit sha resolution for Hub repos (the cache key needs the immutable sha).

Online, one `model_info` call asks the Hub (a 40-hex revision needs no call at all). Offline, the ref
recorded in the optimized cache when the model was built is used, then the Hub client cache's `refs/`.
After a fetch, the Hub client cache gets the `refs/<branch>` that stock clients expect.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pdo_hub.cache import OptimizedCache, refs
from pdo_hub.core.errors import CacheError, InvalidRepoIdError, OfflineCacheMissError

logger = logging.getLogger(__name__)

_SHA1 = re.compile(r"[0-9a-f]{40}")
DEFAULT_REVISION = "main"


def is_commit_sha(revision: str) -> bool:
    """True for a full lowercase 40-hex commit sha (immutable, so it needs no resolution)."""
    return bool(_SHA1.fullmatch(revision))


def resolve_hf_revision(repo_id: str, revision: str | None, *, offline: bool, cache: OptimizedCache,
                        token: str | bool | None = None, cache_dir: str | None = None, offline_reason: str = "") -> str:
    """The commit sha `revision` (default `main`) of `repo_id` points to.

    Raises:
        OfflineCacheMissError: offline and the ref was never recorded locally.
        huggingface_hub errors (`RepositoryNotFoundError`, `RevisionNotFoundError`, ...) online.
    """
    revision = revision or DEFAULT_REVISION
    if is_commit_sha(revision):
        return revision
    if offline:
        sha = _known_ref(cache, repo_id, revision) or _hf_cache_ref(repo_id, revision, cache_dir)
        if sha is None:
            raise OfflineCacheMissError(
                f"Offline mode is on ({offline_reason}) and pdo-hub does not know which commit revision "
                f"{revision!r} of {repo_id!r} points to: the model was never fetched on this machine. Run once with "
                f"network access: pdo_hub.from_pretrained({repo_id!r}, revision={revision!r}), or pass a 40-hex commit sha."
            )
        return sha
    from pdo_hub.hub import _retry

    sha = _retry.model_info(repo_id, revision=revision, token=token).sha  # with a timeout and bounded retries
    if not sha or not is_commit_sha(sha):
        raise InvalidRepoIdError(f"The Hub answered no commit sha for {repo_id!r} at {revision!r} (got {sha!r}).")
    return sha


def record_ref(cache: OptimizedCache, repo_id: str, revision: str | None, sha: str) -> None:
    """Remember `revision -> sha` in the optimized cache so that `revision` resolves offline."""
    revision = revision or DEFAULT_REVISION
    if is_commit_sha(revision):
        return
    try:
        cache.set_ref("huggingface", repo_id, revision, sha)
    except InvalidRepoIdError as err:  # an exotic tag name: the model still loads, only offline naming is lost
        logger.warning("Cannot record ref %r of %s for offline use: %s", revision, repo_id, err)


def record_hf_cache_ref(repo_id: str, revision: str | None, sha: str, cache_dir: str | Path | None = None) -> None:
    """Point `refs/<revision>` of the Hub client cache at `sha`, as `snapshot_download(revision=branch)` does.

    pdo-hub downloads originals by commit sha (the key's immutable id), and the client writes a ref only for
    a branch or tag it resolved itself; without this, stock `AutoModel.from_pretrained(repo)` with
    `HF_HUB_OFFLINE=1` cannot find files that are all in the cache. Call it after a successful online fetch.
    Best effort: a failure is logged, since the optimized model does not depend on it.

    Args:
        repo_id: Hub repo id.
        revision: The branch or tag the caller asked for (None means `main`); a commit sha writes nothing.
        sha: The commit `revision` resolved to, whose files are now in the client cache.
        cache_dir: The client cache the files went to (default `HF_HUB_CACHE`).
    """
    revision = revision or DEFAULT_REVISION
    if is_commit_sha(revision):
        return
    from huggingface_hub import constants as hf_constants

    # Same layout as the optimized cache for Hub repos: models--org--name/refs/<name>, nested for refs/pr/1.
    root = Path(cache_dir or hf_constants.HF_HUB_CACHE).expanduser()
    try:
        # Rewrite only on change, like the client, so a read-only shared cache stays usable.
        if refs.resolve_ref(root, "huggingface", repo_id, revision) != sha:
            refs.set_ref(root, "huggingface", repo_id, revision, sha)
    except (InvalidRepoIdError, CacheError) as err:
        logger.warning("Cannot record ref %r of %s in the Hub client cache at %s (%s); stock clients offline will "
                       "need revision=%r.", revision, repo_id, root, err, sha)


def _known_ref(cache: OptimizedCache, repo_id: str, revision: str) -> str | None:
    try:
        return cache.resolve_ref("huggingface", repo_id, revision)
    except InvalidRepoIdError:
        return None


def _hf_cache_ref(repo_id: str, revision: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError

    try:
        resolved = HfApi().resolve_revision(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (HfHubHTTPError, RevisionResolutionError, OSError, ValueError) as err:
        logger.debug("No local ref %r for %s in the Hub client cache: %s", revision, repo_id, err)
        return None
    sha = getattr(resolved, "resolved", None)
    return sha if isinstance(sha, str) and is_commit_sha(sha) else None
