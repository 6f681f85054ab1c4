"""File hashing with an in-process memo, so a repeated load does not re-read a large weights file."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_MEMO: dict[tuple[str, int, int, int], str] = {}
_MEMO_LOCK = threading.Lock()
_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, memoized on (path, inode, size, mtime) for this process."""
    path = Path(path)
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _MEMO_LOCK:
        if memo_key in _MEMO:
            return _MEMO[memo_key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _MEMO_LOCK:
        _MEMO[memo_key] = value
    return value


def tree_sha256(folder: str | os.PathLike[str]) -> str:
    """One sha256 for a folder: over the sorted relative paths and sha256 of its files (links followed)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # hidden files (.git, editor state) are not part of the model
        digest.update(f"{relative}\0{sha256_of(path)}\n".encode("utf-8"))
    return digest.hexdigest()
