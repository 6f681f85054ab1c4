"""Disk side of `UpstreamStore`: where its metadata and files live, and the verified one-time download.

Layout under the cache folder::

    commits/<org or @>/<name>/<sha>.json   commit records (immutable: a sha never changes meaning)
    repos/<org or @>/<name>.json           last known settings and refs, used when upstream is down
    files/<oid[:2]>/<oid>                  downloaded contents, keyed by the upstream's blob id

A file is streamed to a temporary name next to its target, checked (size, then sha256 or, for a
regular file, the git blob sha1 the upstream announced) and renamed into place: a reader never sees
a partial or unverified file. A lock per file only avoids downloading it twice at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

from filelock import FileLock
from huggingface_hub import constants
from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

from pdo_hub.serve._files import BothLocks
from pdo_hub.serve._records import FileEntry, UpstreamError, git_blob_sha1_header, repo_folder, repo_id_of_folder

_CHUNK = 1024 * 1024
_OID = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


class UpstreamFiles:
    """The cache folder of one `UpstreamStore`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("commits", "repos", "files"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def commit_path(self, repo_id: str, sha: str) -> Path:
        return self._repo_folder("commits", repo_id) / f"{sha}.json"

    def repo_state_path(self, repo_id: str) -> Path:
        folder = self._repo_folder("repos", repo_id)
        return folder.parent / f"{folder.name}.json"

    def remembered_repos(self) -> list[str]:
        """Repos whose state was saved (the only ones a pass-through store can list)."""
        ids = [(p.parent.name, p.stem) for p in (self.root / "repos").glob("*/*.json")]
        return sorted(repo_id_of_folder(namespace, name) for namespace, name in ids)

    def file_path(self, entry: FileEntry) -> Path:
        """Where the content of `entry` is (or will be) kept.

        Raises:
            UpstreamError: The upstream announced a blob id that is not a hex digest.
        """
        if not _OID.match(entry.oid):
            raise UpstreamError(f"The upstream announced an invalid blob id {entry.oid!r} for {entry.path!r}.")
        return self.root / "files" / entry.oid[:2] / entry.oid

    def fetch(self, entry: FileEntry, url: str, headers: dict[str, str]) -> Path:
        """The local file of `entry`, downloaded from `url` the first time only.

        Raises:
            UpstreamError: The download is shorter, longer or other than announced.
            huggingface_hub errors and httpx2 errors: the request itself failed (the caller maps them).
        """
        target = self.file_path(entry)
        if target.is_file():
            return target
        target.parent.mkdir(exist_ok=True)
        with self._locks_guard:
            thread_lock = self._locks.setdefault(entry.oid, threading.Lock())
        with BothLocks(thread_lock, FileLock(str(target) + ".lock")):
            if not target.is_file():  # another thread or process may have finished it meanwhile
                self._download(entry, url, headers, target)
        return target

    def _download(self, entry: FileEntry, url: str, headers: dict[str, str], target: Path) -> None:
        sha256, sha1 = hashlib.sha256(), hashlib.sha1(git_blob_sha1_header(entry.size))
        size = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, http_stream_backoff(
                    "GET", url, headers=headers, follow_redirects=True,
                    timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                hf_raise_for_status(response)
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > entry.size:
                        raise UpstreamError(f"The upstream sent more than the {entry.size} bytes of {entry.path!r}.")
                    (sha256 if entry.sha256 else sha1).update(chunk)
                    out.write(chunk)
            if size != entry.size:
                raise UpstreamError(f"The upstream sent {size} of the {entry.size} bytes of {entry.path!r}.")
            got, want = (sha256.hexdigest(), entry.sha256) if entry.sha256 else (sha1.hexdigest(), entry.oid)
            if got != want:
                raise UpstreamError(f"The upstream sent {entry.path!r} with digest {got}, not the announced {want}.")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _repo_folder(self, kind: str, repo_id: str) -> Path:
        return repo_folder(self.root / kind, repo_id)

