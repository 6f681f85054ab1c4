"""The few object-store operations the shared cache tier needs, on S3 (through s3fs) or a local folder.

Everything the tier's safety rests on is one primitive: **create an object only if no object has that
name** (single winner among concurrent creators, and the object appears whole or not at all). Object
stores have no rename, so this replaces the local cache's `os.rename`. fsspec's generic
`pipe_file(mode="create")` checks `exists` and then writes, which is not atomic, so the primitive is
provided here per protocol, and a URL of any other protocol is refused rather than trusted:

- `s3` (s3fs, an fsspec file system): a PUT with `If-None-Match: *` (`pipe_file(mode="create")` in
  s3fs), which AWS S3, MinIO, Cloudflare R2 and Ceph RGW evaluate atomically: the loser gets 412.
- `file` (a local folder, or an NFS/Lustre mount): the bytes go to a unique temp file that is then
  hard-linked to the name; `link(2)` fails with EEXIST when the name exists, atomically, on NFS too
  (the classic NFS-safe exclusive create, unlike `O_EXCL` on old NFS clients).

Every other failure (endpoint unreachable, credentials refused, connection dropped) becomes a
`SharedCacheError` naming the tier and what to check; a missing object is `None`/`False`, not an error.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
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

#: Protocols whose exclusive create is atomic (see the module docstring).
SUPPORTED_PROTOCOLS = ("s3", "file")
#: After a failed call, calls fail at once for this long (see `ObjectStore.reaching`).
RETRY_AFTER_SECONDS = 10.0
# S3 calls give up quickly when the endpoint is gone: a dead tier must fall back to building, not hang.
_S3_CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}
_S3_RETRIES = 1  # botocore retries once itself (max_attempts 2); s3fs would multiply that
_PARALLEL = 8  # concurrent downloads of one entry's files: latency overlaps, few connections
_CHUNK = 1024 * 1024


class SharedCacheError(CacheError):
    """The shared cache tier cannot be reached or refused an operation (the message names the tier)."""


def redact(url: str) -> str:
    """`url` without any user or password part, for messages and logs (never log credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()


def open_store(url: str) -> ObjectStore:
    """The store of a shared tier URL: `s3://bucket/prefix`, or a local folder (`file:///path` or a path).

    Raises:
        ConfigError: for another protocol, credentials in the URL, a URL without a bucket, or s3fs missing.
    """
    shown = redact(url)
    if shown != url:
        # Credentials in a URL end up in request lines, error messages and logs: refuse them.
        raise ConfigError(
            f"PDO_HUB_SHARED_CACHE={shown!r} holds credentials: remove them from the URL and give them the usual "
            "way (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)."
        )
    protocol, _, rest = url.partition("://") if "://" in url else ("file", "", url)
    if protocol in ("s3", "s3a"):
        return S3Store(url, rest)
    if protocol == "file":
        return LocalStore(url, rest)
    raise ConfigError(
        f"PDO_HUB_SHARED_CACHE={shown!r}: the {protocol!r} protocol is not supported; use one of "
        f"{list(SUPPORTED_PROTOCOLS)} (s3:// for any S3-compatible store). The tier needs an atomic "
        "create-if-absent, which pdo-hub only relies on where the store provides it."
    )


class ObjectStore:
    """Objects under one base path; subclasses provide the operations for one protocol.

    Paths are `/`-joined strings under `base` (see `path`). Every public method runs inside `reaching`.
    """

    def __init__(self, url: str, base: str) -> None:
        self.shown = redact(url)
        self.base = base.rstrip("/")
        self._down_until, self._down_reason = 0.0, ""

    def path(self, *parts: str) -> str:
        """The full path of an object under the base."""
        return "/".join([self.base, *parts])

    def read(self, path: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        with self.reaching(f"read {path}"):
            try:
                return self._read(path)
            except FileNotFoundError:
                return None

    def names(self, folder: str) -> list[str]:
        """Names directly under `folder` (objects and sub-folders), sorted; empty when none."""
        with self.reaching(f"list {folder}"):
            return sorted(self._names(folder))

    def find(self, folder: str) -> dict[str, float]:
        """Every object under `folder`, recursively: {path: modification time (seconds since the epoch)}."""
        with self.reaching(f"list {folder}"):
            return self._find(folder)

    def create(self, path: str, data: bytes) -> bool:
        """Create the object only if none has that name; True when this call created it (atomic, see the
        module docstring), False when it existed."""
        with self.reaching(f"create {path}"):
            return self._create(path, data)

    def write(self, path: str, data: bytes) -> None:
        """Create or replace the object (atomic for readers: they see the old or the new bytes)."""
        with self.reaching(f"write {path}"):
            self._write(path, data)

    def upload(self, local: Path, path: str) -> None:
        """Copy a local file to the object `path`."""
        with self.reaching(f"upload {path}"):
            self._upload(local, path)

    def download(self, pairs: list[tuple[str, Path]]) -> dict[str, tuple[int, str] | None]:
        """Copy objects to local files (in parallel where the store allows), hashing the bytes as they
        arrive; returns {object: (size, sha256 hex)}, None for an object that does not exist. Every download
        has ended when this returns, failed or not."""
        with self.reaching(f"download {len(pairs)} objects under {self.base}"):
            return self._download(pairs)

    def delete(self, paths: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        if paths:
            with self.reaching(f"delete {len(paths)} objects under {self.base}"):
                self._delete(paths)

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
            self._check()
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

    def _check(self) -> None:
        """Raise `SharedCacheError` when the store cannot be used at all (checked before each call)."""


class S3Store(ObjectStore):
    """An S3 prefix through s3fs. Endpoint, credentials and region come from the usual AWS settings
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws/...) or fsspec's FSSPEC_S3_* configuration."""

    def __init__(self, url: str, bucket_path: str) -> None:
        super().__init__(url, bucket_path)
        try:
            import s3fs
        except ImportError as err:
            raise ConfigError(
                f"PDO_HUB_SHARED_CACHE={self.shown!r} needs s3fs, which is not installed: pip install 'pdo-hub[scale]'."
            ) from err
        if not self.base.strip("/"):
            raise ConfigError(f"PDO_HUB_SHARED_CACHE={self.shown!r} names no bucket; use s3://bucket/prefix.")
        # Listings must be fresh: another machine publishes.
        self.fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, config_kwargs=_S3_CLIENT_CONFIG)
        self.fs.retries = _S3_RETRIES  # a class attribute in s3fs (5), not a constructor argument
        self._bucket_seen = False

    def _check(self) -> None:
        # S3 answers NoSuchBucket as a missing object (s3fs: FileNotFoundError): without this check a
        # missing bucket would look like an empty tier forever and fail only when publishing.
        if self._bucket_seen:
            return
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

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def _names(self, folder: str) -> list[str]:
        try:
            found = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return [name.rstrip("/").rsplit("/", 1)[-1] for name in found if name.rstrip("/") != folder]

    def _find(self, folder: str) -> dict[str, float]:
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {path: info["LastModified"].timestamp() for path, info in found.items()}

    def _create(self, path: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(path, data, mode="create")  # PUT with If-None-Match: *
        except FileExistsError:
            return False
        except OSError as err:
            # s3fs maps 412 to FileExistsError only when the reply names the If-None-Match condition; some
            # servers omit it and s3fs then raises EINVAL.
            if err.errno == errno.EINVAL and "precondition" in str(err).lower():
                return False
            raise
        return True

    def _write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def _upload(self, local: Path, path: str) -> None:
        self.fs.put_file(str(local), path)

    def _download(self, pairs: list[tuple[str, Path]]) -> dict[str, tuple[int, str] | None]:
        async def all_of_them() -> list[Any]:
            limit = asyncio.Semaphore(_PARALLEL)

            async def one(remote: str, local: Path) -> tuple[int, str]:
                bucket, key, _ = self.fs.split_path(remote)
                async with limit:
                    # One GET streamed to the file, hashed on the way (no HEAD, no second pass over the bytes).
                    reply = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
                    digest, size = _Digest(), 0
                    with open(local, "wb") as out:
                        while chunk := await reply["Body"].read(_CHUNK):
                            size += digest.add(chunk, out)
                    return size, digest.hexdigest()

            # return_exceptions: no download may still be writing when the caller deletes the folder.
            return await asyncio.gather(*(one(remote, local) for remote, local in pairs), return_exceptions=True)

        results = asyncio.run_coroutine_threadsafe(all_of_them(), self.fs.loop).result()
        return _outcomes(pairs, results)

    def _delete(self, paths: list[str]) -> None:
        self.fs.rm(paths)


class LocalStore(ObjectStore):
    """A folder (local disk, or an NFS/Lustre mount shared by the machines)."""

    def __init__(self, url: str, path: str) -> None:
        super().__init__(url, os.path.abspath(os.path.expanduser(path)))

    def _read(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def _names(self, folder: str) -> list[str]:
        try:
            return [name for name in os.listdir(folder) if not name.startswith(".") or not name.endswith(".tmp")]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _find(self, folder: str) -> dict[str, float]:
        return {os.path.join(top, name): os.stat(os.path.join(top, name)).st_mtime
                for top, _, files in os.walk(folder) for name in files}

    def _create(self, path: str, data: bytes) -> bool:
        tmp = self._temp_beside(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists: the single winner
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _write(self, path: str, data: bytes) -> None:
        os.replace(self._temp_beside(path, data), path)

    def _upload(self, local: Path, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, path)

    def _download(self, pairs: list[tuple[str, Path]]) -> dict[str, tuple[int, str] | None]:
        results: list[Any] = []
        for remote, local in pairs:
            try:
                digest, size = _Digest(), 0
                with open(remote, "rb") as source, open(local, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        size += digest.add(chunk, out)
                results.append((size, digest.hexdigest()))
            except FileNotFoundError as err:
                results.append(err)
        return _outcomes(pairs, results)

    def _delete(self, paths: list[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    @staticmethod
    def _temp_beside(path: str, data: bytes) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_bytes(data)
        return tmp


class _Digest:
    """sha256 of a file being written chunk by chunk."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes, out: Any) -> int:
        self._hash.update(chunk)
        out.write(chunk)
        return len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _outcomes(pairs: list[tuple[str, Path]], results: list[Any]) -> dict[str, tuple[int, str] | None]:
    """{object: (size, sha256)}, None for a missing one; re-raises the first other failure."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, FileNotFoundError):
            raise result
    return {remote: None if isinstance(result, FileNotFoundError) else result
            for (remote, _), result in zip(pairs, results)}


def json_field(raw: bytes | None, name: str) -> Any:
    """Field `name` of a small JSON object (a record, a lease), or None when absent or unreadable."""
    try:
        return json.loads(raw)[name] if raw else None
    except (ValueError, TypeError, KeyError):
        return None
