"""`push_entry`: publish an optimized variant to a Hub repo in one commit (what `pdo-hub push` runs).

The commit holds everything in the entry but the cache's own bookkeeping (`pdo_manifest.json`,
`.pdo_access`): weights, recipe, report, source record, config and tokenizer files, and a model card
rebuilt for the repo it is pushed to. `pdo_hub.from_pretrained("ORG/NAME")` then loads it as published
(`pdo_hub.hub.variants`).

`format="transformers"` pushes the stock-transformers form of the same variant instead
(`pdo_hub.export.transformers_format`: torchao int8 in safetensors, `quantization_config` in
`config.json`), which `transformers.AutoModel.from_pretrained` loads with torchao and no pdo-hub; its card
says so (`library_name: transformers`) and carries the stock load's measured speed and fidelity.

`format="onnx"` pushes the ONNX export of the variant (`pdo_hub.export.onnx_format`, Optimum's layout:
`model.onnx`, `model_quantized.onnx`, `config.json`, `ort_config.json`, tokenizer files, and
`pdo_export.json` with the parity report against the PyTorch variant), exported from the same inputs
`pdo-hub export --format onnx` uses; its card says `library_name: onnx` and shows how plain onnxruntime,
Optimum's ORTModel and pdo-hub load it. `pdo_hub.from_pretrained` of that repo returns the ONNX
Runtime model (`pdo_hub.hub.variants`).

The token comes from the `token` argument, `HF_TOKEN` or the Hugging Face login, resolved by
huggingface_hub; pdo-hub only hands it on. It is never written into a file, log or message: the card,
commit message and errors are built from the entry's records, and Hub error text is scrubbed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pdo_hub.cache import MANIFEST_NAME, RESERVED_NAMES, CacheEntry, validate_source_id
from pdo_hub.cache.manifest import find_problems, read_manifest
from pdo_hub.core.errors import PushError
from pdo_hub.hub.card import CARD_NAME, build_card
from pdo_hub.hub.flow import SOURCE_NAME
from pdo_hub.optimizers.chart import CHART_NAME

logger = logging.getLogger(__name__)

#: What `format=` accepts: pdo-hub's own files, the stock-transformers (torchao) form, or ONNX (ONNX Runtime).
FORMATS = ("pdo", "transformers", "onnx")
#: Files every pushed variant has: pdo-hub cannot load it from the Hub without them.
REQUIRED_FILES = ("model.safetensors", "pdo_recipe.json", "optimization_report.json", SOURCE_NAME)
# The cache's bookkeeping, meaningful only in the local cache.
_NOT_PUSHED = RESERVED_NAMES
# Source-record fields that describe this machine, not the model (a local source's path).
_PRIVATE_SOURCE_FIELDS = ("path",)


def push_entry(entry: CacheEntry | str | os.PathLike[str], repo_id: str, *, endpoint: str | None = None,
               private: bool = False, token: str | None = None, revision: str = "main",
               commit_message: str | None = None, format: str = "pdo",
               calibration: str | None = None) -> dict[str, Any]:
    """Publish an optimized variant to `repo_id` in one commit, creating the repo if needed.

    Args:
        entry: A cache entry, or its folder (`model.pdo_cache_path`).
        repo_id: The Hub repo to push to, `org/name`.
        endpoint: Hub URL (default `HF_ENDPOINT`, else the Hugging Face Hub).
        private: Create the repo private (an existing repo keeps its visibility).
        token: Hub token with write access (default: `HF_TOKEN` or the login); never stored.
        revision: Branch to commit to (created from `main` when missing).
        commit_message: Commit summary (default: names the base model and the optimizations).
        format: `pdo` (pdo-hub's own files, loaded by `pdo_hub.from_pretrained`) or `transformers` (loaded by
            stock `transformers` with torchao; transformers models whose layers keep their original widths) or
            `onnx` (ONNX Runtime files with a parity report; transformers and torchvision models).
        calibration: `format="onnx"` only: a text file of sentences to calibrate the ONNX int8 with (default:
            pdo-hub's built-in sentences or images, as `pdo-hub export`).

    Returns:
        `{"repo_id", "repo_url", "revision", "commit_sha", "commit_url", "files"}`, plus `"export"` (the export
        record, with the ONNX parity report) for the `transformers` and `onnx` formats.

    Raises:
        InvalidRepoIdError: `repo_id` is not a valid Hub repo id.
        PushError: the entry is incomplete or damaged, `repo_id` is its base model's repo, or the Hub
            refused the push (the message says
            what to do; it never contains the token).

    Example:
        >>> model = pdo_hub.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        >>> push_entry(model.pdo_cache_path, "my-org/all-MiniLM-L6-v2-pdo")["repo_url"]
    """
    if format not in FORMATS:
        raise PushError(f"Unknown push format {format!r}: use one of {list(FORMATS)}.")
    validate_source_id("huggingface", repo_id)  # it must also be a valid cache id where it gets loaded
    with contextlib.ExitStack() as stack:
        folder, names = _variant_files(entry)
        _refuse_base_repo(folder, repo_id)
        export = None
        if format != "pdo":
            out = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            folder, names, export = _export_files(folder, out, format, calibration)
        return _push_files(folder, names, export, repo_id, endpoint=endpoint, private=private, token=token,
                           revision=revision, commit_message=commit_message)


def _push_files(folder: Path, names: list[str], export: dict[str, Any] | None, repo_id: str, *, endpoint: str | None,
                private: bool, token: str | None, revision: str, commit_message: str | None) -> dict[str, Any]:
    report = json.loads((folder / "optimization_report.json").read_text(encoding="utf-8"))
    source = json.loads((folder / SOURCE_NAME).read_text(encoding="utf-8"))
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or "the Hugging Face Hub"
    with _hub_errors(where, repo_id, token, "create"):
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    pushed_as = repo_url.repo_id or repo_id
    public_source = {k: v for k, v in source.items() if k not in _PRIVATE_SOURCE_FIELDS}
    generated = {
        # The chart is referenced only when it is pushed (export folders leave pareto.png out).
        CARD_NAME: build_card(report, public_source, pushed_as=pushed_as, export=export,
                              chart=None if CHART_NAME in names else False).content.encode("utf-8"),
        SOURCE_NAME: json.dumps(public_source, indent=2, sort_keys=True).encode("utf-8"),
    }
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=generated.get(name, str(folder / name)))
                  for name in sorted({*names, *generated})]
    message = commit_message or _default_message(report, source)
    logger.info("Pushing %d files to %s (%s, branch %s).", len(operations), pushed_as, where, revision)
    with _hub_errors(where, pushed_as, token, "commit"):
        commit = _commit(api, pushed_as, operations, revision, message)
    logger.info("Pushed %s: commit %s.", pushed_as, commit.oid)
    return {"repo_id": pushed_as, "repo_url": str(repo_url), "revision": revision, "commit_sha": commit.oid,
            "commit_url": commit.commit_url, "files": [op.path_in_repo for op in operations],
            **({"export": export} if export is not None else {})}


def _variant_files(entry: CacheEntry | str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """The folder and the relative names of the files to push, after checking the entry is intact."""
    if isinstance(entry, CacheEntry):
        folder, manifest = entry.path, entry.manifest
    else:
        folder = Path(entry).expanduser()
        manifest = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else None
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder: pass a cache entry (model.pdo_cache_path) to push.")
    if manifest is not None:
        # A damaged entry would publish bytes its recipe does not describe: check every hash first.
        problems = find_problems(folder, manifest, check_hashes=True)
        if problems:
            raise PushError(f"The cache entry {folder} is damaged ({'; '.join(problems[:3])}). Load the model again "
                            "(pdo-hub rebuilds damaged entries), then push the new entry.")
        names = sorted(manifest["files"])
    else:
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    names = [name for name in names if name not in _NOT_PUSHED]
    missing = [name for name in REQUIRED_FILES if name not in names]
    if missing:
        raise PushError(f"{folder} is not a pdo-hub variant: {missing} missing. Push the folder of a cache entry "
                        "(model.pdo_cache_path after pdo_hub.from_pretrained / get_model, or `pdo-hub push SOURCE`).")
    return folder, names


def _refuse_base_repo(folder: Path, repo_id: str) -> None:
    source = json.loads((folder / SOURCE_NAME).read_text(encoding="utf-8"))
    if source.get("kind") == "huggingface" and source.get("source_id") == repo_id:
        raise PushError(f"{repo_id!r} is the variant's own base model: pushing there would replace the original "
                        f"with pdo-hub's format. Push to a new repo, e.g. {repo_id + '-pdo'!r}.")


def _export_files(folder: Path, out: Path, format: str, calibration: str | None) -> tuple[Path, list[str], dict[str, Any]]:
    """Write the variant in `folder` in another runtime's `format` into `out`: (out, its files, export record)."""
    from pdo_hub.core.errors import ExportError
    from pdo_hub.export import read_variant, write_transformers_format

    try:
        variant = read_variant(folder)
        if format == "transformers":
            export = write_transformers_format(variant, out)
        else:
            from pdo_hub.export._inputs import calibration_inputs
            from pdo_hub.export.onnx_format import export_onnx

            export = export_onnx(variant, out, calibration_inputs(variant, calibration))
    except ExportError as err:
        raise PushError(f"Cannot push {folder} in the {format} format: {err}") from err
    for name in ("optimization_report.json", SOURCE_NAME):  # the card and the loader read them; ONNX copies
        if not (out / name).is_file():                       # them only for transformers models
            shutil.copyfile(folder / name, out / name)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return out, names, export


def _commit(api: Any, repo_id: str, operations: list, revision: str, message: str) -> Any:
    from huggingface_hub.errors import RevisionNotFoundError

    def commit() -> Any:
        return api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision)

    try:
        return commit()
    except RevisionNotFoundError:
        if revision == "main":
            raise
        api.create_branch(repo_id, branch=revision, exist_ok=True)  # a new branch starts from main
        return commit()


def _default_message(report: dict[str, Any], source: dict[str, Any]) -> str:
    applied = ", ".join(report.get("optimizations_applied") or []) or "original kept"
    return f"Add pdo-hub variant of {source.get('source_id', report.get('model_name', 'a model'))} ({applied})"


@contextlib.contextmanager
def _hub_errors(where: str, repo_id: str, token: str | None, step: str) -> Iterator[None]:
    """Turn Hub and network failures into a `PushError` that says what to do and holds no token."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        yield
    except LocalTokenNotFoundError as err:
        raise PushError(f"No Hub token to push {repo_id!r} with: log in with `hf auth login`, set HF_TOKEN, or pass "
                        "token=.") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401 and not (token or _resolved_token()):
            raise PushError(f"{where} needs a token to push {repo_id!r} and none was found: log in with "
                            "`hf auth login`, set HF_TOKEN, or pass token=.") from err
        raise PushError(_scrub(_advice(status, where, repo_id, step, str(err)), token)) from err
    except (httpx2.HTTPError, OSError) as err:
        raise PushError(_scrub(f"Cannot reach {where} to push {repo_id!r} ({type(err).__name__}: {err}). Check the "
                               "network, or the endpoint (--endpoint / HF_ENDPOINT).", token)) from err


def _advice(status: int | None, where: str, repo_id: str, step: str, detail: str) -> str:
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your account"
    first_line = detail.strip().splitlines()[0] if detail.strip() else ""
    if status == 401:
        return (f"{where} rejected the credentials ({first_line}). Log in with `hf auth login`, set HF_TOKEN, or pass "
                f"token= with a token that has write access to {namespace!r}.")
    if status == 403:
        return (f"{where} does not let this token write to {repo_id!r} ({first_line}). Use a token with write access "
                f"to {namespace!r} (fine-grained tokens need it for that namespace), or push to your own namespace.")
    if status == 404:
        return (f"{where} answered 404 while trying to {step} {repo_id!r} ({first_line}). Check the repo id and that "
                f"the token can see and write to {namespace!r}.")
    return f"{where} refused to {step} {repo_id!r} (HTTP {status}): {detail.strip()}"


def _resolved_token() -> str | None:
    """The token huggingface_hub sends when none is passed (`HF_TOKEN` or the login), or None."""
    from huggingface_hub import get_token

    return get_token()


def _scrub(text: str, token: str | None) -> str:
    """`text` with every token pdo-hub could have sent replaced by a placeholder."""
    for secret in {token, _resolved_token()}:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "<token>")
    return text
