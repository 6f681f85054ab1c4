"""Upload endpoints: whoami, create repo, README metadata check, preupload and commit.

Preupload answers `uploadMode: "regular"` for every file, so clients send content inline as base64
in the commit and never go through Xet or the LFS batch API (Xet uploads have no fallback: a server
without Xet must not ask for LFS mode). Large files therefore travel in memory; fine for a mirror's
own pushes, not meant for multi-GB uploads.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from urllib.parse import quote

import yaml

from pdo_hub.serve._http import HubHTTPError, Request, Response, json_response
from pdo_hub.serve._payloads import parse_front_matter
from pdo_hub.serve._records import RepoExistsError, UnknownEntryError, is_commit_sha, validate_path, validate_repo_id

logger = logging.getLogger(__name__)

_LOCAL_USER = "local"  # whoami name on a server started without tokens (anyone may write)


def require_writer(request: Request) -> str | None:
    """The user allowed to write, or None on an open server.

    Raises:
        HubHTTPError: 401 when the server has tokens and the request carries no valid one.
    """
    if request.open_writes or request.user is not None:
        return request.user
    raise HubHTTPError(401, "Unauthorized", "Invalid credentials in Authorization header")


def whoami(request: Request) -> Response:
    """GET /api/whoami-v2."""
    name = request.user or (_LOCAL_USER if request.open_writes else None)
    if name is None:
        raise HubHTTPError(401, "Unauthorized", "Invalid credentials in Authorization header")
    return json_response({"type": "user", "id": name, "name": name, "fullname": name, "orgs": [],
                          "auth": {"type": "access_token", "accessToken": {"role": "write"}}})


def create_repo(request: Request) -> Response:
    """POST /api/repos/create {"name", "organization", "visibility"?, "private"?, "type"?}.

    Without an organization the repo goes to the token's user; on an open server (no tokens) it gets
    no namespace, so that the client's later calls with the bare name find it.
    """
    user = require_writer(request)
    data = request.json()
    if data.get("type") not in (None, "model"):
        raise HubHTTPError(400, "BadRequest", f"This server only hosts model repos, not {data.get('type')!r}.")
    name, organization = data.get("name"), data.get("organization") or user
    repo_id = validate_repo_id(f"{organization}/{name}" if organization else str(name))
    private = data.get("visibility") == "private" or bool(data.get("private"))
    url = f"{request.base_url}/{repo_id}"
    try:
        request.store.create_repo(repo_id, private=private)
    except RepoExistsError as err:
        # `create_repo(exist_ok=True)` reads the url from this 409 answer.
        raise HubHTTPError(409, "Conflict", f"You already created this model repo: {repo_id}",
                           extra={"url": url}) from err
    return json_response({"url": url, "name": repo_id, "id": repo_id})


def validate_yaml(request: Request) -> Response:
    """POST /api/validate-yaml {"content", "repoType"}: check the README's metadata block parses."""
    content = request.json().get("content", "")
    try:
        parse_front_matter(str(content))
    except yaml.YAMLError as err:
        message = f"Invalid YAML metadata: {err}"
        # The client reads `errors[].message` from a 400 answer.
        return json_response({"error": message, "errors": [{"message": message}], "warnings": []}, status=400,
                             headers={"X-Error-Code": "BadRequest"})
    return json_response({"errors": [], "warnings": []})


def preupload(request: Request, repo_id: str, revision: str) -> Response:
    """POST /api/models/{repo}/preupload/{rev}: every file goes "regular" (inline base64 in the commit).

    The current file's git sha1 comes back as `oid`, so the client drops unchanged files from the commit.
    """
    require_writer(request)
    store = request.store
    files_now = store.get_commit(repo_id, store.resolve(repo_id, revision)).files
    answers = []
    for item in request.json().get("files", []):
        path = validate_path(item.get("path"))
        existing = files_now.get(path)
        answers.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                        "oid": existing.oid if existing else None})
    return json_response({"files": answers})


def commit(request: Request, repo_id: str, revision: str) -> Response:
    """POST /api/models/{repo}/commit/{rev}: NDJSON header, file, lfsFile, deletedFile, deletedFolder lines."""
    require_writer(request)
    store = request.store
    if is_commit_sha(revision) or revision in store.refs(repo_id).tags:
        raise HubHTTPError(400, "BadRequest", f"Can only commit to a branch, not to {revision!r}.")
    header, add, delete, delete_folders = _parse_commit_lines(request)
    branch, pr_url = revision, None
    if request.flag("create_pr"):
        branch = store.open_pull_request(repo_id, revision)
        pr_url = f"{request.base_url}/{repo_id}/discussions/{branch.rsplit('/', 1)[-1]}"
    try:
        sha = store.commit(repo_id, branch=branch, add=add, delete=delete, delete_folders=delete_folders,
                           message=str(header.get("summary") or "Upload files"),
                           description=str(header.get("description") or ""),
                           parent_commit=header.get("parentCommit"))
    except UnknownEntryError as err:
        raise HubHTTPError(404, "EntryNotFound", f"{err} A file with this name doesn't exist.") from err
    logger.info("Commit %s on %s@%s from %s", sha, repo_id, branch, request.user or "anonymous")
    return json_response({"commitOid": sha, "commitUrl": f"{request.base_url}/{repo_id}/commit/{sha}",
                          "pullRequestUrl": pr_url, "success": True,
                          "ref": quote(branch, safe="")})


def _parse_commit_lines(request: Request) -> tuple[dict, dict, list[str], list[str]]:
    header: dict = {}
    add: dict = {}
    delete: list[str] = []
    delete_folders: list[str] = []
    for number, line in enumerate(request.body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as err:
            raise HubHTTPError(400, "BadRequest", f"Commit line {number} is not a {{key, value}} JSON object.") from err
        if key == "header":
            header = value
        elif key == "file":
            add[validate_path(value.get("path"))] = _decode_content(value)
        elif key == "lfsFile":
            add[validate_path(value.get("path"))] = _stored_lfs_blob(request, value)
        elif key == "deletedFile":
            delete.append(validate_path(value.get("path")))
        elif key == "deletedFolder":
            delete_folders.append(validate_path(str(value.get("path", "")).rstrip("/")))
        else:
            raise HubHTTPError(400, "BadRequest", f"Commit line {number} has unsupported key {key!r}.")
    return header, add, delete, delete_folders


def _decode_content(value: dict) -> bytes:
    encoding = value.get("encoding", "base64")
    content = value.get("content", "")
    if encoding != "base64":
        return str(content).encode("utf-8")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HubHTTPError(400, "BadRequest", f"Content of {value.get('path')!r} is not valid base64.") from err


def _stored_lfs_blob(request: Request, value: dict):
    """An `lfsFile` line names content by sha256; it must already be stored (we never ask for LFS uploads)."""
    oid = str(value.get("oid", ""))
    try:
        blob = request.store.blob_path(oid)
    except ValueError as err:
        raise HubHTTPError(400, "BadRequest", f"lfsFile {value.get('path')!r} has an invalid sha256 oid.") from err
    if not blob.is_file():
        raise HubHTTPError(422, "LfsObjectMissing",
                           f"LFS object {oid} for {value.get('path')!r} was never uploaded; upload it inline.")
    return blob
