"""Upload endpoints: create repo, README metadata check, preupload and commit.

Preupload answers `uploadMode: "regular"` for every file, so clients send content inline as base64
in the commit and never go through Xet or the LFS batch API (Xet uploads have no fallback: a server
without Xet must not ask for LFS mode). The commit body is spooled to disk while it arrives and
parsed line by line (`_commit_lines`), so big files cost disk space, not memory.

Every endpoint asks `_access.require_write` first: who may write is decided there.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from urllib.parse import quote

import yaml

from pdo_hub.serve._access import require_write
from pdo_hub.serve._commit_lines import parse_commit
from pdo_hub.serve._http import HubHTTPError, Request, Response, json_response
from pdo_hub.serve._payloads import parse_front_matter
from pdo_hub.serve._records import RepoExistsError, UnknownEntryError, is_commit_sha, validate_path, validate_repo_id

logger = logging.getLogger(__name__)


def create_repo(request: Request) -> Response:
    """POST /api/repos/create {"name", "organization", "visibility"?, "private"?, "type"?}.

    Without an organization the repo goes to the token's user; without a token (a server that
    allows anonymous writes) it gets no namespace, so that the client's later calls with the bare
    name find it.
    """
    data = request.json()
    if data.get("type") not in (None, "model"):
        raise HubHTTPError(400, "BadRequest", f"This server only hosts model repos, not {data.get('type')!r}.")
    name, organization = data.get("name"), data.get("organization") or (request.token and request.token.user)
    if not isinstance(name, str) or not isinstance(organization, (str, type(None))):
        raise HubHTTPError(400, "BadRequest", "'name' and 'organization' must be strings.")
    repo_id = validate_repo_id(f"{organization}/{name}" if organization else name)
    require_write(request, repo_id)
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
    require_write(request, repo_id)
    store = request.store
    files_now = store.get_commit(repo_id, store.resolve(repo_id, revision)).files
    items = request.json().get("files", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise HubHTTPError(400, "BadRequest", "'files' must be a list of {path, sample, size} objects.")
    answers = []
    for item in items:
        path = validate_path(item.get("path"))
        existing = files_now.get(path)
        answers.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                        "oid": existing.oid if existing else None})
    return json_response({"files": answers})


def commit(request: Request, repo_id: str, revision: str) -> Response:
    """POST /api/models/{repo}/commit/{rev}: NDJSON header, file, lfsFile, deletedFile, deletedFolder lines."""
    require_write(request, repo_id)
    store = request.store
    if is_commit_sha(revision) or revision in store.refs(repo_id).tags:
        raise HubHTTPError(400, "BadRequest", f"Can only commit to a branch, not to {revision!r}.")
    with tempfile.TemporaryDirectory(prefix="pdo-hub-commit-") as staging:
        plan = parse_commit(request.body, Path(staging))
        for path, oid in plan.lfs.items():
            if not store.has_blob(oid):  # we never ask for LFS uploads, so the content must already be here
                raise HubHTTPError(422, "LfsObjectMissing",
                                   f"LFS object {oid} for {path!r} was never uploaded; upload it inline.")
            plan.add[path] = store.blob_path(oid)
        branch, pr_url = revision, None
        if request.flag("create_pr"):
            branch = store.open_pull_request(repo_id, revision)
            pr_url = f"{request.base_url}/{repo_id}/discussions/{branch.rsplit('/', 1)[-1]}"
        try:
            sha = store.commit(repo_id, branch=branch, add=plan.add, delete=plan.delete,
                               delete_folders=plan.delete_folders,
                               message=plan.header.get("summary") or "Upload files",
                               description=plan.header.get("description") or "",
                               parent_commit=plan.header.get("parentCommit"))
        except UnknownEntryError as err:
            raise HubHTTPError(404, "EntryNotFound", f"{err} A file with this name doesn't exist.") from err
    who = request.token.user if request.token else "anonymous"
    logger.info("Commit %s on %s@%s from %s", sha, repo_id, branch, who)
    return json_response({"commitOid": sha, "commitUrl": f"{request.base_url}/{repo_id}/commit/{sha}",
                          "pullRequestUrl": pr_url, "success": True, "ref": quote(branch, safe="")})
