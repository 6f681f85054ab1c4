"""Who may read and write what: the access rules of the Hub-compatible server.

- Public repos: anyone may read metadata; gated repos' files need a valid token.
- Private repos: readable only with a token covering the repo's namespace. Everyone else gets the
  same 404 RepoNotFound as for a missing repo, so a private repo's existence never leaks.
- Writes need a token with the `write` scope covering the namespace (401 without a valid token,
  403 when the token lacks the scope or the namespace). A server without tokens accepts no writes
  unless it was started with `allow_anonymous_writes`, and a store that is not writable none at all.
"""

from __future__ import annotations

from pdo_hub.serve._http import HubHTTPError, Request
from pdo_hub.serve._records import UnknownRepoError
from pdo_hub.serve.store_protocol import is_writable

_ANONYMOUS_WRITER = "local"  # whoami name on a server that lets anyone write


def namespace_of(repo_id: str) -> str:
    """The org or user part of a repo id (`""` for a repo without one)."""
    return repo_id.rpartition("/")[0]


def not_found(repo_id: str) -> HubHTTPError:
    """The answer for a repo that is missing or that the caller may not see (the same on purpose)."""
    return HubHTTPError(404, "RepoNotFound", f"Repository {repo_id!r} not found. If it is private or gated, "
                                             "send a token that grants access to it.")


def check_read(request: Request, repo_id: str, *, content: bool) -> None:
    """Refuse private repos to callers whose token does not cover them, and gated files without a token.

    Raises:
        HubHTTPError: 404 RepoNotFound (missing, or private and not covered), 401 GatedRepo (gated file).
    """
    try:
        settings = request.store.settings(repo_id)
    except UnknownRepoError as err:
        raise not_found(repo_id) from err
    token = request.token
    if settings.private and (token is None or not token.covers(namespace_of(repo_id))):
        raise not_found(repo_id)
    if content and settings.gated and token is None:
        raise HubHTTPError(401, "GatedRepo", f"Access to files of gated repo {repo_id!r} needs a valid token.")


def require_write(request: Request, repo_id: str) -> None:
    """Allow a write to `repo_id` or raise the matching refusal.

    Raises:
        HubHTTPError: 403 ReadOnly (store or server accepts no writes), 401 Unauthorized (no valid token),
            403 Forbidden (read-only token, or a namespace the token does not cover).
    """
    config, token = request.config, request.token
    if not is_writable(config.store):
        raise HubHTTPError(403, "ReadOnly", "This server serves a read-only store: pushes are not accepted.")
    if token is None:
        if config.allow_anonymous_writes:
            return
        if not config.tokens:
            raise HubHTTPError(403, "ReadOnly", "This server is read-only: it was started without write tokens, "
                                                "so nobody may create repos or commit.")
        raise HubHTTPError(401, "Unauthorized", "Invalid credentials in Authorization header: writes need a valid "
                                                "token with the 'write' scope.")
    if not token.can_write:
        raise HubHTTPError(403, "Forbidden", f"The token of {token.user!r} is read-only: writes need a token with "
                                             "the 'write' scope.")
    namespace = namespace_of(repo_id)
    if not token.covers(namespace):
        allowed = ", ".join([token.user, *token.orgs])
        shown = repo_id if not namespace else f"namespace {namespace!r}"
        raise HubHTTPError(403, "Forbidden", f"The token of {token.user!r} may not write to {shown}; it covers: "
                                             f"{allowed}.")


def whoami(request: Request) -> dict:
    """The `/api/whoami-v2` document for the request's token.

    Raises:
        HubHTTPError: 401 when there is no valid token (and anonymous writes are off).
    """
    token = request.token
    if token is None:
        if not request.config.allow_anonymous_writes:
            raise HubHTTPError(401, "Unauthorized", "Invalid credentials in Authorization header")
        name, role, orgs = _ANONYMOUS_WRITER, "write", []
    else:
        name, role, orgs = token.user, "write" if token.can_write else "read", token.orgs
    return {"type": "user", "id": name, "name": name, "fullname": name,
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": role} for org in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": name, "role": role}}}
