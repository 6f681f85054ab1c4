"""JSON documents of the Hub API built from the repo store: model info, tree listings, refs.

Field names and formats follow what huggingface_hub 2.4 parses (see hub-protocol.md): `sha` is the
lowercase commit sha, `lastModified` ends in `Z`, tree entries carry a git sha1 `oid` and LFS files an
`lfs` block with the sha256. No `xetHash` is ever sent, so clients download over plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

import yaml

from pdo_hub.core.yaml_text import load_yaml
from pdo_hub.hub._keys import VARIANT_BRANCH_PREFIX, VARIANTS_FIELD
from pdo_hub.serve._http import HubHTTPError
from pdo_hub.serve._records import CommitRecord, FileEntry, RepoRefs, RepoSettings, iso_z

if TYPE_CHECKING:
    from pdo_hub.serve.store_protocol import ReadableRepoStore

logger = logging.getLogger(__name__)

_METADATA_MAX_BYTES = 1024 * 1024  # README / config parsed for metadata only when small


def lfs_pointer_size(entry: FileEntry) -> int:
    """Size of the git-lfs pointer file that would stand for this file in git."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.sha256}\nsize {entry.size}\n"
    return len(pointer.encode())


def model_info(store: ReadableRepoStore, repo_id: str, commit: CommitRecord, settings: RepoSettings) -> dict:
    """The `/api/models/{repo}` document for one commit."""
    card = _card_data(store, repo_id, commit)
    siblings = []
    for path in sorted(commit.files):
        entry = commit.files[path]
        sibling: dict = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
        if entry.lfs:
            sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": lfs_pointer_size(entry)}
        siblings.append(sibling)
    namespace, _, _name = repo_id.rpartition("/")
    info: dict = {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": namespace or None,
        "sha": commit.sha,
        "lastModified": commit.last_modified,
        "createdAt": iso_z(settings.created),
        "private": settings.private,
        "gated": "auto" if settings.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": _tags(card),
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(entry.size for entry in commit.files.values()),
    }
    for key in ("library_name", "pipeline_tag"):
        if isinstance(card.get(key), str):
            info[key] = card[key]
    if card:
        info["cardData"] = card
    config = _model_config(store, repo_id, commit)
    if config:
        info["config"] = config
    # Every variant's branch and commit, so that a pdo_hub client asking for its config's variant finds it
    # in this one answer (huggingface_hub keeps unknown fields as attributes; other clients ignore it).
    variants = {name: sha for name, sha in store.refs(repo_id).branches.items() if name.startswith(VARIANT_BRANCH_PREFIX)}
    if variants:
        info[VARIANTS_FIELD] = variants
    return info


def tree(commit: CommitRecord, path: str, recursive: bool) -> list[dict]:
    """The `/api/models/{repo}/tree/{rev}[/{path}]` listing.

    Raises:
        HubHTTPError: 404 EntryNotFound (with X-Repo-Commit) when `path` is not a folder of the commit.
    """
    folders = commit.directories()
    if path and path not in folders:
        raise HubHTTPError(404, "EntryNotFound", f"Folder {path!r} does not exist at {commit.sha}.",
                           headers={"X-Repo-Commit": commit.sha})
    prefix = f"{path}/" if path else ""

    def wanted(name: str) -> bool:
        return name.startswith(prefix) and (recursive or "/" not in name[len(prefix):])

    entries = []
    for folder in sorted(f for f in folders if wanted(f)):
        entries.append({"type": "directory", "path": folder, "oid": _folder_oid(commit, folder)})
    for name in sorted(f for f in commit.files if wanted(f)):
        entry = commit.files[name]
        item: dict = {"type": "file", "path": name, "size": entry.size, "oid": entry.oid}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": lfs_pointer_size(entry)}
        entries.append(item)
    return entries


def refs(repo_refs: RepoRefs, include_prs: bool) -> dict:
    """The `/api/models/{repo}/refs` document; every key the client reads is always present."""

    def listing(items: dict[str, str], ref_prefix: str) -> list[dict]:
        return [{"name": name, "ref": f"{ref_prefix}{name}", "targetCommit": sha} for name, sha in sorted(items.items())]

    return {
        "branches": listing(repo_refs.branches, "refs/heads/"),
        "tags": listing(repo_refs.tags, "refs/tags/"),
        "converts": [],
        "pullRequests": listing(repo_refs.pull_requests, "") if include_prs else [],
    }


def commits(records: list[CommitRecord]) -> list[dict]:
    """The `/api/models/{repo}/commits/{rev}` listing, newest first (no author is recorded by the store)."""
    return [{"id": r.sha, "title": r.message, "message": r.description, "authors": [], "date": r.last_modified}
            for r in records]


def _folder_oid(commit: CommitRecord, folder: str) -> str:
    """A stable id for a folder's content (not git's tree hash, which clients never recompute)."""
    digest = hashlib.sha1(b"tree\x00")
    prefix = folder + "/"
    for name in sorted(n for n in commit.files if n.startswith(prefix)):
        digest.update(f"{commit.files[name].oid} {name[len(prefix):]}\n".encode())
    return digest.hexdigest()


def _small_text(store: ReadableRepoStore, repo_id: str, commit: CommitRecord, path: str) -> str | None:
    entry = commit.files.get(path)
    if entry is None or entry.size > _METADATA_MAX_BYTES:
        return None
    try:
        return store.open_file(repo_id, commit.sha, entry).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # metadata is optional: a file we cannot read just leaves it out
        return None


def parse_front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a README (`---` ... `---`), or {} when there is none.

    Raises:
        yaml.YAMLError: The block exists but is not valid YAML.
    """
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data = load_yaml(text[3:end])
    return data if isinstance(data, dict) else {}


def _card_data(store: ReadableRepoStore, repo_id: str, commit: CommitRecord) -> dict:
    text = _small_text(store, repo_id, commit, "README.md")
    if not text:
        return {}
    try:
        card = parse_front_matter(text)
    except yaml.YAMLError as err:
        logger.warning("README.md of commit %s has invalid metadata, ignored: %s", commit.sha, err)
        return {}
    # Keep only JSON-safe values (YAML dates and the like would break the answer); keys JSON cannot hold
    # (a YAML date or null as a key) are dropped, `default=` only converts values.
    return json.loads(json.dumps(card, default=str, skipkeys=True))


def _tags(card: dict) -> list[str]:
    tags = card.get("tags")
    tags = [str(t) for t in tags] if isinstance(tags, list) else []
    library = card.get("library_name")
    if isinstance(library, str) and library not in tags:
        tags.insert(0, library)
    return tags


def _model_config(store: ReadableRepoStore, repo_id: str, commit: CommitRecord) -> dict:
    """The small part of config.json the Hub echoes in model info (architectures, model_type)."""
    text = _small_text(store, repo_id, commit, "config.json")
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(config, dict):
        return {}
    return {key: config[key] for key in ("architectures", "model_type") if key in config}
