"""What a mirror build asks of a Ray cluster: the settings its worker must see and the resources it declares.

Settings. A worker is not the driver's process: on another node it has none of the driver's environment,
and even on this machine a cluster started earlier has the environment of whoever started it. So each
task carries the driver's pdo-hub, Hub, torch and object-store settings (`PDO_HUB_*` with the shared
tier's `PDO_HUB_SHARED_CACHE`, `HF_*`, `AWS_*`, `FSSPEC_*`, `TORCH_HOME`, ...) in two ways:

- plain settings go into the task's `runtime_env` `env_vars`: Ray starts a worker with them set before
  anything is imported (huggingface_hub reads `HF_ENDPOINT` and the offline flags once, at import), and
  never hands a worker of one set of settings to a task of another;
- secrets (a name with TOKEN, SECRET, PASSWORD, CREDENTIAL or a KEY part: `HF_TOKEN`, `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `FSSPEC_S3_KEY`, ...) never go there: Ray writes a runtime_env into its
  runtime-env agent's log file and shows it to anyone who can see the cluster (`ray list tasks --detail`,
  the dashboard). They travel as a task argument (`Secrets`, whose repr shows the names only), are set
  in the worker's environment for the build only, and removed after it.

Resources. `num_cpus` (default 1: Ray sets the worker's OMP_NUM_THREADS to it, so torch's thread pool
matches what was reserved), `num_gpus=1` when the entry's config asks for `device: cuda` (`auto` declares
none: the task then sees no GPU and builds on CPU), and `memory`: `--ray-memory` when given, else
3 x the weights' size + 512 MiB (the peak an optimization was measured to stay under), with the size from
the Hub's file listing, the torch hub file or the local file; unknown sizes declare no memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pdo_hub.mirror.plan import Plan

logger = logging.getLogger(__name__)

_PREFIXES = ("PDO_HUB_", "HF_", "HUGGINGFACE_", "AWS_", "FSSPEC_", "TRANSFORMERS_")
_NAMES = ("TORCH_HOME", "XDG_CACHE_HOME", "DISABLE_SAFETENSORS_CONVERSION", "TOKENIZERS_PARALLELISM")
_SECRET_MARKS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "_KEY_")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_MIB = 1 << 20


class Secrets:
    """Secret settings handed to a task as an argument; printing one shows the names only."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self._values)) or 'none'})"

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Set the secrets in this process's environment for the block; restore what was there after."""
        saved = {name: os.environ.get(name) for name in self._values}
        os.environ.update(self._values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def worker_settings(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], Secrets]:
    """(plain settings for runtime_env, secrets for the task argument) from the driver's environment."""
    environ = os.environ if environ is None else environ
    plain, secret = {}, {}
    for name, value in environ.items():
        if name.startswith(_PREFIXES) or name in _NAMES:
            upper = name.upper()
            is_secret = any(mark in upper for mark in _SECRET_MARKS) or upper.endswith("_KEY")
            (secret if is_secret else plain)[name] = value
    return plain, Secrets(secret)


def task_resources(plan: Plan, *, cpus: float, memory: int | None) -> dict[str, float]:
    """The resources a build of `plan` declares (see the module docstring)."""
    resources: dict[str, float] = {"num_cpus": cpus, "num_gpus": 1 if plan.entry.config.device == "cuda" else 0}
    if memory is None:
        size = _weights_bytes(plan)
        memory = 3 * size + 512 * _MIB if size else None
    if memory:
        resources["memory"] = memory
    return resources


def unschedulable(resources: Mapping[str, float], nodes: list[Mapping[str, float]], *, estimated: bool) -> str | None:
    """Why no node of the cluster can run a task with `resources` (Ray would wait for one forever), or None.

    An estimated memory larger than every node is lowered to the largest node's (the estimate is rough);
    a CPU, GPU or given memory request that no node has fails the entry.
    """
    asked = {"CPU": resources["num_cpus"], "GPU": resources["num_gpus"], "memory": resources.get("memory", 0)}
    if estimated and nodes and asked["memory"] > max(node.get("memory", 0) for node in nodes):
        asked["memory"] = resources["memory"] = max(node.get("memory", 0) for node in nodes)
    if any(all(node.get(name, 0) >= amount for name, amount in asked.items()) for node in nodes):
        return None
    wanted = f"{asked['CPU']:g} CPU, {asked['GPU']:g} GPU, {asked['memory'] / (1 << 30):.1f} GiB memory"
    largest = ", ".join(f"{node.get('CPU', 0):g} CPU / {node.get('GPU', 0):g} GPU / "
                        f"{node.get('memory', 0) / (1 << 30):.1f} GiB" for node in nodes) or "no alive node"
    hint = " (device: cuda needs a GPU node)" if asked["GPU"] else " (lower --ray-cpus / --ray-memory)"
    return f"no node of the Ray cluster has {wanted}{hint}; its nodes: {largest}"


def _weights_bytes(plan: Plan) -> int | None:
    """Size of the entry's original weights, from what is known without downloading them."""
    spec = plan.entry.source
    try:
        if spec.kind == "huggingface" and plan.revision:
            from pdo_hub.hub import _retry

            info = _retry.model_info(spec.id, revision=plan.revision, files_metadata=True)
            files = [(s.rfilename, s.size or 0) for s in info.siblings or []]
            for suffix in _WEIGHT_SUFFIXES:  # the first format listed is the one a loader takes
                sizes = [size for name, size in files if name.endswith(suffix)]
                if sizes:
                    return sum(sizes)
            return None
        if spec.kind == "torchvision":
            return _torchvision_file_size(spec.id, spec.weights or "DEFAULT")
        path = Path(spec.id).expanduser()
        return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES) if path.is_dir() \
            else path.stat().st_size
    except Exception as err:  # noqa: BLE001 -- an estimate only: the build reports real problems itself
        logger.debug("No weights size for %s: %s", spec, err)
        return None


def _torchvision_file_size(name: str, weights: str) -> int | None:
    import torch.hub

    from pdo_hub.cache import OptimizedCache
    from pdo_hub.mirror.plan import _weights_names

    path = Path(torch.hub.get_dir()) / "checkpoints" / _weights_names(name, weights, OptimizedCache())[1]
    return path.stat().st_size if path.is_file() else None
