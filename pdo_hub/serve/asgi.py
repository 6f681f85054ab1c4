"""The ASGI (Starlette) face of the Hub-compatible endpoints.

One catch-all route hands every request to the framework-neutral `hub_app.answer`, which runs in a
worker thread (stores do blocking disk and network I/O). This module only turns ASGI into a
`Request` and a `Response` back into ASGI: the request body is spooled with a size limit, files are
streamed in chunks, HEAD answers carry the true Content-Length and no body, and every error
(including the framework's own 404/405) carries `X-Error-Code` and never a traceback.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from pdo_hub.serve._http import Body, HubHTTPError, Request, Response, ServeConfig
from pdo_hub.serve.hub_app import answer, split_path

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024  # bytes per read when streaming a file
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # all header names and values together; 431 beyond
_SPOOL_IN_MEMORY = 8 * 1024 * 1024  # bodies up to this size never touch the disk
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_DIGITS = re.compile(r"^[0-9]+$")


def create_app(config: ServeConfig, *, record: Callable[[str, str], None] | None = None,
               max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> Starlette:
    """The Starlette app serving `config.store` (run it with uvicorn, or through `HubServer`).

    Args:
        config: Store, base URL, tokens and write policy.
        record: Called with (method, raw path without query) for every request, before anything else.
        max_header_bytes: Largest total size of the request headers (431 beyond).
    """

    async def endpoint(request: StarletteRequest) -> StarletteResponse:
        method = request.method
        raw_path = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
        if record is not None:
            record(method, raw_path)
        body = Body()
        try:
            if sum(len(k) + len(v) for k, v in request.scope["headers"]) > max_header_bytes:
                raise HubHTTPError(431, "RequestHeaderFieldsTooLarge",
                                   f"The request headers are over {max_header_bytes} bytes.")
            if method in _BODY_METHODS:
                body = await _receive_body(request, config.max_body_bytes)
            hub_request = Request(
                method=method,
                segments=split_path(raw_path),
                query=dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)),
                headers=request.headers,
                body=body,
                token=config.tokens.lookup(_bearer(request.headers.get("authorization"))) if config.tokens else None,
                config=config,
            )
            response = await run_in_threadpool(answer, hub_request)
        except HubHTTPError as err:
            response = err.to_response()
        finally:
            body.close()
        return await _to_asgi(response, method)

    return Starlette(
        routes=[Route("/{path:path}", endpoint, methods=_METHODS)],
        exception_handlers={HTTPException: _framework_error, Exception: _unexpected_error},
    )


async def _receive_body(request: StarletteRequest, limit: int) -> Body:
    """Spool the request body (memory, then a temp file), refusing it as soon as it passes `limit`.

    Raises:
        HubHTTPError: 400 for a malformed Content-Length or a client that went away, 413 over `limit`.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DIGITS.match(declared.strip()):
            raise HubHTTPError(400, "BadRequest", f"Invalid Content-Length header {declared[:40]!r}.")
        if int(declared) > limit:
            raise HubHTTPError(413, "PayloadTooLarge", f"Request body of {int(declared)} bytes is over {limit}.")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, prefix="pdo-hub-body-")
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HubHTTPError(413, "PayloadTooLarge", f"Request body is over {limit} bytes.")
            spool.write(chunk)  # page-cache writes of one network chunk: cheap enough for the event loop
    except ClientDisconnect as err:
        spool.close()
        raise HubHTTPError(400, "BadRequest", "The client closed the connection while sending the body.") from err
    except BaseException:
        spool.close()
        raise
    return Body(spool, size)


async def _to_asgi(response: Response, method: str) -> StarletteResponse:
    headers = dict(response.headers)
    headers["Content-Length"] = str(response.content_length)
    if method == "HEAD" or (response.file is None and not response.body):
        return StarletteResponse(b"", response.status, headers)
    if response.file is None:
        return StarletteResponse(response.body, response.status, headers)
    handle = await run_in_threadpool(open, response.file, "rb")  # fails here, before any header is sent
    return StreamingResponse(_read_range(handle, response.offset, response.content_length), response.status,
                             headers)


def _read_range(handle: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    """Yield `length` bytes from `offset` in chunks (Starlette runs each step in a worker thread)."""
    with handle:
        handle.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK_SIZE, remaining))
            if not chunk:  # headers are sent already: all we can do is cut the connection
                raise OSError(f"{handle.name} is shorter than announced ({length - remaining} of {length} bytes)")
            remaining -= len(chunk)
            yield chunk


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


async def _framework_error(request: StarletteRequest, exc: Exception) -> StarletteResponse:
    """Starlette's own refusals (no route, method not allowed) as Hub error answers."""
    status = getattr(exc, "status_code", 400)
    code = {404: "NotFound", 405: "MethodNotAllowed"}.get(status, "BadRequest")
    detail = getattr(exc, "detail", "") or code
    error = HubHTTPError(status, code, f"{detail}: {request.method} {request.scope.get('path', '')}",
                         headers=dict(getattr(exc, "headers", None) or {}))
    return await _to_asgi(error.to_response(), request.method)


async def _unexpected_error(request: StarletteRequest, exc: Exception) -> StarletteResponse:
    logger.error("Unexpected error on %s %s", request.method, request.scope.get("path"), exc_info=exc)
    error = HubHTTPError(500, "InternalError", "Internal server error (see the server log).")
    return await _to_asgi(error.to_response(), request.method)
