"""The verified-identity stamp: a cache hit re-hashes only the files that changed since their last check.

Design: every file of an entry is hashed against the manifest the first time it is used with a given
*identity* `(st_dev, st_ino, size, mtime_ns, ctime_ns)`, and the identities found intact are recorded in
`.pdo_verified` inside the entry, together with the manifest's own identity. A later hit stats each file
and compares: equal identities are trusted, any other file is hashed again before use. The kernel sets
ctime on every write, truncate, rename-over or metadata change, and no user call sets it back, so a
flipped byte, a truncated weights file or an edited recipe always looks new here; an edited manifest
invalidates the whole stamp. A hit costs a few `stat` calls and two small JSON reads (well under a
millisecond) instead of reading the weights.

Timestamps are coarse on many systems (a kernel tick, up to 2 s on some filesystems), so a file changed
again within the same tick as its check would keep its identity. As git does for its index ("racily
clean" entries), an identity is recorded only once it is older than `RACY_NS`; until then the file is
hashed on every use. A fresh entry is therefore hashed by its first hits within 2 s of its commit, and
recorded by the first one after that.

Hashing while safetensors reads was the alternative; it was not chosen because the weights are
mmap'd lazily (the hash would cost a full extra pass anyway) and the small JSON files that decide the
code path (recipe, source record) are read by other code.

Limits (what this does not catch): damage that bypasses the filesystem (bit rot on the medium, writes
to the raw device) leaves ctime alone and is found only by a full check (`verify=True`, `pdo-hub cache
verify`); a file changed between the check and its read is a check-then-use race like any other;
someone able to write the entry can also rewrite the stamp (this guards against accidents, not
attackers); on a network filesystem whose server clock runs behind this host's, the racy-clean margin
shrinks by the difference. When the stamp cannot be written (read-only cache) every hit hashes the
files: slower, as safe. A copied or restored cache gets new inodes, so its first use re-hashes once.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path

from pdo_hub.cache.layout import VERIFIED_STAMP
from pdo_hub.core._crashpoints import crashpoint

logger = logging.getLogger(__name__)

Identity = tuple[int, int, int, int, int]
_VERSION = 1
#: Only identities whose mtime and ctime are older than this are recorded (coarsest common timestamp: 2 s).
RACY_NS = 2_000_000_000


def identity(path: Path) -> Identity | None:
    """`(st_dev, st_ino, size, mtime_ns, ctime_ns)` of a regular file; None when missing or not a plain
    file (a symbolic link is never trusted: it could point anywhere)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def settled(value: Identity) -> bool:
    """True when a change within the same timestamp tick can no longer go unnoticed (see `RACY_NS`)."""
    return max(value[3], value[4]) < _now_ns() - RACY_NS


def _now_ns() -> int:
    return time.time_ns()


def read_stamp(folder: Path, manifest_identity: Identity | None) -> dict[str, Identity]:
    """The file identities verified under this very manifest; empty when none (or the stamp is unreadable)."""
    try:
        data = json.loads((folder / VERIFIED_STAMP).read_text(encoding="utf-8"))
        if data.get("version") != _VERSION or _as_identity(data.get("manifest")) != manifest_identity:
            return {}
        files = {name: _as_identity(value) for name, value in data["files"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # an unreadable stamp only costs a re-hash
    return {name: value for name, value in files.items() if value is not None}


def write_stamp(folder: Path, manifest_identity: Identity | None, files: dict[str, Identity]) -> None:
    """Record verified identities (atomic replace; best effort: without a stamp the next hit re-hashes).

    Nothing is written while the manifest itself is not `settled`: an edit of it within the same tick
    would otherwise leave the stamp looking valid.
    """
    if manifest_identity is None or not settled(manifest_identity):
        return
    payload = json.dumps({"version": _VERSION, "manifest": manifest_identity, "files": files}, sort_keys=True)
    tmp = None
    try:
        # A writer killed before its rename left its temp file; one of a concurrent writer may go too,
        # which only loses that writer's record (best effort, as here).
        for leftover in folder.glob(f"{VERIFIED_STAMP}.*.tmp"):
            leftover.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{VERIFIED_STAMP}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
        crashpoint("verified.replacing")
        os.replace(tmp, folder / VERIFIED_STAMP)
    except OSError as err:
        logger.debug("Cannot record verified files in %s (%s); the next use re-hashes them.", folder, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _as_identity(value: object) -> Identity | None:
    if isinstance(value, list) and len(value) == 5 and all(type(item) is int for item in value):
        return tuple(value)  # type: ignore[return-value]
    return None
