"""`UpstreamStore`: a read-only store that passes another Hub through, downloading each file once.

Metadata comes from the upstream through `huggingface_hub.HfApi(endpoint=upstream_url)`; a commit
sha's file list is immutable, so it is kept on disk for good. Branch and tag names are asked again
after `ref_ttl` seconds (and answered from the last known state while the upstream is unreachable).
Each file is streamed from the upstream the first time a client downloads it, checked against the
announced size and sha256 (or git blob sha1), and served from disk from then on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from pdo_hub.cache.manifest import sha256_file
from pdo_hub.serve._files import read_json, write_json
from pdo_hub.serve._records import (
    CommitRecord,
    FileEntry,
    RepoRefs,
    RepoSettings,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    UpstreamError,
    is_commit_sha,
    validate_path,
    validate_repo_id,
)
from pdo_hub.serve._upstream_files import UpstreamFiles

logger = logging.getLogger(__name__)


class UpstreamStore:
    """A `ReadableRepoStore` answering from an upstream Hub, with files cached on disk.

    Args:
        upstream_url: The upstream Hub, e.g. `https://huggingface.co` or another `pdo-hub serve`.
        cache_folder: Where metadata and downloaded files are kept (created if missing).
        token: Token sent to the upstream. None uses huggingface_hub's usual token (HF_TOKEN or the
            saved login), False sends none.
        ref_ttl: Seconds during which a branch or tag, and a repo's private/gated flags, are answered
            without asking the upstream again.

    Example:
        ```python
        >>> store = UpstreamStore("https://huggingface.co", "/srv/pdo-hub/upstream")
        >>> HubServer(store).serve_forever()
        ```
    """

    def __init__(self, upstream_url: str, cache_folder: str | Path, token: str | bool | None = None, *,
                 ref_ttl: float = 60.0) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.token = token
        self.ref_ttl = float(ref_ttl)
        self.files = UpstreamFiles(Path(cache_folder).expanduser().resolve())
        self._api = HfApi(endpoint=self.upstream_url, token=token)
        self._refs: dict[tuple[str, str], tuple[float, str]] = {}
        self._settings: dict[str, tuple[float, RepoSettings]] = {}
        self._missing: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UpstreamStore({self.upstream_url!r}, {str(self.files.root)!r})"

    # -- the read protocol ------------------------------------------------------------------------
    def exists(self, repo_id: str) -> bool:
        try:
            self.settings(repo_id)
        except UnknownRepoError:
            return False
        return True

    def list_repos(self) -> list[str]:
        """The repos served so far (the upstream itself is not enumerated)."""
        return self.files.remembered_repos()

    def settings(self, repo_id: str) -> RepoSettings:
        validate_repo_id(repo_id)
        with self._lock:
            if self._is_fresh(self._missing.get(repo_id)):
                raise UnknownRepoError(f"Repository {repo_id!r} does not exist upstream.")
            when, settings = self._settings.get(repo_id, (None, None))
        return settings if settings is not None and self._is_fresh(when) else self._fetch(repo_id, None)[1]

    def refs(self, repo_id: str) -> RepoRefs:
        with self._upstream_errors(repo_id, "the refs"):
            found = self._api.list_repo_refs(repo_id, include_pull_requests=True)

        def names(refs: list) -> dict[str, str]:
            return {ref.name: ref.target_commit for ref in refs}

        return RepoRefs(branches=names(found.branches), tags=names(found.tags),
                        pull_requests={ref.ref: ref.target_commit for ref in found.pull_requests or []})

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        revision = revision or "main"
        if is_commit_sha(revision) and self.files.commit_path(repo_id, revision).is_file():
            return revision
        with self._lock:
            when, sha = self._refs.get((repo_id, revision), (None, None))
        return sha if sha is not None and self._is_fresh(when) else self._fetch(repo_id, revision)[0]

    def get_commit(self, repo_id: str, sha: str) -> CommitRecord:
        path = self.files.commit_path(repo_id, sha)
        if not path.is_file() and is_commit_sha(sha):
            self._fetch(repo_id, sha)
        if not path.is_file():
            raise UnknownRevisionError(f"Commit {sha!r} does not exist in {repo_id!r}.")
        data = read_json(path)
        files = {name: FileEntry.from_json(name, meta) for name, meta in data["files"].items()}
        return CommitRecord(sha=sha, parent=None, message="", description="", timestamp=float(data["timestamp"]),
                            files=files)

    def history(self, repo_id: str, revision: str | None = None) -> list[CommitRecord]:
        with self._upstream_errors(repo_id, "the history"):
            commits = self._api.list_repo_commits(repo_id, revision=revision)
        return [CommitRecord(sha=c.commit_id, parent=None, message=c.title, description=c.message or "",
                             timestamp=c.created_at.timestamp()) for c in commits]

    def file_entry(self, repo_id: str, sha: str, path: str) -> FileEntry:
        entry = self.get_commit(repo_id, sha).files.get(validate_path(path))
        if entry is None:
            raise UnknownEntryError(f"{path!r} does not exist in {repo_id!r} at {sha}.")
        return entry

    def open_file(self, repo_id: str, sha: str, entry: FileEntry) -> Path:
        """The cached file of `entry`, downloaded from the upstream (and verified) the first time."""
        url = hf_hub_url(repo_id, entry.path, revision=sha, endpoint=self.upstream_url)
        with self._upstream_errors(repo_id, f"file {entry.path!r}"):
            return self.files.fetch(entry, url, build_hf_headers(token=self.token))

    # -- upstream metadata ------------------------------------------------------------------------
    def _fetch(self, repo_id: str, revision: str | None) -> tuple[str, RepoSettings]:
        """Ask the upstream for a revision's commit and the repo's flags; remember both."""
        state_path = self.files.repo_state_path(repo_id)
        try:
            with self._upstream_errors(repo_id, "the model info"):
                info = self._api.model_info(repo_id, revision=revision, files_metadata=True)
        except UnknownRepoError:
            with self._lock:
                self._missing[repo_id] = time.monotonic()
            raise
        except UpstreamError:
            state = read_json(state_path) if state_path.is_file() else {}
            sha = state.get("refs", {}).get(revision or "main")
            if sha is None or "settings" not in state:
                raise
            logger.warning("Upstream %s unreachable: serving %s@%s from the last known state", self.upstream_url,
                           repo_id, revision or "main")
            return sha, RepoSettings(**state["settings"])
        if not info.sha or not is_commit_sha(info.sha):
            raise UpstreamError(f"The upstream answered no commit sha for {repo_id!r}@{revision or 'main'}.")
        if not self.files.commit_path(repo_id, info.sha).is_file():
            self._save_commit(repo_id, info)
        settings = RepoSettings(private=bool(info.private), gated=bool(info.gated),
                                created=info.created_at.timestamp() if info.created_at else 0.0)
        now = time.monotonic()
        with self._lock:
            self._missing.pop(repo_id, None)
            self._settings[repo_id] = (now, settings)
            self._refs[(repo_id, revision or "main")] = (now, info.sha)
            state = read_json(state_path) if state_path.is_file() else {"refs": {}}
            state["settings"] = {"private": settings.private, "gated": settings.gated, "created": settings.created}
            state["refs"][revision or "main"] = info.sha
            state_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(state_path, state)
        return info.sha, settings

    def _save_commit(self, repo_id: str, info) -> None:
        files: dict[str, FileEntry] = {}
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            size = sibling.size if sibling.size is not None else (lfs.size if lfs else None)
            if size is None or not sibling.blob_id:
                raise UpstreamError(f"The upstream gave no size or blob id for {sibling.rfilename!r} of {repo_id!r}.")
            path = validate_path(sibling.rfilename)
            entry = FileEntry(path=path, size=int(size), oid=sibling.blob_id, sha256=lfs.sha256 if lfs else "")
            if entry.lfs and not entry.sha256:
                # Served as an LFS file here (weights or big), but stored in plain git upstream: its sha256 is
                # the ETag clients expect, so fetch it once now (checked against the git blob id).
                entry = FileEntry(path, entry.size, entry.oid, sha256_file(self.open_file(repo_id, info.sha, entry)))
            files[path] = entry
        timestamp = info.last_modified.timestamp() if info.last_modified else time.time()
        record = {"timestamp": timestamp, "files": {name: files[name].to_json() for name in sorted(files)}}
        path = self.files.commit_path(repo_id, info.sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)

    def _is_fresh(self, when: float | None) -> bool:
        return when is not None and time.monotonic() - when < self.ref_ttl

    @contextlib.contextmanager
    def _upstream_errors(self, repo_id: str, what: str) -> Iterator[None]:
        """Turn the upstream client's errors into store errors (and so into the matching Hub answers)."""
        try:
            yield
        except (UpstreamError, UnknownRepoError, UnknownRevisionError, UnknownEntryError):
            raise
        except GatedRepoError as err:
            raise UpstreamError(f"The upstream refused {what} of gated repo {repo_id!r}: its token has no access.") \
                from err
        except RepositoryNotFoundError as err:
            raise UnknownRepoError(f"Repository {repo_id!r} does not exist upstream.") from err
        except RevisionNotFoundError as err:
            raise UnknownRevisionError(f"Revision not found upstream for {repo_id!r}: {err}") from err
        except EntryNotFoundError as err:
            raise UnknownEntryError(f"Not found upstream in {repo_id!r}: {err}") from err
        except (HfHubHTTPError, OSError, httpx2.HTTPError) as err:
            raise UpstreamError(f"The upstream {self.upstream_url} did not give {what} of {repo_id!r}: {err}") from err
