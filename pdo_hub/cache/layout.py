"""Where things live under the cache root.

The layout follows the Hugging Face Hub client cache where that costs nothing, so the tools people
already know (and `refs/` resolution) read the same way::

    <root>/
        CACHEDIR.TAG                      marks the folder as a cache for backup tools (like the Hub's)
        models--{org}--{name}/            a Hub repo (`models--{name}` without an org)
        torchvision--{weights name}/
        local--{file name}/
            refs/{ref name}               holds an immutable revision (`refs/refs/pr/1` for `refs/pr/1`)
            entries/{revision}--{config_hash[:16]}--v{format}/
                pdo_manifest.json         size and sha256 of every file of the entry
                .pdo_access               its modification time is the last access (for eviction)
                .pdo_verified             identities of the files already checked against the manifest
                model.safetensors, ...
        .locks/{repo folder}/{entry}.lock per-key file locks (only avoid duplicate work)
        .locks/{repo folder}/{entry}.lock.holder  pid, host and start time of the current holder
        .tmp/                             unique temp folders, renamed into place when complete
        .trash/                           entries being deleted (renamed out first, so removal is atomic)
        .quarantine/{repo folder}/{entry}.{id}  damaged entries set aside (by a load that rebuilds them, or by
                                          `pdo-hub cache verify --quarantine`), kept for inspection

Every name is built from validated ids (`pdo_hub.cache.keys`), so nothing here can point outside the
root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pdo_hub.cache.keys import CacheKey, validate_ref_name, validate_source_id
from pdo_hub.core.errors import InvalidRepoIdError

ENTRIES_DIR = "entries"
REFS_DIR = "refs"
LOCKS_DIR = ".locks"
TMP_DIR = ".tmp"
TRASH_DIR = ".trash"
QUARANTINE_DIR = ".quarantine"
ACCESS_STAMP = ".pdo_access"
VERIFIED_STAMP = ".pdo_verified"
HOLDER_SUFFIX = ".holder"
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_TAG_CONTENT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by pdo-hub.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)

# Folder prefix per source kind: `models` is what the Hub client uses for model repos.
_KIND_PREFIX = {"huggingface": "models", "torchvision": "torchvision", "local": "local"}
# How many characters of the config hash go into a folder name; the manifest keeps the full hash
# and a lookup compares it, so a prefix collision is a miss, never a wrong model.
CONFIG_HASH_PREFIX = 16


def repo_folder_name(kind: str, source_id: str) -> str:
    """Folder name of a source: `models--org--name`, `torchvision--{name}` or `local--{name}`.

    Raises:
        InvalidRepoIdError: when `kind` or `source_id` is not valid.
    """
    validate_source_id(kind, source_id)
    return "--".join([_KIND_PREFIX[kind], *source_id.split("/")])


def parse_repo_folder(name: str) -> tuple[str, str] | None:
    """`models--org--name` -> (`huggingface`, `org/name`); None for a name no source maps to."""
    prefix, _, rest = name.partition("--")
    kinds = {folder_prefix: kind for kind, folder_prefix in _KIND_PREFIX.items()}
    if prefix not in kinds or not rest:
        return None
    kind, source_id = kinds[prefix], rest.replace("--", "/")
    try:
        validate_source_id(kind, source_id)
    except InvalidRepoIdError:
        return None
    return kind, source_id


def entry_folders(root: Path) -> Iterator[Path]:
    """Every folder under `root/*/entries/`, complete or not (hidden top-level folders skipped)."""
    for repo in sorted(children(root)):
        if not repo.name.startswith(".") and repo.is_dir():
            yield from sorted(children(repo / ENTRIES_DIR))


def children(folder: Path) -> list[Path]:
    """Entries of `folder`, or none when it does not exist."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def entry_folder_name(key: CacheKey) -> str:
    """Folder name of one entry: `{revision}--{config_hash[:16]}--v{format_version}`."""
    return f"{key.revision}--{key.config_hash[:CONFIG_HASH_PREFIX]}--v{key.format_version}"


def repo_dir(root: Path, kind: str, source_id: str) -> Path:
    """Folder of one source under `root`."""
    return root / repo_folder_name(kind, source_id)


def entry_dir(root: Path, key: CacheKey) -> Path:
    """Folder of one entry under `root`."""
    return repo_dir(root, key.kind, key.source_id) / ENTRIES_DIR / entry_folder_name(key)


def ref_path(root: Path, kind: str, source_id: str, ref_name: str) -> Path:
    """File holding the revision a ref points to (`refs/pr/1` is a nested path, as in the Hub cache).

    Raises:
        InvalidRepoIdError: when the source or the ref name is not valid.
    """
    validate_ref_name(ref_name)
    return repo_dir(root, kind, source_id) / REFS_DIR / Path(*ref_name.split("/"))


def lock_path(root: Path, key: CacheKey) -> Path:
    """Lock file of one key (kept out of the entry folder, which appears only when complete)."""
    return root / LOCKS_DIR / repo_folder_name(key.kind, key.source_id) / f"{entry_folder_name(key)}.lock"


def holder_path(lock: Path) -> Path:
    """The side file naming the process that holds `lock` (written by the holder after acquiring it)."""
    return lock.with_name(lock.name + HOLDER_SUFFIX)
