"""Published pdo-hub variants: a Hub repo made by `pdo-hub push` is loaded as is, never re-optimized.

A repo commit holding `pdo_recipe.json` and `pdo_source.json` is a published variant: its weights are
already int8 / factorized / pruned in pdo-hub's format. One holding `pdo_export.json` and
`pdo_source.json` instead is a variant pushed in the stock-transformers format (torchao int8): it is
loaded by transformers itself, as any user without pdo-hub loads it. One whose `pdo_export.json` says
format `onnx` (`pdo-hub push --format onnx`) is loaded as an ONNX Runtime model (`OnnxRuntimeModel`,
as `pdo_hub.load_exported` loads an export folder): the repo's format is what asks for ONNX Runtime, and
only the ONNX file the record names is downloaded (not the float `model.onnx` beside it). It is
downloaded (only the files a variant needs), checked, committed to the optimized cache and loaded
there; no optimizer runs.

Cache key: `(huggingface, <published repo id>, <published commit sha>, AS_PUBLISHED_HASH)`. The commit
sha fixes every byte of the variant, the config that made it included, so nothing a caller passes can
select another variant of that commit: one fixed variant hash makes every call map to the one entry
(a `config=` that differs from the recorded one is reported at INFO level and not applied).

Everything downloaded is treated as hostile. `pdo_source.json` may only name a transformers Auto
model class or a registered torchvision builder with plain arguments; nothing is unpickled or imported
from the download (weights are safetensors, the recipe is allow-listed JSON, `config.json` goes through
transformers without `trust_remote_code`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from pdo_hub.cache import MANIFEST_NAME, CacheEntry, CacheKey, OptimizedCache
from pdo_hub.core.errors import ConfigError, InvalidRepoIdError, OfflineCacheMissError, RecipeError
from pdo_hub.hub import _card_onnx, _keys, revisions, skeleton, transformers_models
from pdo_hub.hub._context import bypass
from pdo_hub.hub.card import CARD_NAME, EXPORT_RECORD, TRANSFORMERS_FORMAT
from pdo_hub.hub.flow import SOURCE_NAME, Request, load_or_build
from pdo_hub.optimizers import load_optimized

logger = logging.getLogger(__name__)

#: Files whose presence in a commit marks it as a published pdo-hub variant.
MARKERS = frozenset({"pdo_recipe.json", SOURCE_NAME})
#: ... and of one pushed in the stock-transformers format.
STOCK_MARKERS = frozenset({EXPORT_RECORD, SOURCE_NAME})
#: Variant hash of every published variant's key (see the module docstring for why it is fixed).
AS_PUBLISHED_HASH = hashlib.sha256(b"pdo-hub: published variant, used as published").hexdigest()
# What a published variant needs (weights, card, JSON records, config and tokenizer files); anything
# else a repo holds is never downloaded.
_ALLOW_PATTERNS = ["model.safetensors", CARD_NAME, *transformers_models.SMALL_FILE_PATTERNS]
_IGNORE_PATTERNS = [".*", "*/.*", MANIFEST_NAME, "onnx/*", "openvino/*", "*.onnx"]
# Builder arguments that would make a torchvision builder download weights while building the skeleton.
_DOWNLOADING_KWARGS = frozenset({"weights", "pretrained", "weights_backbone", "pretrained_backbone", "progress"})


@dataclass(frozen=True)
class Resolved:
    """A revision resolved to its commit.

    Attributes:
        sha: The 40-hex commit sha.
        files: The commit's file names when the Hub was asked (online, branch or tag), else None.
        variants: {variant branch: commit sha} when a pdo-hub server listed the repo's variants.
    """

    sha: str
    files: frozenset[str] | None = None
    variants: dict[str, str] | None = None


def resolve(repo_id: str, revision: str | None, *, offline: bool, cache: OptimizedCache, token: str | bool | None = None,
            cache_dir: str | None = None, offline_reason: str = "") -> Resolved:
    """Resolve `revision` like `revisions.resolve_hf_revision`, keeping the file list of the one Hub answer.

    Online, a branch or tag costs the same single `model_info` request as before; its `siblings` tell
    whether the commit is a published variant. Offline or for a commit sha no request is made.

    Raises:
        OfflineCacheMissError: offline and the ref was never recorded locally.
        huggingface_hub errors (`RepositoryNotFoundError`, `RevisionNotFoundError`, ...) online.
    """
    ref = revision or revisions.DEFAULT_REVISION
    if offline or revisions.is_commit_sha(ref):
        return Resolved(revisions.resolve_hf_revision(repo_id, revision, offline=offline, cache=cache, token=token,
                                                      cache_dir=cache_dir, offline_reason=offline_reason))
    from pdo_hub.hub import _retry

    info = _retry.model_info(repo_id, revision=ref, token=token)  # with a timeout and bounded retries
    if not info.sha or not revisions.is_commit_sha(info.sha):
        raise InvalidRepoIdError(f"The Hub answered no commit sha for {repo_id!r} at {ref!r} (got {info.sha!r}).")
    return Resolved(info.sha, frozenset(sibling.rfilename for sibling in info.siblings or []),
                    _variant_commits(getattr(info, _keys.VARIANTS_FIELD, None)))


def _variant_commits(listed: Any) -> dict[str, str] | None:
    """The server's {variant branch: commit sha} list, keeping only well-formed pairs (it is downloaded)."""
    if not isinstance(listed, dict):
        return None
    return {branch: sha for branch, sha in listed.items() if isinstance(branch, str)
            and branch.startswith(_keys.VARIANT_BRANCH_PREFIX) and isinstance(sha, str) and revisions.is_commit_sha(sha)}


def variant_branch_commit(repo_id: str, resolved: "Resolved", variant_hash_hex: str, *, cache: OptimizedCache,
                          offline_reason: str | None) -> tuple[str, str] | None:
    """(branch, commit) of the variant a caller's config asks for, when the repo offers it on its own branch.

    `pdo-hub serve` serves the variant of its own config on `main` and every variant it holds on
    `pdo-<variant hash[:16]>`, listed in its model_info answer, so online this costs no request. Offline
    the branch resolves when it was recorded here. None otherwise (any other Hub, a pushed repo).
    """
    branch = _keys.variant_branch(variant_hash_hex)
    if offline_reason is None:
        sha = (resolved.variants or {}).get(branch)
        return (branch, sha) if sha is not None else None
    try:
        return branch, revisions.resolve_hf_revision(repo_id, branch, offline=True, cache=cache,
                                                     offline_reason=offline_reason)
    except OfflineCacheMissError:
        return None


def published_key(repo_id: str, sha: str) -> CacheKey:
    """The cache key of the published variant at commit `sha` of `repo_id`."""
    return CacheKey("huggingface", repo_id, sha, AS_PUBLISHED_HASH)


def is_published(repo_id: str, resolved: Resolved, *, cache: OptimizedCache, original_key: CacheKey, offline: bool,
                 token: str | bool | None = None) -> bool:
    """Whether the commit is a published pdo-hub variant.

    A cached published entry answers at once. Otherwise the file list of `resolve` decides; when there
    is none (a commit sha was asked for) the Hub is asked only if neither entry is cached, so a cache
    hit keeps making no request.
    """
    # Local only: this is asked on every load, and a published variant the tier has is pulled by
    # load_published once the files below say what the commit is; a local hit stays free of requests.
    if cache.lookup(published_key(repo_id, resolved.sha), verify=False, shared=False) is not None:
        return True
    files = resolved.files
    if files is None:
        if offline or cache.lookup(original_key, verify=False) is not None:
            return False
        from pdo_hub.hub import _retry

        info = _retry.model_info(repo_id, revision=resolved.sha, token=token)
        files = frozenset(sibling.rfilename for sibling in info.siblings or [])
    return MARKERS <= files or STOCK_MARKERS <= files


def load_published(repo_id: str, sha: str, revision: str | None, *, cache: OptimizedCache, offline_reason: str | None,
                   asked: dict[str, Any], cache_dir: str | None = None, token: str | bool | None = None,
                   verify: bool = False) -> nn.Module:
    """The published variant at commit `sha` of `repo_id`, from the optimized cache or downloaded once.

    Args:
        repo_id: The published repo.
        sha: Its commit sha.
        revision: The revision asked for (recorded so that it resolves offline).
        cache: The optimized cache.
        offline_reason: Which setting makes the call offline, or None online.
        asked: What the caller asked for (`config_hash` or None, `auto_class`, `kwargs`): only compared
            with the published record, to say what is not applied.
        cache_dir: Hub client cache for the download.
        token: Hub token for a private variant (never stored).
        verify: Re-hash the entry's files before loading.

    Raises:
        RecipeError: the variant's `pdo_source.json` names a loader pdo-hub does not trust.
        OfflineCacheMissError: offline and the variant is not cached.
    """
    ref = revision or revisions.DEFAULT_REVISION
    request = Request(
        key=published_key(repo_id, sha),
        what=f"published pdo-hub variant {repo_id!r} at {ref!r} (commit {sha[:12]}, used as published)",
        fetch_hint=f"pdo_hub.from_pretrained({repo_id!r}, revision={ref!r})",
        offline=offline_reason is not None, offline_reason=offline_reason or "", verify=verify,
    )

    def write(folder: Path) -> None:
        _download(folder, repo_id, sha, cache_dir=cache_dir, token=token)

    model = load_or_build(request, lambda entry: load_published_entry(entry, repo_id), write, cache)
    if offline_reason is None:
        revisions.record_ref(cache, repo_id, revision, sha)
    _explain_ignored(repo_id, json.loads((Path(model.pdo_cache_path) / SOURCE_NAME).read_text(encoding="utf-8")), asked)
    return model


def load_published_entry(entry: CacheEntry, repo_id: str) -> nn.Module:
    """Rebuild the model of a published variant's entry (no network), after checking its source record."""
    source = check_source(entry.read_json(SOURCE_NAME), repo_id)
    loader = source["loader"]
    export = _export_record(entry.read_json(EXPORT_RECORD)) if (entry.path / EXPORT_RECORD).is_file() else None
    if export is not None and _card_onnx.is_onnx(export):
        return _load_onnx_format(entry, export, repo_id)
    if loader["library"] == "transformers" and not (entry.path / "pdo_recipe.json").is_file():
        return _load_stock_format(entry, source, repo_id)
    if loader["library"] == "transformers":
        model = transformers_models.load_entry(entry)
        model.config._name_or_path = repo_id  # it came from the published repo, not from the base
        return model
    import torchvision.models

    name = _builder_name(loader)
    builder = torchvision.models.get_model_builder(name)
    with bypass():  # inside intercept() the builder must not fetch and optimize the original
        try:
            fresh = skeleton.builder_skeleton(builder, **loader.get("kwargs", {}))
        except (ArithmeticError, AssertionError, AttributeError, LookupError, RuntimeError, TypeError, ValueError) as err:
            # check_source lets only plain values through, but a builder may still refuse a name or a value
            # (torchvision asserts on some): a downloaded record's mistake, not a traceback from the builder.
            raise RecipeError(f"{repo_id!r}: the builder arguments in its {SOURCE_NAME} do not build {name!r} "
                              f"({type(err).__name__}: {err}).") from err
    return load_optimized(entry.path, fresh, assign=True)


def _load_stock_format(entry: CacheEntry, source: dict[str, Any], repo_id: str) -> nn.Module:
    """A variant pushed in the stock-transformers format, loaded by transformers (torchao rebuilds the int8)."""
    record = entry.read_json(EXPORT_RECORD)
    if not isinstance(record, dict) or record.get("format") != TRANSFORMERS_FORMAT:
        raise RecipeError(f"{repo_id!r}: its {EXPORT_RECORD} names format {record.get('format') if isinstance(record, dict) else record!r}, "
                          f"which this pdo-hub does not load (it loads {TRANSFORMERS_FORMAT!r}). Upgrade pdo-hub.")
    auto_cls = transformers_models.auto_class_named(source["loader"]["auto_class"])
    with bypass():  # inside intercept() this load must not be optimized again
        model = auto_cls.from_pretrained(str(entry.path), use_safetensors=True).eval()  # never a pickle
    model.config._name_or_path = repo_id
    model.pdo_report = entry.read_json("optimization_report.json")
    model.pdo_export = record
    return model


def _load_onnx_format(entry: CacheEntry, record: dict[str, Any], repo_id: str) -> nn.Module:
    """A variant pushed as ONNX (`record`: its export record), run by ONNX Runtime (the float `model.onnx`
    is not downloaded)."""
    from pdo_hub.core.errors import ExportError
    from pdo_hub.hub.onnx_runtime import OnnxRuntimeModel, require_onnx

    try:
        require_onnx()
    except ExportError as err:  # it names the pip extra to install
        raise RecipeError(f"{repo_id!r} was pushed as ONNX: {err}") from err
    model = OnnxRuntimeModel(entry.path / _onnx_file_name(record, repo_id), record)
    if (entry.path / "optimization_report.json").is_file():
        model.pdo_report = entry.read_json("optimization_report.json")
    return model


def _export_record(record: Any) -> dict[str, Any]:
    return record if isinstance(record, dict) else {}


def _onnx_file_name(record: Any, repo_id: str) -> str:
    """The ONNX file a downloaded export record names: a plain `*.onnx` name in the repo's root, nothing else."""
    name = _export_record(record).get("file_name")
    if not isinstance(name, str) or not name.endswith(".onnx") or "/" in name or "\\" in name or name.startswith("."):
        raise RecipeError(f"{repo_id!r}: its {EXPORT_RECORD} names ONNX file {name!r}, not a plain *.onnx file name. "
                          "Ask its publisher to push it again with `pdo-hub push --format onnx`.")
    return name


def check_source(record: Any, repo_id: str) -> dict[str, Any]:
    """Check a downloaded `pdo_source.json`: it may only name loaders pdo-hub trusts.

    transformers: `kind` huggingface or local, `auto_class` a transformers Auto model class.
    torchvision: a registered torchvision builder with plain (JSON scalar) arguments, none that downloads.

    Raises:
        RecipeError: naming what is wrong and what to do.
    """
    def refuse(why: str) -> RecipeError:
        return RecipeError(
            f"{repo_id!r} holds a pdo-hub variant whose {SOURCE_NAME} {why}; pdo-hub does not load it. Ask its "
            "publisher to push it again with `pdo-hub push`, or load the base model with pdo_hub.from_pretrained."
        )

    if not isinstance(record, dict) or not isinstance(record.get("loader"), dict):
        raise refuse("is not a JSON object with a 'loader' object")
    loader, kind = record["loader"], record.get("kind")
    library = loader.get("library")
    if library == "transformers":
        if kind not in ("huggingface", "local"):
            raise refuse(f"pairs a transformers loader with source kind {kind!r}")
        try:
            transformers_models.auto_class_named(loader.get("auto_class"))
        except ConfigError as err:
            raise refuse(f"names auto_class {loader.get('auto_class')!r}, not a transformers Auto model class") from err
        return record
    if (library, kind) not in (("torchvision", "torchvision"), ("torch", "local")):
        raise refuse(f"names loader library {library!r} with source kind {kind!r} (pdo-hub loads transformers and "
                     "torchvision variants)")
    import torchvision.models

    name = _builder_name(loader)
    if name not in torchvision.models.list_models():
        raise refuse(f"names {name!r}, not a registered torchvision model")
    kwargs = loader.get("kwargs", {})
    if not isinstance(kwargs, dict) or any(not isinstance(k, str) or k in _DOWNLOADING_KWARGS or not _plain(v)
                                           for k, v in kwargs.items()):
        raise refuse(f"gives builder arguments pdo-hub does not pass on ({kwargs!r}): only plain values, no weights")
    return record


def _builder_name(loader: dict[str, Any]) -> Any:
    if loader.get("library") == "torch":  # a local state dict loaded into a torchvision architecture
        architecture = loader.get("architecture")
        return architecture.removeprefix("torchvision:") if isinstance(architecture, str) and \
            architecture.startswith("torchvision:") else None
    return loader.get("builder")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _download(folder: Path, repo_id: str, sha: str, *, cache_dir: str | None, token: str | bool | None) -> None:
    """Download the variant's files and copy them into the entry folder, checked before they enter the cache."""
    from pdo_hub.hub import _retry

    snapshot = _retry.download_snapshot(repo_id, sha, what=f"published variant {repo_id!r} at commit {sha[:12]}",
                                        cache_dir=cache_dir, token=token, allow_patterns=_ALLOW_PATTERNS,
                                        ignore_patterns=_IGNORE_PATTERNS)
    markers = MARKERS if (snapshot / "pdo_recipe.json").is_file() else STOCK_MARKERS
    weights = "model.safetensors"
    if markers is STOCK_MARKERS and (snapshot / EXPORT_RECORD).is_file():
        record = _export_record(_read_json(snapshot / EXPORT_RECORD, repo_id, sha))
        if _card_onnx.is_onnx(record):  # the record decides which one ONNX file to fetch, checked against the Hub
            weights = _onnx_file_name(record, repo_id)
            snapshot = _retry.download_snapshot(repo_id, sha, what=f"ONNX file of {repo_id!r} at commit {sha[:12]}",
                                                cache_dir=cache_dir, token=token, allow_patterns=[weights],
                                                unchecked=())
    missing = [name for name in (weights, *sorted(markers)) if not (snapshot / name).is_file()]
    if missing:
        raise RecipeError(f"{repo_id!r} at commit {sha[:12]} lacks {missing}: it is not a complete pdo-hub variant.")
    check_source(_read_json(snapshot / SOURCE_NAME, repo_id, sha), repo_id)
    for path in sorted(snapshot.rglob("*")):
        relative = path.relative_to(snapshot)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # follows the client cache's symlinks: entries hold real files


def _read_json(path: Path, repo_id: str, sha: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RecipeError(f"{path.name} of {repo_id!r} at commit {sha[:12]} is not valid JSON: {err}.") from err


def _explain_ignored(repo_id: str, source: dict[str, Any], asked: dict[str, Any]) -> None:
    """Say (INFO) which of the caller's arguments a published variant cannot honour."""
    loader = source.get("loader") or {}
    ignored = []
    if asked.get("config_hash") and asked["config_hash"] != source.get("config_hash"):
        ignored.append(f"config (hash {asked['config_hash'][:12]}; the variant was optimized with "
                       f"{str(source.get('config_hash'))[:12]})")
    if loader.get("library") == "transformers" and asked.get("auto_class") not in (None, loader.get("auto_class")):
        ignored.append(f"auto_class={asked['auto_class']!r} (the variant is {loader.get('auto_class')!r})")
    if asked.get("kwargs"):
        ignored.append(f"loader arguments {sorted(asked['kwargs'])}")
    if ignored:
        logger.info("%s is a published pdo-hub variant and is used as published; not applied: %s. To optimize the "
                    "base model %r your way, call pdo_hub.from_pretrained on it.", repo_id, "; ".join(ignored),
                    source.get("source_id"))
