"""HTTP plumbing shared by the endpoints: the parsed request, the response, errors and Range parsing.

Every error answer carries `X-Error-Code` and a JSON `{"error": ...}` body: without the code the
huggingface_hub client turns a 404 from an http:// endpoint into "check your connection" instead of
the specific RepositoryNotFound / RevisionNotFound / EntryNotFound error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pdo_hub.core.errors import InvalidRepoIdError
from pdo_hub.serve._records import (
    ReadOnlyRepoError,
    RepoExistsError,
    StaleParentError,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    UpstreamError,
)

if TYPE_CHECKING:
    from pdo_hub.serve.store_protocol import ReadableRepoStore
    from pdo_hub.serve.tokens import TokenScope, TokenTable

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DEFAULT_MAX_BODY = 1024**3  # 1 GiB: inline base64 commits carry whole files
_MAX_JSON_BODY = 64 * 1024**2  # JSON documents (create repo, preupload) are small; NDJSON commits are streamed


@dataclass(frozen=True)
class ServeConfig:
    """What every request of one server shares.

    Attributes:
        store: The store served (writes are offered only if it implements `WritableRepoStore`).
        base_url: `http://host:port` (or the configured public URL) for URLs in answers; never taken
            from the request's Host header, which a client controls.
        tokens: Valid tokens and their scopes; None means there are none.
        allow_anonymous_writes: Requests without a valid token may create repos and commit.
        max_body_bytes: Largest request body accepted (413 beyond).
        extra_routes: More endpoints, `{(method, "/decoded/path"): endpoint(Request) -> Response}`,
            matched exactly before the Hub routes (they check access themselves, e.g. with
            `_access.require_write`).
    """

    store: ReadableRepoStore
    base_url: str
    tokens: TokenTable | None = None
    allow_anonymous_writes: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY
    extra_routes: Mapping[tuple[str, str], Callable[[Request], Response]] = field(default_factory=dict)


class Body:
    """A request body received in full, held in a spooled temporary file (memory, then disk)."""

    def __init__(self, file: IO[bytes] | None = None, size: int = 0) -> None:
        self._file, self.size = file, size

    def read(self, limit: int = _MAX_JSON_BODY) -> bytes:
        """The whole body (for small JSON documents).

        Raises:
            HubHTTPError: 413 when the body is larger than `limit`.
        """
        if self.size > limit:
            raise HubHTTPError(413, "PayloadTooLarge", f"A JSON request body of {self.size} bytes is over {limit}.")
        if self._file is None:
            return b""
        self._file.seek(0)
        return self._file.read()

    def lines(self) -> Iterator[bytes]:
        """The body line by line, so an NDJSON commit is never held in memory as a whole."""
        if self._file is None:
            return
        self._file.seek(0)
        yield from iter(self._file.readline, b"")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class Request:
    """One parsed request, as the endpoint functions see it (no web framework types).

    Attributes:
        method: `GET`, `HEAD`, `POST`, ...
        segments: The path split on `/` BEFORE percent-decoding, then each part decoded, so a revision
            sent as `refs%2Fpr%2F1` stays one segment `refs/pr/1`.
        query: Query parameters (last value wins).
        headers: Request headers (case-insensitive mapping).
        body: The request body (empty for GET/HEAD).
        token: The scope of the request's valid bearer token, or None.
        config: The server's shared settings (store, base URL, tokens, write policy).
    """

    method: str
    segments: list[str]
    query: dict[str, str]
    headers: Mapping[str, str]
    body: Body
    token: TokenScope | None
    config: ServeConfig

    @property
    def store(self) -> ReadableRepoStore:
        return self.config.store

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def json(self) -> dict:
        """The body parsed as a JSON object, or a 400 error."""
        try:
            data = json.loads(self.body.read() or b"{}")
        except (ValueError, RecursionError) as err:  # also UnicodeDecodeError; RecursionError: nested too deep
            raise HubHTTPError(400, "BadRequest", f"Request body is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise HubHTTPError(400, "BadRequest", "Request body must be a JSON object.")
        return data

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`1`, `true`, `True`, ...)."""
        return self.query.get(name, "").strip().lower() in {"1", "true", "yes"}


@dataclass
class Response:
    """What to answer: a status, headers, and an in-memory body or a byte range of a local file.

    `length` is the Content-Length: the byte count of the range of `file`, or for a HEAD answer the
    size of the content that a GET would send; None means `len(body)`.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None
    offset: int = 0
    length: int | None = None

    @property
    def content_length(self) -> int:
        return len(self.body) if self.length is None else self.length


class HubHTTPError(Exception):
    """An error answer with the Hub's `X-Error-Code` (raise it from an endpoint)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def to_response(self) -> Response:
        headers = {"X-Error-Code": self.code, "X-Error-Message": _header_safe(self.message), **self.headers}
        return json_response({"error": self.message, **self.extra}, status=self.status, headers=headers)


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer."""
    body = json.dumps(data).encode("utf-8")
    return Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)


def error_for(exc: Exception) -> HubHTTPError | None:
    """The HTTP error matching a store or validation exception, or None when it is unexpected."""
    if isinstance(exc, HubHTTPError):
        return exc
    if isinstance(exc, UnknownRepoError):
        return HubHTTPError(404, "RepoNotFound", str(exc))
    if isinstance(exc, UnknownRevisionError):
        return HubHTTPError(404, "RevisionNotFound", str(exc))
    if isinstance(exc, UnknownEntryError):
        return HubHTTPError(404, "EntryNotFound", str(exc))
    if isinstance(exc, RepoExistsError):
        return HubHTTPError(409, "Conflict", str(exc))
    if isinstance(exc, StaleParentError):
        return HubHTTPError(412, "PreconditionFailed", str(exc))
    if isinstance(exc, ReadOnlyRepoError):
        return HubHTTPError(403, "ReadOnly", str(exc))
    if isinstance(exc, InvalidRepoIdError):
        return HubHTTPError(400, "BadRequest", str(exc))
    if isinstance(exc, UpstreamError):
        return HubHTTPError(502, "UpstreamError", str(exc))
    return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single-range `Range` header into (offset, length).

    Returns:
        None when there is no usable header (multi-range or malformed: the whole file is sent with 200,
        which RFC 9110 allows).

    Raises:
        HubHTTPError: 416 when the range lies outside the file.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = _position(match.group(1)), _position(match.group(2))
    if first is not None:
        start = first
        end = min(last, size - 1) if last is not None else size - 1
        if last is not None and last < start:
            return None  # syntactically invalid range: ignore it, as the RFC says
    else:  # suffix range: the last N bytes
        start, end = max(size - last, 0), size - 1
    if start >= size or end < start:
        raise HubHTTPError(416, "RangeNotSatisfiable", f"Range {header!r} is outside the file of {size} bytes.",
                           headers={"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


def _position(digits: str) -> int | None:
    """A byte position of a Range header; any position past 18 digits is past every file (and int() refuses
    more than 4300 digits)."""
    if not digits:
        return None
    return int(digits) if len(digits) <= 18 else 10**18


def _header_safe(text: str) -> str:
    """Header values must be one latin-1 line without control characters: the HTTP layer refuses to send a NUL
    (e.g. echoed from a percent-decoded path), and the client would get no answer at all."""
    line = " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")
    return _CONTROL.sub("?", line)[:512]
