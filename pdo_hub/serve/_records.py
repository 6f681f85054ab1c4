"""Validation and the plain records of the repo store (ids, paths, file entries, commits, refs).

Kept apart from `repo_store` so the HTTP layer can import the checks and records without the
storage code, and so each module stays about one idea.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from pdo_hub.cache.keys import MAX_ID_PART_LENGTH
from pdo_hub.core.errors import InvalidRepoIdError, PdoHubError

#: Files at least this large are stored and announced as LFS files, as the Hub does for big files.
LFS_MIN_SIZE = 10 * 1024 * 1024
#: Weight formats that the Hub's default `.gitattributes` routes through LFS whatever their size.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".ckpt", ".gguf", ".msgpack")

# `\Z`, not `$`: `$` also matches before a final newline, which let "org/name\n" and "main\n" through.
_NAME_PART = re.compile(r"^[A-Za-z0-9._-]+\Z")
_SHA1_HEX = re.compile(r"^[0-9a-f]{40}\Z")
_PR_REF = re.compile(r"^refs/pr/([1-9][0-9]*)\Z")
_REF_CHARS = re.compile(r"^[A-Za-z0-9._/-]+\Z")


class RepoStoreError(PdoHubError, LookupError):
    """Root of the repo store's lookup and conflict errors."""


class UnknownRepoError(RepoStoreError):
    """The repository does not exist in the store."""


class UnknownRevisionError(RepoStoreError):
    """The revision (branch, tag, pull-request ref or commit sha) does not exist in the repository."""


class UnknownEntryError(RepoStoreError):
    """The file or folder does not exist at the resolved commit."""


class RepoExistsError(RepoStoreError):
    """A repository with that id already exists."""


class StaleParentError(RepoStoreError):
    """A commit named a parent that is no longer the head of its branch (someone committed in between)."""


class ReadOnlyRepoError(RepoStoreError):
    """The repository (or the whole store) accepts no writes: it is served from a read-only source."""


class UpstreamError(PdoHubError, ConnectionError):
    """A pass-through store could not get an answer (or the promised bytes) from its upstream Hub."""


def validate_repo_id(repo_id: object) -> str:
    """Check a repository id: `name` or `org/name`, each part made of `[A-Za-z0-9._-]`.

    Args:
        repo_id: The id to check.

    Returns:
        The id, unchanged.

    Raises:
        InvalidRepoIdError: The id is not a string, has more than one `/`, an empty part, a `..`,
            a part starting or ending with `.` or `-`, or a character outside `[A-Za-z0-9._-]`.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoIdError(f"Repository id must be a non-empty string like 'org/name', got {repo_id!r}.")
    parts = repo_id.split("/")
    if len(parts) > 2:
        raise InvalidRepoIdError(f"Repository id {repo_id!r} has more than one '/': use 'name' or 'org/name'.")
    for part in parts:
        if not part:
            raise InvalidRepoIdError(f"Repository id {repo_id!r} has an empty part (leading, trailing or double '/').")
        if ".." in part:
            raise InvalidRepoIdError(f"Repository id {repo_id!r} contains '..', which is not allowed.")
        if len(part) > MAX_ID_PART_LENGTH:  # the Hub's limit; a longer part is no folder name the disk accepts
            raise InvalidRepoIdError(f"Repository id part {part[:20]!r}... is longer than {MAX_ID_PART_LENGTH} characters.")
        if not _NAME_PART.match(part):
            raise InvalidRepoIdError(
                f"Repository id {repo_id!r} contains a character outside [A-Za-z0-9._-] in {part!r}."
            )
        if part[0] in ".-" or part[-1] in ".-":
            raise InvalidRepoIdError(f"Repository id part {part!r} of {repo_id!r} must not start or end with '.' or '-'.")
    return repo_id


def validate_path(path: object) -> str:
    """Check a file path inside a repository: relative, `/`-separated, no `..`, no backslash.

    Args:
        path: The path to check, e.g. `"1_Pooling/config.json"`.

    Returns:
        The path, unchanged.

    Raises:
        InvalidRepoIdError: The path is empty, absolute, not encodable as UTF-8, contains a backslash, a NUL, an
            empty or `.`/`..` segment.
    """
    if not isinstance(path, str) or not path:
        raise InvalidRepoIdError(f"File path must be a non-empty string, got {path!r}.")
    if "\\" in path or "\x00" in path:
        raise InvalidRepoIdError(f"File path {path!r} must use '/' separators and contain no backslash or NUL.")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate from JSON: it cannot be hashed into a commit or stored
        raise InvalidRepoIdError(f"File path {path!r} is not valid Unicode text.") from err
    if path.startswith("/"):
        raise InvalidRepoIdError(f"File path {path!r} must be relative to the repository root, not absolute.")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidRepoIdError(f"File path {path!r} has an empty, '.' or '..' segment.")
    return path


def validate_ref_name(name: object, *, kind: str = "branch") -> str:
    """Check a branch or tag name given by a user (pull-request refs are made by the store itself).

    Raises:
        InvalidRepoIdError: The name is empty, uses characters outside `[A-Za-z0-9._/-]`, contains `..`,
            starts with `refs/` or `/`, ends with `/`, or looks like a commit sha (that would be ambiguous).
    """
    if not isinstance(name, str) or not name or not _REF_CHARS.match(name):
        raise InvalidRepoIdError(f"Invalid {kind} name {name!r}: use characters from [A-Za-z0-9._/-].")
    if ".." in name or name.startswith(("/", "refs/")) or name.endswith("/") or "//" in name:
        raise InvalidRepoIdError(f"Invalid {kind} name {name!r}: no '..', '//', leading 'refs/' or '/', trailing '/'.")
    if _SHA1_HEX.match(name):
        raise InvalidRepoIdError(f"Invalid {kind} name {name!r}: a 40-hex name would be mistaken for a commit sha.")
    return name


_NO_NAMESPACE = "@"  # not a valid org name, so `name` and `org/name` can never share a folder


def repo_folder(root: Path, repo_id: str) -> Path:
    """The folder of a repo under `root`: `<org>/<name>`, or `@/<name>` for a repo without namespace.

    Raises:
        InvalidRepoIdError: The id is not valid (so it can never escape `root`).
    """
    namespace, _, name = validate_repo_id(repo_id).rpartition("/")
    return root / (namespace or _NO_NAMESPACE) / name


def repo_id_of_folder(namespace: str, name: str) -> str:
    """The inverse of `repo_folder` for the last two parts of a folder path."""
    return name if namespace == _NO_NAMESPACE else f"{namespace}/{name}"


def is_commit_sha(revision: str) -> bool:
    """True for exactly 40 lowercase hex characters, which clients treat as an immutable commit."""
    return bool(_SHA1_HEX.match(revision))


def pr_number(ref: str) -> int | None:
    """The N of a `refs/pr/N` ref, or None for any other name."""
    match = _PR_REF.match(ref)
    return int(match.group(1)) if match else None


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store this file through LFS (big, or a weight format)."""
    return size >= LFS_MIN_SIZE or path.lower().endswith(LFS_SUFFIXES)


def git_blob_sha1_header(size: int) -> bytes:
    """The header git puts before a blob's content when hashing it."""
    return b"blob %d\x00" % size


def iso_z(timestamp: float) -> str:
    """A UTC timestamp as the Hub writes it (`2024-01-01T00:00:00.000Z`); clients reject `+00:00`."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit.

    Attributes:
        path: Path inside the repository (`/`-separated).
        size: Size in bytes.
        oid: Git blob sha1 of the content (the Hub's `oid`/`blobId`).
        sha256: sha256 of the content; names the stored blob and is the ETag of LFS files. A
            pass-through store may leave it empty ("unknown") for files that are not LFS files,
            which need only `oid`.
    """

    path: str
    size: int
    oid: str
    sha256: str

    @property
    def lfs(self) -> bool:
        """Whether the file is announced as an LFS file."""
        return is_lfs(self.path, self.size)

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.oid

    def to_json(self) -> dict:
        return {"size": self.size, "oid": self.oid, "sha256": self.sha256}

    @classmethod
    def from_json(cls, path: str, data: dict) -> FileEntry:
        return cls(path=path, size=int(data["size"]), oid=str(data["oid"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class CommitRecord:
    """One commit: its parent, message, time and full file list (a snapshot, not a diff)."""

    sha: str
    parent: str | None
    message: str
    description: str
    timestamp: float
    files: dict[str, FileEntry] = field(default_factory=dict)

    @property
    def last_modified(self) -> str:
        return iso_z(self.timestamp)

    def directories(self) -> set[str]:
        """Every folder that holds at least one file, at any depth."""
        folders: set[str] = set()
        for path in self.files:
            folders.update(str(parent) for parent in PurePosixPath(path).parents if str(parent) != ".")
        return folders


@dataclass(frozen=True)
class RepoSettings:
    """Access settings of a repository: private (hidden without a token) and gated (files need a token)."""

    private: bool = False
    gated: bool = False
    created: float = 0.0


@dataclass(frozen=True)
class RepoRefs:
    """Named pointers of a repository. Pull-request refs (`refs/pr/N`) are listed apart from branches."""

    branches: dict[str, str]
    tags: dict[str, str]
    pull_requests: dict[str, str]


def commit_sha(parent: str | None, message: str, description: str, files: dict[str, FileEntry]) -> str:
    """A deterministic commit id from the parent, the message and the content (git-like, not git-exact)."""
    digest = hashlib.sha1()
    digest.update(f"parent {parent or ''}\n".encode())
    for path in sorted(files):
        digest.update(f"file {files[path].sha256} {path}\n".encode())
    digest.update(f"\n{message}\n\n{description}".encode())
    return digest.hexdigest()
