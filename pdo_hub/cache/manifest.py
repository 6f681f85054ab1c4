"""The manifest of a cache entry: the key, when it was made, and the size and sha256 of every file.

The manifest is what makes an entry trustworthy: it is written last, inside the temp folder, and a
lookup checks every file against it (re-hashing the ones changed since their last check, see
`pdo_hub.cache._verified`), so a truncated or edited file is noticed instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from pdo_hub.cache._verified import Identity, identity, settled
from pdo_hub.cache.keys import CACHE_FORMAT_VERSION, CacheKey
from pdo_hub.cache.layout import ACCESS_STAMP, VERIFIED_STAMP
from pdo_hub.core.errors import CacheError

MANIFEST_NAME = "pdo_manifest.json"
# Files that belong to the cache machinery, not to the entry: a writer may not create them and they
# are not listed in the manifest.
RESERVED_NAMES = frozenset({MANIFEST_NAME, ACCESS_STAMP, VERIFIED_STAMP})
_CHUNK = 1024 * 1024


class ManifestError(CacheError):
    """Internal: the manifest is missing, unreadable or inconsistent (the entry counts as damaged)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content, read in chunks so large weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_files(folder: Path) -> list[str]:
    """Relative POSIX names of the entry's files, sorted; rejects links and reserved names."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in dirnames + filenames:
            if (base / name).is_symlink():
                # A link could point anywhere (and change later): entries must hold their own bytes.
                raise CacheError(
                    f"The cache writer created a symbolic link {base / name}; write or copy real files instead."
                )
        for name in filenames:
            relative = (base / name).relative_to(folder).as_posix()
            if relative in RESERVED_NAMES:
                raise CacheError(f"The cache writer created {relative!r}, a name reserved for the cache; rename it.")
            names.append(relative)
    return sorted(names)


def build_manifest(folder: Path, key: CacheKey) -> dict[str, Any]:
    """Describe every file under `folder` (size and sha256) together with the key.

    Raises:
        CacheError: when the folder holds no file, a symbolic link or a reserved name.
    """
    names = _entry_files(folder)
    if not names:
        raise CacheError(f"The cache writer wrote no file into {folder}; an entry must hold the optimized model.")
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in names}
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "key": key.to_dict(),
        "created_at": time.time(),
        "files": files,
        "total_bytes": sum(item["size"] for item in files.values()),
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` into `folder` (a private temp folder, so no atomic dance is needed here)."""
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _safe_relative(name: Any) -> bool:
    # A tampered manifest must not make read_json or verification open files outside the entry.
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in path.parts)


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and structurally check the manifest of an entry.

    Raises:
        ManifestError: when it is missing, not JSON, or malformed.
    """
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ManifestError(f"cannot read {MANIFEST_NAME}: {err}") from err
    return check_manifest(manifest)


def check_manifest(manifest: Any) -> dict[str, Any]:
    """Structurally check a parsed manifest (from an entry folder or the shared tier); returns it.

    Raises:
        ManifestError: when it is malformed or names a file outside the entry.
    """
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST_NAME} is not a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ManifestError(f"{MANIFEST_NAME} has no integer format_version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("key"), dict):
        raise ManifestError(f"{MANIFEST_NAME} lacks 'files' or 'key'")
    for name, info in files.items():
        if not _safe_relative(name) or name in RESERVED_NAMES:
            raise ManifestError(f"{MANIFEST_NAME} lists an unsafe file name {name!r}")
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("size"), int)
            or not isinstance(info.get("sha256"), str)
        ):
            raise ManifestError(f"{MANIFEST_NAME} has a malformed record for {name!r}")
    return manifest


def find_problems(
    folder: Path, manifest: dict[str, Any], check_hashes: bool = True, verified: dict[str, Identity] | None = None
) -> list[str]:
    """Compare the files under `folder` with `manifest`.

    Args:
        folder: The entry folder.
        manifest: Its manifest, as returned by `read_manifest`.
        check_hashes: Also compare sha256 (sizes are always checked).
        verified: Identities of files already found intact (see `pdo_hub.cache._verified`): a file whose
            identity is unchanged is not re-hashed. Updated in place with every file hashed and found intact
            whose identity is `settled`.

    Returns:
        One message per problem (missing file, wrong size, wrong sha256); empty when the entry is intact.
    """
    problems = []
    for name, info in manifest["files"].items():
        path = folder / name
        current = identity(path)
        if current is None:
            problems.append(f"{name}: missing")
        elif current[2] != info["size"]:
            problems.append(f"{name}: size {current[2]}, expected {info['size']}")
        elif check_hashes and (verified is None or verified.get(name) != current):
            try:
                if sha256_file(path) != info["sha256"]:
                    problems.append(f"{name}: sha256 differs from the manifest")
                elif verified is not None and settled(current):
                    verified[name] = current  # the identity seen before hashing: a later write changes it
            except OSError as err:
                problems.append(f"{name}: unreadable ({err})")
    return problems
