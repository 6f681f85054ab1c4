"""Bounded retries around pdo-hub's Hub calls, then one clear `FetchError`.

What huggingface_hub (2.4) already does, per call: a file's HEAD is retried with backoff on 429/5xx,
timeouts and network errors (Retry-After honoured); a file's GET is retried on 408/429 and, when the
connection drops or times out mid-body, resumed with a Range request from the bytes it has (up to 5
times in a row without progress); every download goes to a process-unique `.incomplete` file that is
renamed into place only when its size matches the announced `Content-Length`, and deleted otherwise.

What it leaves to the caller, and this module adds:

- `model_info` (how pdo-hub resolves a branch) has no retry and no timeout: a 500 or 429 fails at
  once, and a server that never answers hangs the call. Here it gets the metadata timeout
  (`HF_HUB_ETAG_TIMEOUT`) and the retries below.
- A GET answered 5xx is not retried, nor is a failed size check ("Consistency check failed"); the
  whole download step is retried here, reusing every file already complete in the client cache.
- A length that lies consistently leaves a truncated file under its final name; each attempt is
  checked against the Hub's hashes (`_blob_check`), and a bad file is removed and downloaded again.
- Retries are bounded by a number of attempts and a total time; the last failure becomes a
  `FetchError` saying what failed, how, how often, and what to do. Errors that retrying cannot fix
  (missing repo, revision or file, no access, offline mode) are raised at once, unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pdo_hub.core.errors import FetchError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Statuses that say "not now" rather than "no" (huggingface_hub retries the same ones).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try.

    Attributes:
        attempts: Most attempts in all (each one may already include huggingface_hub's own retries).
        max_seconds: No new attempt starts once this much time has passed since the first.
        base_wait: Wait before the second attempt; doubled for each one after, up to `max_wait`.
        max_wait: Longest backoff wait (a server's `Retry-After` is honoured as given, within `max_seconds`).
    """

    attempts: int = 4
    max_seconds: float = 600.0
    base_wait: float = 1.0
    max_wait: float = 30.0


#: The policy pdo-hub's downloads use (tests shorten it).
DEFAULT_POLICY = RetryPolicy()


def with_retries(what: str, action: Callable[[], T], *, check: Callable[[], list[str]] | None = None,
                 policy: RetryPolicy | None = None) -> T:
    """Run `action` until it succeeds and `check` finds nothing wrong, within `policy`'s bounds.

    Args:
        what: What is fetched, for logs and the error (e.g. "'org/name' at commit 0123abcd4567").
        action: The download step; it must be safe to run again (huggingface_hub reuses complete files).
        check: Finds and removes damaged downloads, returning one line per file it removed. Runs after
            every attempt: a success with damaged files counts as a failed attempt.
        policy: Bounds (default `DEFAULT_POLICY`).

    Returns:
        What `action` returned on the successful attempt.

    Raises:
        FetchError: every attempt failed with an error a retry could fix (or left damaged files).
        Exception: the first error that retrying cannot fix (repo, revision or file missing, no access,
            offline mode), unchanged.
    """
    policy = policy or DEFAULT_POLICY
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        error: BaseException | None = None
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 -- sorted below: transient, damaged download, or final
            error = err
        damaged = check() if check is not None else []
        if error is None and not damaged:
            return result
        if error is not None and not damaged and not is_transient(error):
            raise error
        problem = f"damaged download ({'; '.join(damaged)})" if damaged else describe(error)
        elapsed = time.monotonic() - started
        wait = _wait(policy, attempt, error)
        if attempt == policy.attempts or elapsed + wait > policy.max_seconds:
            raise FetchError(
                f"Could not download {what} from {_endpoint()}: {problem}. Gave up after {attempt} attempt"
                f"{'s' if attempt > 1 else ''} in {elapsed:.0f} s. Nothing partial was kept (no optimized cache "
                "entry; damaged files were removed from the Hub client cache). Check the network and the Hub's "
                "status (HF_ENDPOINT), then run the same call again: files already downloaded are reused."
            ) from error
        logger.warning("Downloading %s failed (%s); attempt %d of %d, retrying in %.1f s.", what, problem, attempt,
                       policy.attempts, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises on its last attempt


def download_snapshot(repo_id: str, sha: str, *, what: str | None = None, cache_dir: str | None = None,
                      token: str | bool | None = None, allow_patterns: list[str] | None = None,
                      ignore_patterns: list[str] | None = None,
                      unchecked: tuple[str, ...] | None = None) -> Path:
    """`snapshot_download` of commit `sha`, with bounded retries and every file checked against the Hub's hashes.

    Args:
        repo_id: The model repo.
        sha: The 40-hex commit (pinned: a branch that moves meanwhile changes nothing).
        what: What is fetched, for logs and the error (default: the repo and commit).
        cache_dir: The Hub client cache (default `HF_HUB_CACHE`).
        token: Hub token (never stored).
        allow_patterns: Only these files (as `snapshot_download`).
        ignore_patterns: Not these files (as `snapshot_download`).
        unchecked: Snapshot paths not checked against the Hub's hashes (default: the export formats pdo-hub
            does not read; pass `()` when it reads one, as for a variant pushed as ONNX).

    Returns:
        The snapshot folder in the Hub client cache.

    Raises:
        FetchError: see `with_retries`.
    """
    from huggingface_hub import snapshot_download

    from pdo_hub.hub import _blob_check

    def download() -> Path:
        return Path(snapshot_download(repo_id, revision=sha, cache_dir=cache_dir, token=token,
                                      allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))

    return with_retries(what or f"{repo_id!r} at commit {sha[:12]}", download,
                        check=lambda: _blob_check.remove_damaged(repo_id, sha, cache_dir,
                                                                 ignore=_blob_check.EXPORT_PATTERNS if unchecked is None
                                                                 else unchecked))


def model_info(repo_id: str, *, revision: str, token: str | bool | None = None, files_metadata: bool = False) -> Any:
    """`HfApi().model_info` with the metadata timeout and bounded retries (see the module docstring);
    `files_metadata` adds each file's size."""
    from huggingface_hub import HfApi, constants

    def ask() -> Any:
        return HfApi().model_info(repo_id, revision=revision, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                  files_metadata=files_metadata)

    return with_retries(f"the metadata of {repo_id!r} at {revision!r}", ask)


def is_transient(error: BaseException) -> bool:
    """Whether retrying may fix `error` (looking through the errors it was raised from)."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
    )

    transient = False
    for err in _chain(error):
        if isinstance(err, (OfflineModeIsEnabled, RemoteEntryNotFoundError)):
            return False
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            if err.response.status_code not in RETRY_STATUSES:
                return False  # 401/403/404 and friends: the same answer next time
            transient = True
        elif isinstance(err, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError,
                              FileMetadataError, LocalEntryNotFoundError)):
            transient = True  # LocalEntryNotFoundError online: the Hub could not be reached for a file
        elif isinstance(err, OSError) and str(err).startswith("Consistency check failed"):
            transient = True  # huggingface_hub's size check of a download
    return transient


def describe(error: BaseException | None) -> str:
    """A one-line account of what went wrong, from the most telling error of the chain."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if error is None:
        return "unknown error"
    for err in _chain(error):
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            request = err.response.request
            return f"HTTP {err.response.status_code} on {request.method} {_path(str(request.url))}"
        if isinstance(err, httpx2.TimeoutException):
            return f"timed out ({_url_of(err)})"
        if isinstance(err, (httpx2.NetworkError, httpx2.RemoteProtocolError)):
            return f"connection failed or cut ({type(err).__name__}: {_first_line(err)})"
    return f"{type(error).__name__}: {_first_line(error)}"


def _wait(policy: RetryPolicy, attempt: int, error: BaseException | None) -> float:
    retry_after = _retry_after(error) if error is not None else None
    if retry_after is not None:
        return retry_after
    return min(policy.max_wait, policy.base_wait * 2 ** (attempt - 1))


def _retry_after(error: BaseException) -> float | None:
    """The `Retry-After` seconds a server sent with its refusal, if any."""
    from huggingface_hub.errors import HfHubHTTPError

    for err in _chain(error):
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            value = (err.response.headers.get("Retry-After") or "").strip()
            if value.isdigit():
                return float(value)
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _path(url: str) -> str:
    """The path of a Hub URL (query dropped): enough to name the file, and never a credential."""
    from urllib.parse import urlsplit

    return urlsplit(url).path or url


def _url_of(error: BaseException) -> str:
    try:
        request = error.request  # httpx errors carry the request they failed on
    except (AttributeError, RuntimeError):
        return type(error).__name__
    return f"{request.method} {_path(str(request.url))}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
