"""Check downloaded files in the Hub client cache against the Hub's own metadata, and remove bad ones.

huggingface_hub checks a download only against the `Content-Length` it was told: a server (or proxy)
that lies consistently about the length leaves a truncated file under its final name, and every later
call finds it there and never downloads it again. The Hub says more than the length, at no extra cost:
the commit's tree listing (which `snapshot_download` caches as `trees/<sha>.json`) gives each file's
size and git blob sha1 (plus sha256 for LFS files), and a blob is named by its ETag, which by the Hub's
convention is the sha256 of an LFS file or the git blob sha1 of a regular one. A file that matches
neither is removed (blob and snapshot link), so the next attempt downloads it again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
from pathlib import Path

from pdo_hub.hub._files import sha256_of

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1024 * 1024
#: Other export formats of a model's weights that pdo-hub never reads: not worth hashing.
EXPORT_PATTERNS = ("onnx/*", "openvino/*", "*.onnx")


def snapshot_folder(repo_id: str, sha: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the Hub client cache keeps the files of commit `sha` of model repo `repo_id`."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    return root / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / sha


def remove_damaged(repo_id: str, sha: str, cache_dir: str | os.PathLike[str] | None = None,
                   ignore: tuple[str, ...] = ()) -> list[str]:
    """Check every file of the commit's snapshot in the client cache; remove those the Hub disowns.

    Args:
        repo_id: The model repo.
        sha: The commit whose snapshot is checked.
        cache_dir: The Hub client cache (default `HF_HUB_CACHE`).
        ignore: Glob patterns of snapshot paths not to check (files pdo-hub never reads).

    Returns:
        One line per removed file: its path and what was wrong. Empty when all is well (or nothing is there).
    """
    folder = snapshot_folder(repo_id, sha, cache_dir)
    if not folder.is_dir():
        return []
    tree = _tree_listing(folder.parent.parent, sha)
    problems = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir() or any(fnmatch.fnmatch(relative, pattern) for pattern in ignore):
            continue
        problem = _problem(path, tree.get(relative))
        if problem is not None:
            _remove(path)
            problems.append(f"{relative}: {problem}")
    if problems:
        logger.warning("Removed damaged downloads of %s at %s from the Hub client cache: %s", repo_id, sha[:12],
                       "; ".join(problems))
    return problems


def _tree_listing(storage_folder: Path, sha: str) -> dict:
    """The commit's cached tree listing, `{path: entry with size, blob_id, lfs_sha256, lfs_size}`, or {}."""
    try:
        from huggingface_hub._tree_cache import read_tree_cache  # private: checked defensively, optional
    except ImportError:
        return {}
    try:
        return read_tree_cache(str(storage_folder), sha) or {}
    except Exception as err:  # noqa: BLE001 -- without a listing the blob names still tell
        logger.debug("No usable tree listing for %s: %s", sha, err)
        return {}


def _problem(path: Path, listed) -> str | None:
    """What is wrong with one snapshot file, or None when it matches what the Hub says."""
    if not path.exists():  # a link whose blob is gone: huggingface_hub downloads it again
        return None
    size = path.stat().st_size
    etag = Path(os.readlink(path)).name if path.is_symlink() else ""
    if listed is not None and listed.lfs_sha256:
        expected_size, kind, expected = listed.lfs_size, "sha256", listed.lfs_sha256
    elif listed is not None:
        expected_size, kind, expected = listed.size, "git-sha1", listed.blob_id
    elif _SHA256.fullmatch(etag):
        expected_size, kind, expected = None, "sha256", etag
    elif _SHA1.fullmatch(etag):
        expected_size, kind, expected = None, "git-sha1", etag
    else:
        return None  # not a Hub convention we know: nothing to check against
    if expected_size is not None and size != expected_size:
        return f"{size} bytes where the Hub lists {expected_size}"
    actual = _digest(path, kind, size)
    if actual != expected:
        return f"{kind} {actual[:12]} where the Hub lists {expected[:12]}"
    return None


def _digest(path: Path, kind: str, size: int) -> str:
    if kind == "sha256":  # memoized per process: a mirror building several variants of one model hashes it once
        return sha256_of(path)
    digest = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)  # git's blob hash
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    """Remove the file's blob and its snapshot link (a copy when the cache has no links)."""
    if path.is_symlink():
        Path(os.path.realpath(path)).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
