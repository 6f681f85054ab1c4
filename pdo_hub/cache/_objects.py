"""The few object-store operations the shared cache tier needs, over an fsspec file system.

Everything the tier's safety rests on is one primitive: **create an object only if no object has that
name** (single winner among concurrent creators, and the object appears whole or not at all). Object
stores have no rename, so this replaces the local cache's `os.rename`. fsspec's generic
`pipe_file(mode="create")` checks `exists` and then writes, which is not atomic, so the primitive is
provided here per protocol, and a URL of any other protocol is refused rather than trusted:

- `s3` (s3fs): a PUT with `If-None-Match: *` (`pipe_file(mode="create")` in s3fs), which AWS S3,
  MinIO, Cloudflare R2 and Ceph RGW evaluate atomically: the loser gets 412 Precondition Failed.
- `file` (a local folder, or an NFS/Lustre mount): the bytes go to a unique temp file that is then
  hard-linked to the name; `link(2)` fails with EEXIST when the name exists, atomically, on NFS too
  (the classic NFS-safe exclusive create, unlike `O_EXCL` on old NFS clients).

Every other failure (endpoint unreachable, credentials refused, connection dropped) becomes a
`SharedCacheError` naming the tier and what to check; a missing object is `None`/`False`, not an error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pdo_hub.core.errors import CacheError, ConfigError

logger = logging.getLogger(__name__)

#: Protocols whose exclusive create is atomic (see the module docstring), by fsspec protocol name.
SUPPORTED_PROTOCOLS = ("s3", "file")
# S3 calls give up quickly when the endpoint is gone: a dead tier must fall back to building, not hang.
_S3_CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}
#: After a failed call, calls fail at once for this long (see `ObjectStore.reaching`).
RETRY_AFTER_SECONDS = 10.0
_S3_RETRIES = 1  # botocore retries once itself (max_attempts 2); s3fs would multiply that


class SharedCacheError(CacheError):
    """The shared cache tier cannot be reached or refused an operation (the message names the tier)."""


def redact(url: str) -> str:
    """`url` without any user or password part, for messages and logs (never log credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()


class ObjectStore:
    """Objects under one base path of an fsspec file system.

    Args:
        url: `s3://bucket/prefix` or a local folder (`file:///path` or a plain path).

    Raises:
        ConfigError: for another protocol, a URL without a bucket, or s3fs not installed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact(url)
        if self.shown != url:
            # Credentials in a URL end up in request lines, error messages and logs: refuse them.
            raise ConfigError(
                f"PDO_HUB_SHARED_CACHE={self.shown!r} holds credentials: remove them from the URL and give them "
                "the usual way (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)."
            )
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol in ("s3a", "s3n"):
            protocol = "s3"
        if protocol not in SUPPORTED_PROTOCOLS:
            raise ConfigError(
                f"PDO_HUB_SHARED_CACHE={self.shown!r}: the {protocol!r} protocol is not supported; use one of "
                f"{list(SUPPORTED_PROTOCOLS)} (s3:// for any S3-compatible store). The tier needs an atomic "
                "create-if-absent, which pdo-hub only relies on where the store provides it."
            )
        self.protocol = protocol
        self._down_until, self._down_reason = 0.0, ""
        self._bucket_seen = protocol == "file"  # a local base folder is created by the first write
        self.fs, base = _open(url, protocol, self.shown)
        self.base = base.rstrip("/")

    def path(self, *parts: str) -> str:
        """The full path of an object under the base."""
        return "/".join([self.base, *parts])

    # --- reads ---------------------------------------------------------------------------------

    def read(self, path: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        with self.reaching(f"read {path}"):
            try:
                return self.fs.cat_file(path)
            except FileNotFoundError:
                return None

    def _check_bucket(self) -> None:
        # S3 answers NoSuchBucket as a missing object (s3fs: FileNotFoundError): without this check a
        # missing bucket would look like an empty tier forever and fail only when publishing.
        bucket = self.base.split("/", 1)[0]
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)  # not fs.exists: it answers False when unreachable
        except FileNotFoundError as err:
            raise SharedCacheError(
                f"The bucket {bucket!r} of the shared cache {self.shown} does not exist (or these credentials cannot "
                f"see it): create it, e.g. `aws s3 mb s3://{bucket}` or "
                f"`python -c \"import s3fs; s3fs.S3FileSystem().mkdir('{bucket}')\"`."
            ) from err
        self._bucket_seen = True

    def download(self, pairs: list[tuple[str, Path]]) -> list[str]:
        """Copy objects to local files, several at a time (one GET each, no HEAD); returns the objects
        that do not exist. Every download has ended when this returns, failed or not."""
        with self.reaching(f"download {len(pairs)} objects under {self.base}"):
            if self.protocol == "file":
                results = [_copy_file(Path(remote), local) for remote, local in pairs]
            else:
                from fsspec.asyn import _run_coros_in_chunks, sync

                coros = [self.fs._get_file(remote, str(local)) for remote, local in pairs]
                # return_exceptions: no download may still be writing when the caller deletes the folder.
                results = sync(self.fs.loop, _run_coros_in_chunks, coros, batch_size=_PARALLEL, return_exceptions=True)
            missing = [remote for (remote, _), result in zip(pairs, results) if isinstance(result, FileNotFoundError)]
            failed = [result for result in results if isinstance(result, BaseException)
                      and not isinstance(result, FileNotFoundError)]
            if failed:
                raise failed[0]
            return missing

    def names(self, folder: str) -> list[str]:
        """Names directly under `folder` (objects and sub-folders), sorted; empty when none."""
        with self.reaching(f"list {folder}"):
            try:
                found = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []
        return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in found if name.rstrip("/") != folder)

    def find(self, folder: str) -> dict[str, dict[str, Any]]:
        """Every object under `folder`, recursively: {path: info (size, modification time)}."""
        with self.reaching(f"list {folder}"):
            try:
                return self.fs.find(folder, detail=True)
            except FileNotFoundError:
                return {}

    # --- writes --------------------------------------------------------------------------------

    def create(self, path: str, data: bytes) -> bool:
        """Create the object only if none has that name; True when this call created it (atomic, see the
        module docstring), False when it existed."""
        with self.reaching(f"create {path}"):
            if self.protocol == "file":
                return _link_create(Path(path), data)
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except OSError as err:
                # s3fs maps 412 to FileExistsError only when the reply names the If-None-Match condition;
                # some servers omit it and s3fs then raises EINVAL.
                if err.errno == errno.EINVAL and "precondition" in str(err).lower():
                    return False
                raise
            return True

    def write(self, path: str, data: bytes) -> None:
        """Create or replace the object (atomic for readers: they see the old or the new bytes)."""
        with self.reaching(f"write {path}"):
            if self.protocol == "file":
                _replace_file(Path(path), data)
            else:
                self.fs.pipe_file(path, data)

    def upload(self, local: Path, path: str) -> None:
        """Copy a local file to the object `path`."""
        with self.reaching(f"upload {path}"):
            if self.protocol == "file":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.put_file(str(local), path)

    def delete(self, paths: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        if not paths:
            return
        with self.reaching(f"delete {len(paths)} objects under {self.base}"):
            for path in paths:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    @contextmanager
    def reaching(self, what: str) -> Iterator[None]:
        """Turn a store failure into `SharedCacheError` (a missing object is left to the caller).

        After a failure the store counts as down for `RETRY_AFTER_SECONDS`: calls fail at once instead of
        each paying the client's timeouts and retries, so a dead tier costs a lookup nothing but a warning.
        """
        if time.monotonic() < self._down_until:
            raise SharedCacheError(f"The shared cache {self.shown} failed {self._down_reason}; not retried for "
                                   f"{RETRY_AFTER_SECONDS:g} s after a failure.")
        try:
            if not self._bucket_seen:
                self._check_bucket()
            yield
        except (FileNotFoundError, FileExistsError):
            raise
        except SharedCacheError:
            self._down_until, self._down_reason = time.monotonic() + RETRY_AFTER_SECONDS, "(no such bucket)"
            raise
        except Exception as err:  # noqa: BLE001 -- botocore/aiohttp errors are not OSErrors
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            self._down_reason = f"to {what} ({type(err).__name__})"
            raise SharedCacheError(
                f"The shared cache {self.shown} failed to {what}: {type(err).__name__}: {err}. Check that the store "
                "is reachable (AWS_ENDPOINT_URL for an S3-compatible server), that the bucket exists and that the "
                "credentials may read and write it."
            ) from err


_PARALLEL = 8  # concurrent downloads of one entry's files: latency overlaps, few connections


def _copy_file(source: Path, target: Path) -> FileNotFoundError | None:
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError as err:
        return err
    return None


def json_field(raw: bytes | None, name: str) -> Any:
    """Field `name` of a small JSON object (a record, a lease), or None when absent or unreadable."""
    try:
        return json.loads(raw)[name] if raw else None
    except (ValueError, TypeError, KeyError):
        return None


def _open(url: str, protocol: str, shown: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as err:
        raise ConfigError("The shared cache tier needs fsspec: pip install 'pdo-hub[scale]'.") from err
    if protocol == "file":
        path = url.split("://", 1)[1] if "://" in url else url
        fs = fsspec.filesystem("file")
        base = os.path.abspath(os.path.expanduser(path))
        return fs, base
    try:
        import s3fs  # noqa: F401  (only to give the install hint; fsspec loads it by protocol)
    except ImportError as err:
        raise ConfigError(
            f"PDO_HUB_SHARED_CACHE={shown!r} needs s3fs, which is not installed: pip install 'pdo-hub[scale]'."
        ) from err
    bucket_path = url.split("://", 1)[1]
    if not bucket_path.strip("/"):
        raise ConfigError(f"PDO_HUB_SHARED_CACHE={shown!r} names no bucket; use s3://bucket/prefix.")
    # Listings must be fresh (another machine publishes); the endpoint and credentials come from the usual
    # AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws/...) or fsspec's FSSPEC_S3_* config.
    fs = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True, config_kwargs=_S3_CLIENT_CONFIG)
    fs.retries = _S3_RETRIES  # a class attribute in s3fs (5), not a constructor argument; this instance is ours
    return fs, bucket_path.rstrip("/")


def _link_create(path: Path, data: bytes) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists: the single winner
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _replace_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
