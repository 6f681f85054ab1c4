"""Mirror builds as Ray tasks (`pdo-hub mirror MANIFEST --ray [ADDRESS]`): the runner's other executor.

Planning, result records, push, summary and exit code are the runner's, as in local mode; only where
`build_plan` runs changes: one Ray task per (model, config), with declared resources (see
`_ray_settings`), collected with `ray.wait` as they finish so the driver reports each at once.

- Worker loss (the worker process killed, out of memory, its node gone) is a system failure: Ray runs the
  task again, up to `retries` times. `build_plan` never raises (an entry's own error is its failed
  result), so application errors are never retried: they are reported like in local mode.
- A build killed half-way leaves no partial entry: the cache commits through a temp folder and a rename,
  and the retry (or the other driver's task) meets the per-key lock, so a key is built once per machine.
- Each worker writes its own node's local cache; results reach other machines through the shared tier
  (`PDO_HUB_SHARED_CACHE`), which every task is given like the other settings.

Ray is imported only here, only when `--ray` is used.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pdo_hub.core.errors import ClusterError, ConfigError
from pdo_hub.mirror._ray_settings import Secrets, task_resources, unschedulable, worker_settings
from pdo_hub.mirror.plan import Plan

logger = logging.getLogger("pdo_hub.mirror")

_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RayOptions:
    """How builds run on Ray.

    Attributes:
        address: The cluster: None follows `ray.init()` (RAY_ADDRESS, else a cluster started on this
            machine with `ray start`, else a new local one for this run); `auto` requires an existing one;
            `HOST:PORT` or `ray://HOST:PORT` names one.
        cpus: CPUs each build reserves (and the torch threads it uses).
        memory: Bytes of memory each build reserves; None estimates it from the model's size.
        retries: Times a build is run again after its worker was lost.
    """

    address: str | None = None
    cpus: float = 1.0
    memory: int | None = None
    retries: int = 3


def require_ray():
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("mirror --ray needs Ray, which is not installed: pip install 'pdo-hub[scale]'.") from err
    return ray


def build_on_ray(to_build: list[tuple[int, Plan]], options) -> Iterator[tuple[int, object]]:
    """Yield (index, EntryResult) for each planned build, run as Ray tasks, as they finish."""
    from pdo_hub.mirror.runner import _failure

    ray = require_ray()
    settings: RayOptions = options.ray
    started_here = connect(ray, settings.address, show_logs=options.progress)
    pending: dict = {}
    try:
        plain, secrets = worker_settings()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        task = ray.remote(_build_task)
        for index, plan in to_build:
            entry, started = plan.entry, time.perf_counter()
            resources = task_resources(plan, cpus=settings.cpus, memory=settings.memory)
            problem = unschedulable(resources, nodes, estimated=settings.memory is None)
            if problem:
                yield index, _failure(entry, ClusterError(problem), started)
                continue
            ref = task.options(name=f"pdo-hub mirror {entry.source}", max_retries=settings.retries,
                               retry_exceptions=False, runtime_env={"env_vars": plain},
                               **resources).remote(plan, options, secrets)
            pending[ref] = (index, plan, started)
            logger.info("%s (%s): sent to Ray (%s)", entry.source, entry.config_label, _describe(resources))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index, plan, started = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as err:  # build_plan never raises: Ray itself failed the task
                result = _failure(plan.entry, err, started)
                if isinstance(err, _lost_worker_errors(ray)):
                    result.error = f"its Ray worker was lost on all {settings.retries + 1} attempts: {result.error}"
            # The time since it was sent counts the queue and every attempt; result.seconds is the last attempt's.
            logger.info("%s (%s): %s on Ray, %.1f s after it was sent", plan.entry.source, plan.entry.config_label,
                        result.status, time.perf_counter() - started)
            yield index, result
    finally:
        for ref in pending:  # the driver stops early (Ctrl-C, an error): its builds stop too
            with contextlib.suppress(Exception):  # never hide why the driver stopped
                ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def connect(ray, address: str | None, *, show_logs: bool = True) -> bool:
    """Join the cluster at `address` (see RayOptions); True when this call started the connection.

    A process already connected (a Python caller's own `ray.init`) keeps its connection.

    Raises:
        ClusterError: the address cannot be reached or is not a Ray cluster.
    """
    if ray.is_initialized():
        return False
    if address not in (None, "", "auto", "local"):
        _check_reachable(address)
    try:
        ray.init(address=address or None, log_to_driver=show_logs,
                 logging_level=logging.INFO if show_logs else logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        raise ClusterError(f"Cannot join the Ray cluster at {address or 'auto'}: {' '.join(str(err).split())[:300]} "
                           f"{_START_HINT}") from err
    return True


_START_HINT = ("Start one with `ray start --head` (then --ray auto), give the head's HOST:6379 or "
               "ray://HOST:10001, or use --ray with no address for a local cluster.")


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing listens at (ray.init would keep retrying for a minute)."""
    host_port = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}: give HOST:PORT, ray://HOST:PORT or auto. {_START_HINT}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT).close()
    except OSError as err:
        raise ClusterError(f"Cannot reach the Ray cluster at {address}: {err}. {_START_HINT}") from err


def _build_task(plan: Plan, options, secrets: Secrets):
    """The Ray task: one entry's build, with the driver's secrets set for its duration."""
    from pdo_hub.mirror.runner import build_plan

    # As the CLI does in its own process: torch's import-time notices would reach the driver's terminal.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    with secrets.applied():
        return build_plan(plan, options)


def _lost_worker_errors(ray) -> tuple[type, ...]:
    errors = ray.exceptions
    return errors.WorkerCrashedError, errors.NodeDiedError, errors.OutOfMemoryError


def _describe(resources: dict) -> str:
    parts = [f"{resources['num_cpus']:g} CPU"]
    if resources["num_gpus"]:
        parts.append(f"{resources['num_gpus']:g} GPU")
    if resources.get("memory"):
        parts.append(f"{resources['memory'] / (1 << 30):.1f} GiB")
    return ", ".join(parts)
