"""A local folder of model repositories with commits, branches and tags, without git.

Layout under the root::

    blobs/<sha256[:2]>/<sha256>          file contents, content-addressed, shared by all repos
    repos/<org or @>/<name>/settings.json private/gated flags
    repos/<org or @>/<name>/refs.json     {"branches": {...}, "tags": {...}}  (refs/pr/N are branches)
    repos/<org or @>/<name>/commits/<sha>.json   one full file list per commit

Every file is written to a unique temporary name then renamed into place, so a reader never sees a
half-written blob, commit or ref. Writers hold a thread lock and a file lock so that two commits to
one branch (from two request threads or two processes) cannot both win.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from filelock import FileLock

from pdo_hub.serve._files import BothLocks, FileSource, as_mapping, chunks, read_json, write_json
from pdo_hub.serve._records import (
    CommitRecord,
    FileEntry,
    RepoExistsError,
    RepoRefs,
    RepoSettings,
    StaleParentError,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    commit_sha,
    git_blob_sha1_header,
    is_commit_sha,
    pr_number,
    repo_folder,
    repo_id_of_folder,
    validate_path,
    validate_ref_name,
)

logger = logging.getLogger(__name__)


class RepoStore:
    """Model repositories kept in a local folder.

    Args:
        root: Folder holding the store; created if missing.

    Example:
        ```python
        >>> store = RepoStore("/tmp/hub")
        >>> sha = store.publish("org/tiny", {"config.json": b"{}"})
        >>> store.resolve("org/tiny") == sha
        True
        ```
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.RLock()
        self._file_lock = FileLock(str(self.root / ".write.lock"))

    # -- repositories ---------------------------------------------------------------------------
    def exists(self, repo_id: str) -> bool:
        """Whether the repository exists."""
        return (self._repo_dir(repo_id) / "refs.json").is_file()

    def list_repos(self) -> list[str]:
        """Every repository id in the store, sorted."""
        ids = []
        for refs in (self.root / "repos").glob("*/*/refs.json"):
            namespace, name = refs.parent.parent.name, refs.parent.name
            ids.append(repo_id_of_folder(namespace, name))
        return sorted(ids)

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False, exist_ok: bool = False) -> str:
        """Create a repository whose `main` branch holds one empty commit (the Hub starts repos non-empty too).

        Returns:
            The sha of `main`.

        Raises:
            RepoExistsError: The repository exists and `exist_ok` is False.
            InvalidRepoIdError: The id is not valid.
        """
        with self._write_lock():
            if self.exists(repo_id):
                if not exist_ok:
                    raise RepoExistsError(f"Repository {repo_id!r} already exists.")
                return self.resolve(repo_id)
            repo_dir = self._repo_dir(repo_id)
            (repo_dir / "commits").mkdir(parents=True, exist_ok=True)
            settings = {"private": bool(private), "gated": bool(gated), "created": time.time()}
            write_json(repo_dir / "settings.json", settings)
            sha = self._write_commit(repo_id, None, {}, "initial commit", "")
            write_json(repo_dir / "refs.json", {"branches": {"main": sha}, "tags": {}})
            logger.info("Created repo %s at %s", repo_id, sha)
            return sha

    def settings(self, repo_id: str) -> RepoSettings:
        """Access settings of a repository.

        Raises:
            UnknownRepoError: The repository does not exist.
        """
        data = read_json(self._existing_repo_dir(repo_id) / "settings.json")
        return RepoSettings(private=bool(data.get("private")), gated=bool(data.get("gated")),
                            created=float(data.get("created", 0.0)))

    def set_access(self, repo_id: str, *, private: bool | None = None, gated: bool | None = None) -> None:
        """Mark a repository private (hidden without a token) and/or gated (files need a token)."""
        with self._write_lock():
            path = self._existing_repo_dir(repo_id) / "settings.json"
            data = read_json(path)
            if private is not None:
                data["private"] = bool(private)
            if gated is not None:
                data["gated"] = bool(gated)
            write_json(path, data)

    # -- writing commits ------------------------------------------------------------------------
    def publish(self, repo_id: str, files: FileSource, *, branch: str = "main", message: str = "Publish files",
                private: bool | None = None) -> str:
        """Make `branch` hold exactly `files` (a full snapshot), creating the repo and branch if needed.

        Args:
            repo_id: `name` or `org/name`.
            files: `{path: bytes or file Path}`, or a folder whose files (recursively) are published.
            branch: Branch to move; created from nothing if missing.
            message: Commit message.
            private: When given, also sets the repo's private flag.

        Returns:
            The commit sha `branch` points to. Publishing the same files again returns the current
            head without a new commit, so repeated mirroring is idempotent.
        """
        entries = self._store_files(as_mapping(files))
        with self._write_lock():
            if not self.exists(repo_id):
                self.create_repo(repo_id, private=bool(private))
            elif private is not None:
                self.set_access(repo_id, private=private)
            return self._commit_entries(repo_id, branch, entries, message, "", parent_commit=None)

    def commit(self, repo_id: str, *, branch: str = "main", add: Mapping[str, bytes | Path] | None = None,
               delete: Iterable[str] = (), delete_folders: Iterable[str] = (), message: str = "Update files",
               description: str = "", parent_commit: str | None = None) -> str:
        """Change some files of `branch` (the others stay) and move the branch to the new commit.

        Raises:
            UnknownRepoError / UnknownRevisionError: The repo or branch does not exist.
            UnknownEntryError: A file to delete does not exist.
            StaleParentError: `parent_commit` is given and is not the branch head anymore.
        """
        added = self._store_files(add or {})
        with self._write_lock():
            head = self._branch_head(repo_id, branch)
            files = dict(self.get_commit(repo_id, head).files)
            for path in delete:
                if files.pop(validate_path(path), None) is None:
                    raise UnknownEntryError(f"Cannot delete {path!r}: a file with this name doesn't exist.")
            for folder in delete_folders:
                prefix = validate_path(folder.rstrip("/")) + "/"
                files = {path: entry for path, entry in files.items() if not path.startswith(prefix)}
            files.update(added)
            return self._commit_entries(repo_id, branch, files, message, description, parent_commit)

    def create_branch(self, repo_id: str, branch: str, revision: str | None = None, *, exist_ok: bool = False) -> str:
        """Create `branch` at `revision` (default: `main`) and return its sha."""
        return self._set_ref(repo_id, "branches", validate_ref_name(branch), revision, exist_ok)

    def create_tag(self, repo_id: str, tag: str, revision: str | None = None, *, exist_ok: bool = False) -> str:
        """Create `tag` at `revision` (default: `main`) and return its sha."""
        return self._set_ref(repo_id, "tags", validate_ref_name(tag, kind="tag"), revision, exist_ok)

    def open_pull_request(self, repo_id: str, revision: str | None = None) -> str:
        """Create the next `refs/pr/N` ref at `revision` (default: `main`) and return its name."""
        with self._write_lock():
            refs = self.refs(repo_id)
            number = 1 + max((pr_number(name) or 0 for name in refs.pull_requests), default=0)
            name = f"refs/pr/{number}"
            self._set_ref(repo_id, "branches", name, revision, False)
            return name

    # -- reading --------------------------------------------------------------------------------
    def refs(self, repo_id: str) -> RepoRefs:
        """Branches, tags and pull-request refs of a repository."""
        data = read_json(self._existing_repo_dir(repo_id) / "refs.json")
        branches = {k: v for k, v in data["branches"].items() if pr_number(k) is None}
        pulls = {k: v for k, v in data["branches"].items() if pr_number(k) is not None}
        return RepoRefs(branches=branches, tags=dict(data["tags"]), pull_requests=pulls)

    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """Turn a revision into a commit sha.

        Args:
            revision: None (= `main`), a 40-hex commit sha, a branch, a tag, `refs/heads/X`, `refs/tags/X`
                or `refs/pr/N`.

        Raises:
            UnknownRepoError: The repository does not exist.
            UnknownRevisionError: Nothing of that name exists in the repository.
        """
        repo_dir = self._existing_repo_dir(repo_id)
        revision = "main" if revision is None else revision
        if is_commit_sha(revision):
            if (repo_dir / "commits" / f"{revision}.json").is_file():
                return revision
            raise UnknownRevisionError(f"Commit {revision} does not exist in {repo_id!r}.")
        data = read_json(repo_dir / "refs.json")
        if revision.startswith("refs/heads/"):
            found = data["branches"].get(revision[len("refs/heads/"):])
        elif revision.startswith("refs/tags/"):
            found = data["tags"].get(revision[len("refs/tags/"):])
        else:
            found = data["branches"].get(revision) or data["tags"].get(revision)
        if found is None:
            raise UnknownRevisionError(f"Revision {revision!r} does not exist in {repo_id!r}.")
        return found

    def get_commit(self, repo_id: str, sha: str) -> CommitRecord:
        """The commit record `sha` of a repository (use `resolve` first for names)."""
        path = self._existing_repo_dir(repo_id) / "commits" / f"{sha}.json"
        if not is_commit_sha(sha) or not path.is_file():
            raise UnknownRevisionError(f"Commit {sha!r} does not exist in {repo_id!r}.")
        data = read_json(path)
        files = {name: FileEntry.from_json(name, meta) for name, meta in data["files"].items()}
        return CommitRecord(sha=sha, parent=data["parent"], message=data["message"],
                            description=data.get("description", ""), timestamp=float(data["timestamp"]), files=files)

    def history(self, repo_id: str, revision: str | None = None) -> list[CommitRecord]:
        """The commits reachable from a revision, newest first (the first one is the revision itself)."""
        records, sha = [], self.resolve(repo_id, revision)
        while sha is not None:
            record = self.get_commit(repo_id, sha)
            records.append(record)
            sha = record.parent
        return records

    def list_files(self, repo_id: str, sha: str) -> list[FileEntry]:
        """Every file of a commit, sorted by path."""
        files = self.get_commit(repo_id, sha).files
        return [files[path] for path in sorted(files)]

    def file_entry(self, repo_id: str, sha: str, path: str) -> FileEntry:
        """One file of a commit.

        Raises:
            InvalidRepoIdError: The path is not a valid relative path.
            UnknownEntryError: The commit has no such file.
        """
        entry = self.get_commit(repo_id, sha).files.get(validate_path(path))
        if entry is None:
            raise UnknownEntryError(f"{path!r} does not exist in {repo_id!r} at {sha}.")
        return entry

    def open_file(self, repo_id: str, sha: str, entry: FileEntry) -> Path:
        """The stored file holding `entry`'s content (blobs are shared by every repo and commit)."""
        return self.blob_path(entry.sha256)

    def blob_path(self, sha256: str) -> Path:
        """Where the content with this sha256 is (or would be) stored."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"Not a sha256 hex digest: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        """Whether content with this sha256 is stored."""
        return self.blob_path(sha256).is_file()

    def read_bytes(self, repo_id: str, path: str, revision: str | None = None) -> bytes:
        """The content of one file at a revision (convenience for tests and small files)."""
        entry = self.file_entry(repo_id, self.resolve(repo_id, revision), path)
        return self.blob_path(entry.sha256).read_bytes()

    # -- internals ------------------------------------------------------------------------------
    def _repo_dir(self, repo_id: str) -> Path:
        return repo_folder(self.root / "repos", repo_id)

    def _existing_repo_dir(self, repo_id: str) -> Path:
        repo_dir = self._repo_dir(repo_id)
        if not (repo_dir / "refs.json").is_file():
            raise UnknownRepoError(f"Repository {repo_id!r} does not exist.")
        return repo_dir

    def _write_lock(self):
        return BothLocks(self._thread_lock, self._file_lock)

    def _branch_head(self, repo_id: str, branch: str) -> str:
        head = read_json(self._existing_repo_dir(repo_id) / "refs.json")["branches"].get(branch)
        if head is None:
            raise UnknownRevisionError(f"Branch {branch!r} does not exist in {repo_id!r}.")
        return head

    def _commit_entries(self, repo_id: str, branch: str, files: dict[str, FileEntry], message: str,
                        description: str, parent_commit: str | None) -> str:
        refs_path = self._existing_repo_dir(repo_id) / "refs.json"
        refs = read_json(refs_path)
        if pr_number(branch) is None and branch not in refs["branches"]:
            validate_ref_name(branch)
        head = refs["branches"].get(branch)
        if parent_commit is not None and parent_commit != head:
            raise StaleParentError(f"Branch {branch!r} of {repo_id!r} is at {head}, not at parent {parent_commit}.")
        if head is not None and self.get_commit(repo_id, head).files == files:
            return head  # nothing changed: no empty commit (the Hub client skips those too)
        sha = self._write_commit(repo_id, head, files, message, description)
        refs["branches"][branch] = sha
        write_json(refs_path, refs)
        logger.info("Committed %s to %s@%s (%d files)", sha, repo_id, branch, len(files))
        return sha

    def _write_commit(self, repo_id: str, parent: str | None, files: dict[str, FileEntry], message: str,
                      description: str) -> str:
        sha = commit_sha(parent, message, description, files)
        path = self._repo_dir(repo_id) / "commits" / f"{sha}.json"
        if not path.is_file():  # same parent + content + message = same commit: keep its first timestamp
            record = {"parent": parent, "message": message, "description": description, "timestamp": time.time(),
                      "files": {name: files[name].to_json() for name in sorted(files)}}
            write_json(path, record)
        return sha

    def _set_ref(self, repo_id: str, kind: str, name: str, revision: str | None, exist_ok: bool) -> str:
        with self._write_lock():
            sha = self.resolve(repo_id, revision)
            refs_path = self._existing_repo_dir(repo_id) / "refs.json"
            refs = read_json(refs_path)
            if name in refs[kind] and not exist_ok:
                raise RepoExistsError(f"{kind[:-1].capitalize()} {name!r} already exists in {repo_id!r}.")
            refs[kind][name] = sha
            write_json(refs_path, refs)
            return sha

    def _store_files(self, files: Mapping[str, bytes | Path]) -> dict[str, FileEntry]:
        return {validate_path(path): self._store_blob(path, source) for path, source in files.items()}

    def _store_blob(self, path: str, source: bytes | Path) -> FileEntry:
        """Hash content (sha256 + git sha1) while copying it to a temp file, then rename it into the blob store."""
        size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
        sha256, sha1 = hashlib.sha256(), hashlib.sha1(git_blob_sha1_header(size))
        fd, tmp = tempfile.mkstemp(dir=self.root / "blobs", prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks(source):
                    sha256.update(chunk)
                    sha1.update(chunk)
                    out.write(chunk)
            target = self.blob_path(sha256.hexdigest())
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return FileEntry(path=path, size=size, oid=sha1.hexdigest(), sha256=sha256.hexdigest())
