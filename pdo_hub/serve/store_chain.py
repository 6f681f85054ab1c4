"""`StoreChain`: several stores served as one, each repo answered by the first store that has it.

`pdo-hub serve` uses it to serve pushed repos (a `RepoStore`), the optimized cache and an upstream
pass-through behind one endpoint. Writes go to one designated writable store only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pdo_hub.core.errors import ConfigError
from pdo_hub.serve._records import (
    CommitRecord,
    FileEntry,
    ReadOnlyRepoError,
    RepoExistsError,
    RepoRefs,
    RepoSettings,
    UnknownRepoError,
)
from pdo_hub.serve.store_protocol import ReadableRepoStore, WritableRepoStore, is_writable

logger = logging.getLogger(__name__)


class StoreChain:
    """Read stores consulted in order; the first that `exists(repo_id)` answers everything about that repo.

    A repo is never mixed from two stores: its refs, commits and files all come from the same one,
    so a commit sha always means the same files.

    Args:
        stores: Read stores, in priority order (e.g. pushed repos, then the cache view, then upstream).
        writable: Where `create_repo` and commits go. When it is not one of `stores` it is consulted
            first, so a pushed repo shadows the others. None makes the chain read-only.

    Raises:
        ConfigError: No store given, a store that does not implement `ReadableRepoStore`, or a
            `writable` store that does not implement `WritableRepoStore`.

    Example:
        ```python
        >>> chain = StoreChain([cache_view, UpstreamStore("https://huggingface.co", "/tmp/up")],
        ...                    writable=RepoStore("/tmp/pushed"))
        >>> HubServer(chain, tokens=load_token_file("tokens.toml")).serve_forever()
        ```
    """

    def __init__(self, stores: Sequence[ReadableRepoStore], writable: WritableRepoStore | None = None) -> None:
        ordered = list(stores)
        if writable is not None:
            if not is_writable(writable):
                raise ConfigError(f"The writable store {type(writable).__name__} does not implement WritableRepoStore.")
            if not any(store is writable for store in ordered):
                ordered.insert(0, writable)
        if not ordered:
            raise ConfigError("StoreChain needs at least one store.")
        for store in ordered:
            if not isinstance(store, ReadableRepoStore):
                raise ConfigError(f"{type(store).__name__} does not implement ReadableRepoStore.")
        self.stores: tuple[ReadableRepoStore, ...] = tuple(ordered)
        self.writable = writable

    def store_for(self, repo_id: str) -> ReadableRepoStore:
        """The store that serves `repo_id`.

        Raises:
            UnknownRepoError: No store has it.
        """
        for store in self.stores:
            if store.exists(repo_id):
                return store
        raise UnknownRepoError(f"Repository {repo_id!r} does not exist.")

    # -- reads: delegated to the store that has the repo -----------------------------------------
    def exists(self, repo_id: str) -> bool:
        return any(store.exists(repo_id) for store in self.stores)

    def list_repos(self) -> list[str]:
        return sorted({repo_id for store in self.stores for repo_id in store.list_repos()})

    def settings(self, repo_id: str) -> RepoSettings:
        return self.store_for(repo_id).settings(repo_id)

    def refs(self, repo_id: str) -> RepoRefs:
        return self.store_for(repo_id).refs(repo_id)

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        return self.store_for(repo_id).resolve(repo_id, revision)

    def get_commit(self, repo_id: str, sha: str) -> CommitRecord:
        return self.store_for(repo_id).get_commit(repo_id, sha)

    def history(self, repo_id: str, revision: str | None = None) -> list[CommitRecord]:
        return self.store_for(repo_id).history(repo_id, revision)

    def file_entry(self, repo_id: str, sha: str, path: str) -> FileEntry:
        return self.store_for(repo_id).file_entry(repo_id, sha, path)

    def open_file(self, repo_id: str, sha: str, entry: FileEntry) -> Path:
        return self.store_for(repo_id).open_file(repo_id, sha, entry)

    # -- writes: only to the writable store, only for repos it holds -------------------------------
    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False,
                    exist_ok: bool = False) -> str:
        """Create the repo in the writable store; an id that any store of the chain serves already exists."""
        writable = self._writable_for(repo_id, creating=True)
        if writable.exists(repo_id) or not self.exists(repo_id):
            return writable.create_repo(repo_id, private=private, gated=gated, exist_ok=exist_ok)
        if exist_ok:
            return self.resolve(repo_id)
        raise RepoExistsError(f"Repository {repo_id!r} already exists (served read-only by this server).")

    def commit(self, repo_id: str, *, branch: str = "main", add: Mapping[str, bytes | Path] | None = None,
               delete: Iterable[str] = (), delete_folders: Iterable[str] = (), message: str = "Update files",
               description: str = "", parent_commit: str | None = None) -> str:
        return self._writable_for(repo_id).commit(
            repo_id, branch=branch, add=add, delete=delete, delete_folders=delete_folders, message=message,
            description=description, parent_commit=parent_commit)

    def open_pull_request(self, repo_id: str, revision: str | None = None) -> str:
        return self._writable_for(repo_id).open_pull_request(repo_id, revision)

    def has_blob(self, sha256: str) -> bool:
        return self.writable is not None and self.writable.has_blob(sha256)

    def blob_path(self, sha256: str) -> Path:
        if self.writable is None:
            raise ReadOnlyRepoError("This server's stores are read-only.")
        return self.writable.blob_path(sha256)

    def _writable_for(self, repo_id: str, *, creating: bool = False) -> WritableRepoStore:
        if self.writable is None:
            raise ReadOnlyRepoError("This server's stores are read-only: pushes are not accepted.")
        if not creating and self.store_for(repo_id) is not self.writable:
            raise ReadOnlyRepoError(f"Repository {repo_id!r} is served read-only (mirrored or cached): push to a "
                                    "repo of your own instead.")
        return self.writable
