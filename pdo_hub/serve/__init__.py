"""A Hub-compatible HTTP endpoint over a local store of model repos (the base of `pdo-hub serve`).

Stock huggingface_hub and transformers clients download from it, and push to it, once `HF_ENDPOINT`
points at `HubServer.url`.
"""

from pdo_hub.serve._records import (
    FileEntry,
    RepoExistsError,
    RepoStoreError,
    StaleParentError,
    UnknownEntryError,
    UnknownRepoError,
    UnknownRevisionError,
    validate_path,
    validate_repo_id,
)
from pdo_hub.serve.repo_store import RepoStore
from pdo_hub.serve.server import HubServer

__all__ = [
    "FileEntry",
    "HubServer",
    "RepoExistsError",
    "RepoStore",
    "RepoStoreError",
    "StaleParentError",
    "UnknownEntryError",
    "UnknownRepoError",
    "UnknownRevisionError",
    "validate_path",
    "validate_repo_id",
]
