"""Hub repos through transformers: resolve, fetch, optimize, cache, and load the optimized model.

Originals are downloaded only by huggingface_hub (`snapshot_download` for the small files, transformers'
own `from_pretrained` for the weights), into the normal Hub client cache. A cache entry holds the
optimized weights, recipe, report, model card, the model's `config.json`, the source's tokenizer and
other small files, and `pdo_source.json`. Loading it = config -> skeleton without weight init ->
`load_optimized`, with no network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from pdo_hub.cache import CacheEntry, CacheKey, OptimizedCache
from pdo_hub.core import constants
from pdo_hub.core._crashpoints import crashpoint
from pdo_hub.core.config import PostDownloadOptimizationConfig, load_config
from pdo_hub.core.errors import ConfigError
from pdo_hub.hub import _keys, examples, revisions, skeleton
from pdo_hub.hub._context import bypass
from pdo_hub.hub._imports import LAZY_IMPORTS
from pdo_hub.hub.calibration import Calibration, calibration_argument, eval_fn_record, read_calibration
from pdo_hub.hub.flow import SOURCE_NAME, Request, copy_source_file, load_or_build, write_entry
from pdo_hub.optimizers import create_post_download_optimizer, load_optimized

logger = logging.getLogger(__name__)

# The files a model needs besides its weights: configs, tokenizers, sentence-transformers modules.
SMALL_FILE_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
# Other export formats of the same weights, never needed to build the optimized PyTorch model.
IGNORE_PATTERNS = ["onnx/*", "openvino/*", "*.onnx", "*.index.json", "README.md", ".gitattributes"]
# Loader arguments that only say how to download, not what is built: kept out of the key.
_TRANSPORT_KWARGS = {"force_download", "proxies", "resume_download", "local_files_only", "cache_dir", "token", "revision"}
# Arguments pdo-hub refuses: running downloaded code, or placing/quantizing weights its own way.
_REFUSED_KWARGS = {"trust_remote_code": "pdo-hub never runs code from a downloaded repo",
                   "device_map": "optimized models load on the CPU; move them with .to(device)",
                   "quantization_config": "pdo-hub quantizes with its own config"}


def auto_class_named(name: str) -> Any:
    """The transformers Auto model class called `name` (e.g. `AutoModelForSequenceClassification`).

    Raises:
        ConfigError: when `name` is not an Auto model class of the installed transformers.
    """
    with LAZY_IMPORTS:  # see pdo_hub.hub._imports
        import transformers
        from transformers.models.auto.auto_factory import _BaseAutoModelClass

        cls = getattr(transformers, name, None) if isinstance(name, str) and name.startswith("Auto") else None
    if not (isinstance(cls, type) and issubclass(cls, _BaseAutoModelClass)):
        raise ConfigError(
            f"auto_class={name!r} is not a transformers Auto model class. Use e.g. 'AutoModel', "
            "'AutoModelForSequenceClassification', 'AutoModelForCausalLM', 'AutoModelForMaskedLM'."
        )
    return cls


def offline_reason(local_files_only: bool) -> str | None:
    """Which setting asks for offline mode, or None when online."""
    if local_files_only:
        return "local_files_only=True"
    if constants.offline():
        return "HF_HUB_OFFLINE/PDO_HUB_OFFLINE is set"
    return None


def from_pretrained(
    repo_id: str,
    *,
    revision: str | None = None,
    config: PostDownloadOptimizationConfig | dict | str | None = None,
    auto_class: str = "AutoModel",
    cache_dir: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    verify: bool = False,
    model_config: Any = None,
    calibration_data: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    calibration: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """The optimized model of a Hub repo, from the optimized cache or built on a miss.

    A repo published with `pdo-hub push` (its commit holds `pdo_recipe.json` and `pdo_source.json`) is
    downloaded and loaded as published, with no optimizer run (see `pdo_hub.hub.variants`); one pushed with
    `--format onnx` (its `pdo_export.json` says `onnx`) is returned as an ONNX Runtime model (`OnnxRuntimeModel`).

    Args:
        repo_id: Hub repo id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
        revision: Branch, tag or commit sha (default `main`); resolved to the commit sha for the key.
        config: Optimization config (object, mapping, preset name or YAML path; default: the seed's).
        auto_class: transformers Auto model class to load the original with.
        cache_dir: Hub client cache for the original files (default `HF_HUB_CACHE`).
        local_files_only: No network: load from the optimized cache or raise.
        token: Hub token for private or gated repos (never stored).
        verify: Re-hash the entry's files before loading (sizes are always checked).
        model_config: A transformers `PretrainedConfig` for the original (transformers' own `config=`).
        calibration_data: Inputs to calibrate and judge candidates on instead of the built-in sentences: a
            text file (one sentence per line), a list of strings, or tokenized batches (a `BatchEncoding`
            or dict of tensors, or a list of them); part of the key.
        eval_fn: Task metric `eval_fn(model) -> accuracy in [0, 1]` on your labelled data: candidates are
            then judged by the accuracy they lose on it; its module, name and code are part of the key.
        calibration: The older name of `calibration_data`.
        **kwargs: Passed to the Auto class's `from_pretrained` (e.g. `num_labels`); part of the key.

    Returns:
        The optimized model (`.pdo_report`, `.pdo_recipe`, `.pdo_cache_status`, `.pdo_cache_path`).

    Raises:
        OfflineCacheMissError: offline and the variant is not cached.
        ConfigError: bad config, Auto class or argument.
    """
    opt_config = load_config(config)
    auto_cls = auto_class_named(auto_class)
    calib = read_calibration(calibration_argument(calibration_data, calibration))
    model_kwargs = model_arguments(kwargs, model_config)
    loader = loader_record(auto_class, model_kwargs, calib, eval_fn)
    cache = OptimizedCache()
    reason = offline_reason(local_files_only)
    from pdo_hub.hub import variants  # deferred: variants imports this module

    resolved = variants.resolve(repo_id, revision, offline=reason is not None, cache=cache, token=token,
                                cache_dir=cache_dir, offline_reason=reason or "")
    sha = resolved.sha
    key = hub_cache_key(repo_id, sha, opt_config, loader)
    if variants.is_published(repo_id, resolved, cache=cache, original_key=key, offline=reason is not None, token=token):
        asked = {"config_hash": opt_config.config_hash() if config is not None else None, "auto_class": auto_class,
                 "kwargs": model_kwargs}
        if config is not None and revision is None:  # a pdo-hub server offers each variant on a branch of its own
            branch = variants.variant_branch_commit(repo_id, resolved, key.config_hash, cache=cache, offline_reason=reason)
            if branch is not None:
                return variants.load_published(repo_id, branch[1], branch[0], cache=cache, offline_reason=reason,
                                               asked=asked, cache_dir=cache_dir, token=token, verify=verify)
        return variants.load_published(repo_id, sha, revision, cache=cache, offline_reason=reason, asked=asked,
                                       cache_dir=cache_dir, token=token, verify=verify)
    ref = revision or revisions.DEFAULT_REVISION
    request = Request(
        key=key,
        what=f"{repo_id!r} at {ref!r} (commit {sha[:12]}, {auto_class}, config hash {opt_config.config_hash()[:12]})",
        fetch_hint=f"pdo_hub.from_pretrained({repo_id!r}, revision={ref!r}, auto_class={auto_class!r}, config=...)",
        offline=reason is not None, offline_reason=reason or "", verify=verify,
    )
    source = {"kind": "huggingface", "source_id": repo_id, "revision": sha, "ref": ref, "loader": loader,
              "config_hash": opt_config.config_hash(), "key_hash": key.config_hash}

    def write(folder: Path) -> None:
        _build_entry(folder, source, auto_cls, opt_config, cache_dir=cache_dir, token=token, model_kwargs=model_kwargs,
                     calibration=calib, eval_fn=eval_fn)

    model = load_or_build(request, load_entry, write, cache)
    if reason is None:
        revisions.record_ref(cache, repo_id, revision, sha)
    return model


def model_arguments(kwargs: dict[str, Any], model_config: Any = None) -> dict[str, Any]:
    """The loader arguments that change the built model (transport ones dropped, refused ones rejected).

    Raises:
        ConfigError: for an argument pdo-hub refuses (`trust_remote_code`, `device_map`, ...).
    """
    for name, why in _REFUSED_KWARGS.items():
        if kwargs.get(name):
            raise ConfigError(f"{name}= is not supported by pdo_hub.from_pretrained: {why}.")
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _TRANSPORT_KWARGS and k != "use_auth_token"}
    if model_config is not None:
        model_kwargs["config"] = model_config
    return model_kwargs


def loader_record(auto_class: str, model_kwargs: dict[str, Any], calibration: Calibration | None = None,
                  eval_fn: Any = None) -> dict[str, Any]:
    """How the original is built, calibrated and judged: part of the cache key and of the source record."""
    loader: dict[str, Any] = {"library": "transformers", "auto_class": auto_class,
                              "kwargs": _keys.canonical_kwargs(model_kwargs)}
    if calibration is not None:
        if calibration.kind == "images":
            raise ConfigError("Hub models take text calibration (a text file, a list of sentences or tokenized "
                              "batches), not a folder of images.")
        loader["calibration"] = calibration.describe()
    if eval_fn is not None:
        loader["eval_fn"] = eval_fn_record(eval_fn)
    return loader


def hub_cache_key(repo_id: str, sha: str, opt_config: PostDownloadOptimizationConfig, loader: dict[str, Any]) -> CacheKey:
    """The cache key of a Hub repo's variant: no network, no model load (the mirror checks it before fetching)."""
    return CacheKey("huggingface", repo_id, sha, _keys.variant_hash(opt_config, loader))


def load_entry(entry: CacheEntry) -> nn.Module:
    """Rebuild the optimized model of a transformers entry: config -> fast skeleton -> strict load."""
    from transformers import AutoConfig

    source = entry.read_json(SOURCE_NAME)
    auto_cls = auto_class_named(source["loader"]["auto_class"])
    hf_config = AutoConfig.from_pretrained(str(entry.path))
    model = load_optimized(entry.path, skeleton.transformers_skeleton(auto_cls, hf_config), assign=True)
    model.config._name_or_path = source["source_id"]
    return model


def _build_entry(folder: Path, source: dict, auto_cls: Any, opt_config: PostDownloadOptimizationConfig, *,
                 cache_dir: str | None, token: Any, model_kwargs: dict[str, Any],
                 calibration: Calibration | None = None, eval_fn: Callable[[nn.Module], float] | None = None) -> None:
    from huggingface_hub import snapshot_download

    from pdo_hub.hub import _blob_check, _retry

    repo_id, sha = source["source_id"], source["revision"]

    def download() -> tuple[Path, Any]:  # pinned to the sha: a branch that moves meanwhile changes nothing
        crashpoint("fetch.start")
        files = Path(snapshot_download(repo_id, revision=sha, cache_dir=cache_dir, token=token,
                                       allow_patterns=SMALL_FILE_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
        crashpoint("fetch.small_files")
        with bypass():
            return files, auto_cls.from_pretrained(repo_id, revision=sha, cache_dir=cache_dir, token=token,
                                                   **model_kwargs)

    small_files, original = _retry.with_retries(
        f"{repo_id!r} at commit {sha[:12]}", download,
        check=lambda: _blob_check.remove_damaged(repo_id, sha, cache_dir, ignore=_blob_check.EXPORT_PATTERNS))
    crashpoint("fetch.downloaded")
    revisions.record_hf_cache_ref(repo_id, source["ref"], sha, cache_dir)
    original.eval()
    inputs = _text_inputs(small_files, original, opt_config.calibration_samples, calibration)
    optimizer = create_post_download_optimizer(opt_config)
    crashpoint("optimize.start")
    optimized, report = optimizer.optimize_model(
        model=original, model_name=repo_id, example_inputs=inputs[0] if inputs else None, calibration_data=inputs,
        eval_fn=eval_fn,
    )
    crashpoint("optimize.done")
    _copy_small_files(small_files, folder)
    # The config of the stored weights (loader arguments such as num_labels included) replaces the source's.
    original.config.save_pretrained(folder)
    write_entry(folder, optimized, report, source)


def _text_inputs(files: Path, model: nn.Module, count: int, calibration: Calibration | None = None) -> list | None:
    from transformers import AutoTokenizer

    if calibration is not None and calibration.batches:
        return list(calibration.batches)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(files))
    except Exception as err:  # no tokenizer in the repo (vision/audio models): the optimizer guesses inputs
        if calibration is not None:
            raise ConfigError(f"Calibration sentences were given, but the repo has no tokenizer to encode them ({err}).") from err
        logger.info("No tokenizer for %s (%s); letting the optimizer synthesize inputs.", files, err)
        return None
    return examples.text_inputs(tokenizer, model, count, calibration.texts if calibration else None)


def _copy_small_files(snapshot: Path, folder: Path) -> None:
    """Copy the snapshot's small files into the entry (following the client cache's links), skipping any
    named like one of pdo-hub's own files (`pdo_manifest.json`, ...) with a log line."""
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            copy_source_file(path, folder, path.relative_to(snapshot).as_posix())
