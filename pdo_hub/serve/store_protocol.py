"""What the Hub-compatible app needs from a store: a read protocol, and a write protocol on top of it.

The app (`hub_app`, `_payloads`, `_uploads`) calls only these methods, so any object implementing
`ReadableRepoStore` can be served: the pushed repos of a `RepoStore`, a view of the optimized cache,
an `UpstreamStore` that passes another Hub through, or a `StoreChain` of several of them. Writes
(create repo, commit) are offered only when the store also implements `WritableRepoStore`.

Errors are the store errors of `pdo_hub.serve` (`UnknownRepoError`, `UnknownRevisionError`,
`UnknownEntryError`, `RepoExistsError`, `StaleParentError`, `ReadOnlyRepoError`); the app turns
each into its Hub answer (404 RepoNotFound, 404 RevisionNotFound, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from pdo_hub.serve._records import CommitRecord, FileEntry, RepoRefs, RepoSettings


@runtime_checkable
class ReadableRepoStore(Protocol):
    """The read side of a store of model repos.

    Commit shas are immutable: `get_commit(repo_id, sha)` must always answer the same files for
    one sha, because clients cache by sha. Branch and tag names may move.
    """

    def exists(self, repo_id: str) -> bool:
        """Whether the repository exists (cheap: called to route ambiguous paths and by `StoreChain`)."""

    def list_repos(self) -> list[str]:
        """The repository ids this store can list, sorted (a pass-through store may list only some)."""

    def settings(self, repo_id: str) -> RepoSettings:
        """Private / gated flags. Raises `UnknownRepoError` for a missing repo."""

    def refs(self, repo_id: str) -> RepoRefs:
        """Branches, tags and `refs/pr/N` refs. Raises `UnknownRepoError`."""

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """A revision (None = `main`, branch, tag, `refs/...`, 40-hex sha) as a commit sha.

        Raises `UnknownRepoError` or `UnknownRevisionError`.
        """

    def get_commit(self, repo_id: str, sha: str) -> CommitRecord:
        """The full file list of one commit. Raises `UnknownRevisionError` for an unknown sha."""

    def history(self, repo_id: str, revision: str | None = None) -> list[CommitRecord]:
        """Commits reachable from `revision`, newest first (their `files` may be left empty)."""

    def file_entry(self, repo_id: str, sha: str, path: str) -> FileEntry:
        """One file of a commit. Raises `UnknownEntryError` when the commit has no such file."""

    def open_file(self, repo_id: str, sha: str, entry: FileEntry) -> Path:
        """A local file holding exactly the content of `entry` (`entry.size` bytes).

        Called once per download, after `file_entry`; the store may fetch the content here.
        The app streams the file and never writes to it.
        """


@runtime_checkable
class WritableRepoStore(ReadableRepoStore, Protocol):
    """A store that also accepts pushes (`create_repo`, `upload_folder`, `create_commit`)."""

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False,
                    exist_ok: bool = False) -> str:
        """Create a repo whose `main` holds one empty commit; returns its sha. Raises `RepoExistsError`."""

    def commit(self, repo_id: str, *, branch: str = "main", add: Mapping[str, bytes | Path] | None = None,
               delete: Iterable[str] = (), delete_folders: Iterable[str] = (), message: str = "Update files",
               description: str = "", parent_commit: str | None = None) -> str:
        """Change files of `branch` and return the new head sha.

        `add` maps repo paths to bytes or to a local file to copy (the file may be deleted afterwards).
        Raises `UnknownEntryError` (deleting a missing file) or `StaleParentError`.
        """

    def open_pull_request(self, repo_id: str, revision: str | None = None) -> str:
        """Create the next `refs/pr/N` at `revision` and return its name."""

    def has_blob(self, sha256: str) -> bool:
        """Whether content with this sha256 is already stored (for `lfsFile` commit lines)."""

    def blob_path(self, sha256: str) -> Path:
        """The stored file of content `sha256` (valid when `has_blob` is True)."""


def is_writable(store: object) -> bool:
    """Whether the app may offer writes on `store` (it implements every `WritableRepoStore` method)."""
    return isinstance(store, WritableRepoStore)
