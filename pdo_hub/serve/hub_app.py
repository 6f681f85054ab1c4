"""The Hub-compatible endpoints: routing and the download endpoints, free of any web framework.

`answer(request)` turns a parsed `Request` into a `Response`; `asgi.py` adapts it to Starlette.
Routes follow hub-protocol.md. Routing is done on the RAW path: it is split on `/` first and each
segment is percent-decoded afterwards, because clients send revisions such as `refs/pr/1` as one
segment `refs%2Fpr%2F1` and tree sub-paths as `1_Pooling%2Fconfig.json`.
"""

from __future__ import annotations

import logging
import mimetypes
from urllib.parse import unquote

from pdo_hub.serve import _access, _payloads, _uploads
from pdo_hub.serve._access import check_read
from pdo_hub.serve._http import HubHTTPError, Request, Response, error_for, json_response, parse_range
from pdo_hub.serve._records import UnknownEntryError, validate_path

logger = logging.getLogger(__name__)

#: Words that may follow a repo id in /api/models/...; used to tell `name/<action>` from `org/name`.
_API_ACTIONS = {"revision", "tree", "refs", "preupload", "commit", "commits"}


def split_path(raw_path: str) -> list[str]:
    """Split a raw request path on `/`, then percent-decode each segment (strict UTF-8).

    Raises:
        HubHTTPError: 400 when a segment does not decode to UTF-8 text.
    """
    try:
        return [unquote(part, errors="strict") for part in raw_path.split("/") if part]
    except UnicodeDecodeError as err:
        raise HubHTTPError(400, "BadRequest", "The request path has a percent-encoding that is not UTF-8.") from err


def answer(request: Request) -> Response:
    """The response to a request: the endpoint's answer, or the error it raised as a Hub error answer.

    Unexpected exceptions become a 500 with a generic message (the details go to the log only).
    """
    try:
        return route(request)
    except Exception as exc:  # every failure becomes an answer; the connection stays usable
        http_error = error_for(exc)
        if http_error is None:
            logger.exception("Internal error on %s /%s", request.method, "/".join(request.segments))
            http_error = HubHTTPError(500, "InternalError", "Internal server error (see the server log).")
        return http_error.to_response()


def route(request: Request) -> Response:
    """Dispatch a request to its endpoint.

    Raises:
        HubHTTPError: The route does not exist or the endpoint refused the request.
    """
    seg, method = request.segments, request.method
    extra = request.config.extra_routes.get((method, "/" + "/".join(seg)))
    if extra is not None:
        return extra(request)
    if seg[:1] == ["api"]:
        if seg == ["api", "whoami-v2"] and method == "GET":
            return json_response(_access.whoami(request))
        if seg == ["api", "models"] and method == "GET":
            return list_models(request)
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


def model_info(request: Request, repo_id: str, revision: str | None) -> Response:
    """GET /api/models/{repo}[/revision/{rev}]."""
    check_read(request, repo_id, content=False)
    store = request.store
    commit = store.get_commit(repo_id, store.resolve(repo_id, revision))
    return json_response(_payloads.model_info(store, repo_id, commit, store.settings(repo_id)))


def list_models(request: Request) -> Response:
    """GET /api/models[?author=&search=]: the repos the caller may see (one page: no pagination)."""
    author, search = request.query.get("author"), request.query.get("search", "").lower()
    found = []
    for repo_id in request.store.list_repos():
        if (author and _access.namespace_of(repo_id) != author) or search not in repo_id.lower():
            continue
        try:
            check_read(request, repo_id, content=False)
        except HubHTTPError:
            continue  # private and not covered by the caller's token: not listed
        found.append({"id": repo_id, "modelId": repo_id, "private": request.store.settings(repo_id).private})
    return json_response(found)


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
    if request.method == "HEAD":  # the true size, and no content to locate (a pass-through store would fetch it)
        return Response(200, headers, length=entry.size)
    window = parse_range(request.headers.get("Range"), entry.size)
    blob = store.open_file(repo_id, sha, entry)
    if window is None:
        return Response(200, headers, file=blob, offset=0, length=entry.size)
    offset, length = window
    headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{entry.size}"
    return Response(206, headers, file=blob, offset=offset, length=length)
