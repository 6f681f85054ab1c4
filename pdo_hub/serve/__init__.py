"""A Hub-compatible HTTP endpoint over stores of model repos (the base of `pdo-hub serve`).

Stock huggingface_hub and transformers clients download from it, and push to it, once `HF_ENDPOINT`
points at `HubServer.url`. What is served is any `ReadableRepoStore`: a `RepoStore` of pushed repos,
an `UpstreamStore` passing another Hub through, or a `StoreChain` of several.
"""

from pdo_hub.serve._records import (
    CommitRecord,
    FileEntry,
    ReadOnlyRepoError,
    RepoExistsError,
    RepoRefs,
    RepoSettings,
    RepoStoreError,
    StaleParentError,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    UpstreamError,
    validate_path,
    validate_repo_id,
)
from pdo_hub.serve.asgi import create_app
from pdo_hub.serve.repo_store import RepoStore
from pdo_hub.serve.server import HubServer, is_loopback
from pdo_hub.serve.store_chain import StoreChain
from pdo_hub.serve.store_protocol import ReadableRepoStore, WritableRepoStore, is_writable
from pdo_hub.serve.tokens import TokenScope, TokenTable, load_token_file, parse_tokens
from pdo_hub.serve.upstream_store import UpstreamStore

__all__ = [
    "CommitRecord",
    "FileEntry",
    "HubServer",
    "ReadOnlyRepoError",
    "ReadableRepoStore",
    "RepoExistsError",
    "RepoRefs",
    "RepoSettings",
    "RepoStore",
    "RepoStoreError",
    "StaleParentError",
    "StoreChain",
    "TokenScope",
    "TokenTable",
    "UnknownEntryError",
    "UnknownRepoError",
    "UnknownRevisionError",
    "UpstreamError",
    "UpstreamStore",
    "WritableRepoStore",
    "create_app",
    "is_loopback",
    "is_writable",
    "load_token_file",
    "parse_tokens",
    "validate_path",
    "validate_repo_id",
]
