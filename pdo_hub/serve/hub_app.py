"""The Hub-compatible HTTP handler: routing and the download endpoints.

Routes follow hub-protocol.md. Routing is done on the RAW path: it is split on `/` first and each
segment is percent-decoded afterwards, because clients send revisions such as `refs/pr/1` as one
segment `refs%2Fpr%2F1` and tree sub-paths as `1_Pooling%2Fconfig.json`.
"""

from __future__ import annotations

import logging
import mimetypes
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from pdo_hub.serve import _payloads, _uploads
from pdo_hub.serve._http import HubHTTPError, Request, Response, error_for, json_response, parse_range
from pdo_hub.serve._records import UnknownEntryError, validate_path

if TYPE_CHECKING:
    from pdo_hub.serve.server import _HubHTTPServer

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024
_MAX_BODY = 2 * 1024**3  # inline base64 commits of large files are held in memory: refuse absurd sizes
#: Words that may follow a repo id in /api/models/...; used to tell `name/<action>` from `org/name`.
_API_ACTIONS = {"revision", "tree", "refs", "preupload", "commit", "commits"}


class HubRequestHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests (keep-alive, HTTP/1.1) for a `_HubHTTPServer`."""

    server: _HubHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "pdo-hub"
    # An idle keep-alive connection ends after this many seconds instead of holding a thread forever.
    timeout = 60

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        logger.debug("%s - %s", self.address_string(), format % args)

    def _handle(self) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        self.server.record_request(self.command, raw_path)
        try:
            body = self._read_body()
            request = self._build_request(raw_path, raw_query, body)
            response = route(request)
        except Exception as exc:  # every failure becomes an answer; the connection stays usable
            http_error = error_for(exc)
            if http_error is None:
                logger.exception("Internal error on %s %s", self.command, raw_path)
                http_error = HubHTTPError(500, "InternalError", f"Internal server error: {type(exc).__name__}")
            response = http_error.to_response()
        self._send(response)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            raise HubHTTPError(413, "PayloadTooLarge", f"Request body of {length} bytes is over {_MAX_BODY}.")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                self.close_connection = True
                raise HubHTTPError(413, "PayloadTooLarge", f"Chunked request body is over {_MAX_BODY} bytes.")
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _build_request(self, raw_path: str, raw_query: str, body: bytes) -> Request:
        segments = [unquote(part) for part in raw_path.split("/") if part]
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return Request(
            method=self.command,
            segments=segments,
            query=dict(parse_qsl(raw_query, keep_blank_values=True)),
            headers=self.headers,
            body=body,
            user=self.server.user_for(token),
            base_url=f"http://{host}",
            store=self.server.store,
            open_writes=self.server.tokens is None,
        )

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(response.content_length))
            self.end_headers()
            if self.command == "HEAD":
                return
            if response.file is None:
                self.wfile.write(response.body)
                return
            with open(response.file, "rb") as handle:
                handle.seek(response.offset)
                remaining = response.length
                while remaining > 0:
                    chunk = handle.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"{response.file} is shorter than expected")
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("Client closed the connection during %s %s", self.command, self.path)
            self.close_connection = True


def route(request: Request) -> Response:
    """Dispatch a request to its endpoint.

    Raises:
        HubHTTPError: The route does not exist or the endpoint refused the request.
    """
    seg, method = request.segments, request.method
    if seg[:1] == ["api"]:
        if seg == ["api", "whoami-v2"] and method == "GET":
            return _uploads.whoami(request)
        if seg == ["api", "repos", "create"] and method == "POST":
            return _uploads.create_repo(request)
        if seg == ["api", "validate-yaml"] and method == "POST":
            return _uploads.validate_yaml(request)
        if len(seg) >= 3 and seg[1] in ("datasets", "spaces"):
            raise HubHTTPError(404, "RepoNotFound", f"This server only serves model repos, not {seg[1]}.")
        if len(seg) >= 3 and seg[1] == "models":
            return _route_model_api(request, seg[2:])
    elif len(seg) >= 4 and method in ("GET", "HEAD"):
        split = _resolve_split(request, seg)
        if split is not None:
            repo_id, revision, path = split
            return resolve_file(request, repo_id, revision, path)
    raise HubHTTPError(404, "NotFound", f"No route for {method} /{'/'.join(seg)}.")


def _route_model_api(request: Request, parts: list[str]) -> Response:
    repo_id, rest = _split_repo(request, parts)
    method = request.method
    if not rest and method in ("GET", "HEAD"):
        return model_info(request, repo_id, None)
    action = rest[0] if rest else ""
    if action == "revision" and len(rest) == 2 and method in ("GET", "HEAD"):
        return model_info(request, repo_id, rest[1])
    if action == "tree" and len(rest) >= 2 and method == "GET":
        return list_tree(request, repo_id, rest[1], "/".join(rest[2:]))
    if action == "refs" and len(rest) == 1 and method == "GET":
        return list_refs(request, repo_id)
    if action == "commits" and len(rest) == 2 and method == "GET":
        return list_commits(request, repo_id, rest[1])
    if action == "preupload" and len(rest) == 2 and method == "POST":
        return _uploads.preupload(request, repo_id, rest[1])
    if action == "commit" and len(rest) == 2 and method == "POST":
        return _uploads.commit(request, repo_id, rest[1])
    raise HubHTTPError(404, "NotFound", f"No route for {method} /api/models/{'/'.join(parts)}.")


def _split_repo(request: Request, parts: list[str]) -> tuple[str, list[str]]:
    """Split `[org, name, action, ...]` or `[name, action, ...]` into (repo_id, rest).

    A second segment that is an action word (`revision`, `tree`, ...) means a repo without a
    namespace, unless a repo `first/second` really exists.
    """
    if len(parts) >= 2 and (parts[1] not in _API_ACTIONS or request.store.exists(f"{parts[0]}/{parts[1]}")):
        return f"{parts[0]}/{parts[1]}", parts[2:]
    return parts[0], parts[1:]


def _resolve_split(request: Request, seg: list[str]) -> tuple[str, str, str] | None:
    """Find `{repo}/resolve/{rev}/{path}` in the segments, for `name` and `org/name` repo ids."""
    two_part = len(seg) >= 5 and seg[2] == "resolve"
    if two_part and (seg[1] != "resolve" or request.store.exists(f"{seg[0]}/{seg[1]}")):
        return f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:])
    if seg[1] == "resolve":
        return seg[0], seg[2], "/".join(seg[3:])
    return None


def check_read(request: Request, repo_id: str, *, content: bool) -> None:
    """Refuse private repos without a valid token, and gated repos' files without one.

    Raises:
        HubHTTPError: 404 RepoNotFound (missing), 401 RepoNotFound (private), 401 GatedRepo (gated file).
    """
    settings = request.store.settings(repo_id)  # UnknownRepoError -> 404 RepoNotFound
    if request.user is not None:
        return
    if settings.private:
        raise HubHTTPError(401, "RepoNotFound", f"Repository {repo_id!r} is private: send a valid token.")
    if content and settings.gated:
        raise HubHTTPError(401, "GatedRepo", f"Access to files of gated repo {repo_id!r} needs a valid token.")


def model_info(request: Request, repo_id: str, revision: str | None) -> Response:
    """GET /api/models/{repo}[/revision/{rev}]."""
    check_read(request, repo_id, content=False)
    store = request.store
    commit = store.get_commit(repo_id, store.resolve(repo_id, revision))
    return json_response(_payloads.model_info(store, repo_id, commit, store.settings(repo_id)))


def list_tree(request: Request, repo_id: str, revision: str, path: str) -> Response:
    """GET /api/models/{repo}/tree/{rev}[/{path}]?recursive= (one page: no pagination)."""
    check_read(request, repo_id, content=False)
    store = request.store
    commit = store.get_commit(repo_id, store.resolve(repo_id, revision))
    if path:
        validate_path(path)
    return json_response(_payloads.tree(commit, path, request.flag("recursive")))


def list_refs(request: Request, repo_id: str) -> Response:
    """GET /api/models/{repo}/refs[?include_prs=1]."""
    check_read(request, repo_id, content=False)
    return json_response(_payloads.refs(request.store.refs(repo_id), request.flag("include_prs")))


def list_commits(request: Request, repo_id: str, revision: str) -> Response:
    """GET /api/models/{repo}/commits/{rev} (one page: no pagination)."""
    check_read(request, repo_id, content=False)
    return json_response(_payloads.commits(request.store.history(repo_id, revision)))


def resolve_file(request: Request, repo_id: str, revision: str, path: str) -> Response:
    """HEAD/GET /{repo}/resolve/{rev}/{path}: metadata headers, the content, or a byte range of it."""
    check_read(request, repo_id, content=True)
    store = request.store
    sha = store.resolve(repo_id, revision)
    try:
        entry = store.file_entry(repo_id, sha, path)
    except UnknownEntryError as err:
        # The client needs the commit to write its `.no_exist` marker for this revision.
        raise HubHTTPError(404, "EntryNotFound", str(err), headers={"X-Repo-Commit": sha}) from err
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers = {
        "X-Repo-Commit": sha,
        "ETag": f'"{entry.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": content_type,
        "Cache-Control": "public, max-age=31536000, immutable" if revision == sha else "no-cache",
    }
    blob = store.blob_path(entry.sha256)
    window = None if request.method == "HEAD" else parse_range(request.headers.get("Range"), entry.size)
    if window is None:
        return Response(200, headers, file=blob, offset=0, length=entry.size)
    offset, length = window
    headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{entry.size}"
    return Response(206, headers, file=blob, offset=offset, length=length)
