"""Cache keys: what identifies one optimized model, and the validation that keeps ids inside the cache.

A key is built only from immutable ids (a Hub commit sha, a file's sha256): a branch name such as
`main` moves, so it is a pointer stored under `refs/` (see `pdo_hub.cache.refs`), never part of a key.
Every id that ends up in a folder name is validated here, because a crafted id (`../x`, `/etc`) would
otherwise let a download write outside the cache root.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from pdo_hub.core.errors import InvalidRepoIdError

#: Version of the cache entry format written by this pdo-hub. Bump it when the content of an entry
#: changes incompatibly: entries of another version live in other folders and are never mixed up.
CACHE_FORMAT_VERSION = 1

#: Where an original model comes from.
SOURCE_KINDS = ("huggingface", "torchvision", "local")

# The Hub's own limit for one part of a repo id (huggingface_hub's validate_repo_id allows 96).
MAX_ID_PART_LENGTH = 96
MAX_REF_LENGTH = 255

# One id part: the Hub's alphabet, starting and ending with a letter, digit or `_` so that `.`, `..`,
# `.hidden` and names ending in `-` or `.` can never appear.
_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_REF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# A config hash is at least as long as the prefix that goes into the entry's folder name.
_MIN_CONFIG_HASH = 16
_MAX_CONFIG_HASH = 128


def validate_source_kind(kind: str) -> str:
    """Check that `kind` is one of `SOURCE_KINDS`.

    Raises:
        InvalidRepoIdError: for any other value.
    """
    if kind not in SOURCE_KINDS:
        raise InvalidRepoIdError(f"Unknown source kind {kind!r}; use one of {list(SOURCE_KINDS)}.")
    return kind


def _check_part(value: str, part: str, what: str) -> None:
    if not part:
        raise InvalidRepoIdError(f"Invalid {what} {value!r}: empty part (no leading, trailing or double '/').")
    if len(part) > MAX_ID_PART_LENGTH:
        raise InvalidRepoIdError(
            f"Invalid {what} {value!r}: part {part[:20]!r}... is longer than {MAX_ID_PART_LENGTH} characters."
        )
    if not _PART.fullmatch(part):
        raise InvalidRepoIdError(
            f"Invalid {what} {value!r}: {part!r} must use only letters, digits, '.', '_', '-' and start and "
            "end with a letter, digit or '_'."
        )
    # `..` could climb out of a folder and `--` is the separator of the Hub-style folder names
    # (`models--org--name`), so the Hub forbids both; so do we.
    if ".." in part or "--" in part:
        raise InvalidRepoIdError(f"Invalid {what} {value!r}: '..' and '--' are not allowed.")


def validate_source_id(kind: str, source_id: str) -> str:
    """Check a source id: a Hub repo id (`name` or `org/name`), a torchvision weights name, a file name.

    Args:
        kind: One of `SOURCE_KINDS`.
        source_id: The id to check.

    Returns:
        `source_id` unchanged.

    Raises:
        InvalidRepoIdError: naming the bad value and the rule it breaks (also for anything that could
            escape the cache root: absolute paths, `..`, backslashes, NUL bytes).
    """
    validate_source_kind(kind)
    if not isinstance(source_id, str):
        raise InvalidRepoIdError(f"Invalid source id {source_id!r}: expected a string.")
    what = "repo id" if kind == "huggingface" else f"{kind} source id"
    if not source_id:
        raise InvalidRepoIdError(f"Invalid {what} {source_id!r}: it is empty.")
    parts = source_id.split("/")
    if kind == "huggingface":
        if len(parts) > 2:
            raise InvalidRepoIdError(f"Invalid repo id {source_id!r}: use 'name' or 'org/name' (at most one '/').")
    elif len(parts) > 1:
        raise InvalidRepoIdError(
            f"Invalid {what} {source_id!r}: use a single name without '/' (for a local file, its base name)."
        )
    for part in parts:
        _check_part(source_id, part, what)
    return source_id


def validate_revision(kind: str, revision: str) -> str:
    """Check that `revision` is immutable: a 40-hex Hub commit sha, or a 64-hex sha256 for files.

    Args:
        kind: One of `SOURCE_KINDS`: `huggingface` wants a commit sha; `torchvision` and `local` want the
            sha256 of the weights file.
        revision: Lowercase hex id (uppercase is accepted and lowered).

    Returns:
        The lowercase revision.

    Raises:
        InvalidRepoIdError: for a branch, tag or anything else that is not an immutable id.
    """
    validate_source_kind(kind)
    if not isinstance(revision, str):
        raise InvalidRepoIdError(f"Invalid revision {revision!r}: expected a string.")
    value = revision.lower()
    if kind == "huggingface":
        if not _SHA1.fullmatch(value):
            raise InvalidRepoIdError(
                f"Invalid revision {revision!r}: a cache key needs the 40-hex commit sha, not a branch or tag "
                "name. Resolve the branch first (the Hub, or OptimizedCache.resolve_ref offline)."
            )
    elif not _SHA256.fullmatch(value):
        raise InvalidRepoIdError(
            f"Invalid revision {revision!r} for a {kind} source: use the 64-hex sha256 of the weights file."
        )
    return value


def validate_config_hash(config_hash: str) -> str:
    """Check a config hash: lowercase hex, 16 to 128 characters (uppercase is lowered).

    Raises:
        InvalidRepoIdError: for anything else.
    """
    if not isinstance(config_hash, str):
        raise InvalidRepoIdError(f"Invalid config hash {config_hash!r}: expected a hex string.")
    value = config_hash.lower()
    if not (_MIN_CONFIG_HASH <= len(value) <= _MAX_CONFIG_HASH and _HEX.fullmatch(value)):
        raise InvalidRepoIdError(
            f"Invalid config hash {config_hash!r}: use the hex digest of the config "
            f"({_MIN_CONFIG_HASH} to {_MAX_CONFIG_HASH} hex characters)."
        )
    return value


def validate_ref_name(ref_name: str) -> str:
    """Check a ref name (`main`, `v1.0`, `refs/pr/1`): parts of safe characters separated by `/`.

    Raises:
        InvalidRepoIdError: for empty parts, `.`/`..`, hidden parts, a `.lock` suffix, a leading `/` or
            any other character that could escape the `refs/` folder.
    """
    if not isinstance(ref_name, str) or not ref_name:
        raise InvalidRepoIdError(f"Invalid ref name {ref_name!r}: expected a non-empty string like 'main'.")
    if len(ref_name) > MAX_REF_LENGTH:
        raise InvalidRepoIdError(f"Invalid ref name {ref_name[:40]!r}...: longer than {MAX_REF_LENGTH} characters.")
    for part in ref_name.split("/"):
        # Same rules as git: no empty or hidden components (this also rules out `.` and `..`), and no
        # `.lock` suffix, which git and filelock use for their own files.
        if not _REF_PART.fullmatch(part) or ".." in part or part.endswith(".lock"):
            raise InvalidRepoIdError(
                f"Invalid ref name {ref_name!r}: each '/'-separated part must be non-empty, use only letters, "
                "digits, '.', '_', '-', not start with '.' or '-', hold no '..' and not end with '.lock'."
            )
    return ref_name


@dataclass(frozen=True)
class CacheKey:
    """Identifies one optimized model in the cache. Validated on creation.

    Attributes:
        kind: Where the original comes from: `huggingface`, `torchvision` or `local`.
        source_id: Hub repo id (`org/name`), torchvision weights name, or local file base name.
        revision: Immutable id of the original (40-hex commit sha, or 64-hex sha256 of the file).
        config_hash: Hex digest of the optimization config.
        format_version: Cache entry format; defaults to `CACHE_FORMAT_VERSION`.

    Example:
        >>> CacheKey("huggingface", "org/model", "a" * 40, "0123456789abcdef" * 4)
    """

    kind: str
    source_id: str
    revision: str
    config_hash: str
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_source_id(self.kind, self.source_id)
        # Normalized to lowercase so that the same model always maps to the same folder.
        object.__setattr__(self, "revision", validate_revision(self.kind, self.revision))
        object.__setattr__(self, "config_hash", validate_config_hash(self.config_hash))
        # bool is an int subclass; True as a version is surely a mistake.
        if isinstance(self.format_version, bool) or not isinstance(self.format_version, int) or self.format_version < 1:
            raise InvalidRepoIdError(f"Invalid format version {self.format_version!r}: use a positive integer.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (stored in the manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheKey:
        """Rebuild a key from `to_dict()` output, validating every field.

        Raises:
            InvalidRepoIdError: when a field is missing or invalid.
        """
        try:
            return cls(
                kind=data["kind"],
                source_id=data["source_id"],
                revision=data["revision"],
                config_hash=data["config_hash"],
                format_version=data["format_version"],
            )
        except (KeyError, TypeError) as err:
            raise InvalidRepoIdError(f"Invalid cache key record {data!r}: missing or malformed field ({err}).") from err
