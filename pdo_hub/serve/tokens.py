"""Bearer tokens of the Hub-compatible server and what each one may do.

`HubServer(tokens=...)` and `parse_tokens` accept:

- a list of tokens: each is user `"user"`, may read and write every namespace (the simple form);
- `{token: "alice"}`: the same rights, under a user name;
- `{token: {"user": "alice", "scopes": ["read"] or ["read", "write"], "namespaces": ["org", ...]}}`:
  `namespaces` lists the orgs the token may act on (the user's own name always counts); leave it out
  (or null) for every namespace; `scopes` defaults to read and write;
- `{token: TokenScope(...)}`.

A token file for `load_token_file` (what `pdo-hub serve` reads) is TOML, or JSON when its name ends
in `.json` (same structure, `{"tokens": {...}}`):

```toml
[tokens."hf_read_3f9a"]          # the token string, as clients send it
user = "alice"
scopes = ["read"]                # may read private repos of alice and my-org, never write
namespaces = ["my-org"]

[tokens."hf_ci_77c1"]
user = "ci-bot"
scopes = ["read", "write"]       # may push to ci-bot/* and my-org/* only
namespaces = ["my-org"]
```
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pdo_hub.core.errors import ConfigError

_SCOPES = frozenset({"read", "write"})
DEFAULT_USER = "user"  # user name of tokens given as a plain list


@dataclass(frozen=True)
class TokenScope:
    """What one token may do.

    Attributes:
        user: User name (whoami answers it; it is also a namespace the token always covers).
        scopes: `{"read"}` or `{"read", "write"}` ("write" implies "read").
        namespaces: Orgs the token covers besides `user`; None covers every namespace.
    """

    user: str
    scopes: frozenset[str] = _SCOPES
    namespaces: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.user, str) or not self.user.strip():
            raise ConfigError(f"Token user must be a non-empty string, got {self.user!r}.")
        scopes = frozenset([self.scopes] if isinstance(self.scopes, str) else self.scopes)
        if not scopes or not scopes <= _SCOPES:
            raise ConfigError(f"Token scopes of {self.user!r} must be 'read' and/or 'write', got {sorted(scopes)}.")
        object.__setattr__(self, "scopes", scopes | {"read"})
        if self.namespaces is not None:
            if isinstance(self.namespaces, str) or not all(isinstance(n, str) and n for n in self.namespaces):
                raise ConfigError(f"Token namespaces of {self.user!r} must be a list of org names or null.")
            object.__setattr__(self, "namespaces", frozenset(self.namespaces))

    @property
    def can_write(self) -> bool:
        """Whether the token has the `write` scope."""
        return "write" in self.scopes

    @property
    def orgs(self) -> list[str]:
        """The orgs listed for the token (empty when it covers every namespace)."""
        return sorted(self.namespaces - {self.user}) if self.namespaces else []

    def covers(self, namespace: str) -> bool:
        """Whether the token acts on repos of `namespace` (`""` for repos without one)."""
        return self.namespaces is None or namespace == self.user or namespace in self.namespaces


class TokenTable:
    """Valid tokens and their scopes.

    Only sha256 digests of the tokens are kept: looking a token up hashes it first, so neither the
    stored secrets nor a character-by-character comparison of them is ever exposed.
    """

    def __init__(self, scopes: Mapping[str, TokenScope]) -> None:
        for token in scopes:
            if not isinstance(token, str) or not token or any(c.isspace() for c in token):
                raise ConfigError("Tokens must be non-empty strings without whitespace (they travel in a header).")
        self._by_digest = {_digest(token): scope for token, scope in scopes.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str | None) -> TokenScope | None:
        """The scope of a presented token, or None when it is missing or unknown."""
        return None if not token else self._by_digest.get(_digest(token))


def parse_tokens(spec: TokenTable | Mapping[str, object] | Iterable[str] | None) -> TokenTable | None:
    """Build the token table from any accepted form (see the module docstring); None stays None.

    Raises:
        ConfigError: A token, user, scope or namespace list is malformed.
    """
    if spec is None or isinstance(spec, TokenTable):
        return spec
    if isinstance(spec, str):
        raise ConfigError("tokens must be a list or a mapping of tokens, not a single string.")
    if not isinstance(spec, Mapping):
        return TokenTable({str(token): TokenScope(DEFAULT_USER) for token in spec})
    return TokenTable({str(token): _scope(value) for token, value in spec.items()})


def load_token_file(path: str | os.PathLike[str]) -> TokenTable:
    """Read a token file (TOML, or JSON for `*.json`) with a `tokens` table, as in the module docstring.

    Raises:
        ConfigError: The file is missing, does not parse, or has no `tokens` table.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"Cannot read token file {path}: {err}") from err
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict):
        raise ConfigError(f"Token file {path} needs a 'tokens' table mapping each token to its user and scopes.")
    return TokenTable({str(token): _scope(value) for token, value in tokens.items()})


def _scope(value: object) -> TokenScope:
    if isinstance(value, TokenScope):
        return value
    if isinstance(value, str):
        return TokenScope(value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"user", "scopes", "namespaces"}
        if unknown:
            raise ConfigError(f"Unknown keys {sorted(unknown)} for a token; known keys are user, scopes, namespaces.")
        return TokenScope(user=value.get("user", DEFAULT_USER), scopes=value.get("scopes", _SCOPES),
                          namespaces=value.get("namespaces"))
    raise ConfigError(f"A token must map to a user name, a {{user, scopes, namespaces}} table or a TokenScope, "
                      f"got {type(value).__name__}.")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
