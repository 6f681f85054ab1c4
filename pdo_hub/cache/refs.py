"""Refs: branch and tag names pointing to immutable revisions, so `main` resolves offline.

Same format as the Hub client cache: `refs/{name}` is a text file holding the revision, and
`refs/pr/1` is a nested path. Refs are pointers only; keys never contain them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pdo_hub.cache.keys import validate_revision
from pdo_hub.cache.layout import ref_path
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.errors import CacheError, InvalidRepoIdError

logger = logging.getLogger(__name__)


def set_ref(root: Path, kind: str, source_id: str, ref_name: str, revision: str) -> Path:
    """Record that `ref_name` of a source points to `revision`, atomically replacing the old value.

    Args:
        root: Cache root.
        kind: Source kind (`huggingface`, `torchvision`, `local`).
        source_id: Source id (validated).
        ref_name: Branch or tag name, e.g. `main` or `refs/pr/1` (validated).
        revision: Immutable revision (validated like a `CacheKey` revision).

    Returns:
        The path of the ref file.

    Raises:
        InvalidRepoIdError: for an invalid id, ref name or revision.
        CacheError: when the file cannot be written (e.g. `a` is already a ref and `a/b` is asked for).
    """
    revision = validate_revision(kind, revision)
    path = ref_path(root, kind, source_id, ref_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file beside the target then os.replace: a reader sees the old or the new value, never half.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ref-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(revision)
            crashpoint("ref.replacing")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise CacheError(
            f"Cannot write ref {ref_name!r} of {kind} {source_id!r} at {path}: {err}. "
            "A ref cannot be both a name and a folder of other refs (like 'a' and 'a/b')."
        ) from err
    return path


def resolve_ref(root: Path, kind: str, source_id: str, ref_name: str) -> str | None:
    """Return the revision `ref_name` points to, or None when it was never recorded (or is unreadable).

    Raises:
        InvalidRepoIdError: for an invalid id or ref name.
    """
    path = ref_path(root, kind, source_id, ref_name)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("Cannot read ref file %s (%s); treating the ref as unknown.", path, err)
        return None
    try:
        return validate_revision(kind, value)
    except InvalidRepoIdError:
        logger.warning("Ref file %s holds %r, not a revision; treating the ref as unknown.", path, value[:80])
        return None
