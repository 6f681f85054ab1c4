"""Kill a build with SIGKILL at a named crash point, then check what it left (see `pdo_hub.core._crashpoints`).

Used by tests/test_crash_safety.py (a representative subset) and scripts/stress.py (every point).

Each killed build runs in a process forked from a server that has imported torch, transformers and
pdo-hub once (run this file to start one), so a kill costs the build only, not a 5 s interpreter start.
The server imports but computes nothing before forking: no OpenMP pool exists yet to be broken by fork.
A build asks `pdo_hub.from_pretrained` for a tiny BERT on the Hub server at HF_ENDPOINT, with its own
optimized cache and Hub client cache, so fetch points see a real download.

After a kill, `check_complete_or_absent` requires every entry folder to be complete (manifest, every
file re-hashed) or to be exactly what was there before the run; the next run must then load the model
with the same weights as an undisturbed build, and `.tmp/` and `.trash/` must be empty once that run
or `OptimizedCache.prune()` has run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Every crash point, with the state of the cache its build starts from:
#   fresh   - empty optimized cache and Hub client cache: fetch, optimize, commit, load;
#   damaged - the entry is there with a flipped byte: quarantined under the lock, then rebuilt;
#   evict   - another model's entry is there and PDO_HUB_CACHE_MAX_SIZE=1: the commit evicts it;
#   hit     - the entry is there, older than the racy window: a hit records its verified files.
POINTS: dict[str, str] = {
    "lock.acquired": "fresh",
    "lock.recorded": "fresh",
    "flow.building": "fresh",
    "tmp.locked": "fresh",
    "commit.tmp_created": "fresh",
    "fetch.start": "fresh",
    "fetch.small_files": "fresh",
    "fetch.downloaded": "fresh",
    "optimize.start": "fresh",
    "optimize.method_applied": "fresh",
    "optimize.done": "fresh",
    "storage.replacing": "fresh",
    "storage.weights_written": "fresh",
    "entry.weights_saved": "fresh",
    "entry.card_written": "fresh",
    "commit.written": "fresh",
    "commit.manifest_written": "fresh",
    "place.renaming": "fresh",
    "place.renamed": "fresh",
    "commit.placed": "fresh",
    "flow.committed": "fresh",
    "lock.releasing": "fresh",
    "flow.released": "fresh",
    "flow.loaded": "fresh",
    "ref.replacing": "fresh",
    "quarantine.moving": "damaged",
    "quarantine.moved": "damaged",
    "discard.renamed": "evict",
    "verified.replacing": "hit",
}

CONFIG = {"enable_low_rank_optimization": False, "auto_select_best_method": False, "benchmark_optimizations": False,
          "calibration_samples": 2}
REPO_ID = "pdo-test/crash-bert"
OTHER_REPO_ID = "pdo-test/crash-bert-other"
JOB_SECONDS = 240  # a build that has neither finished nor died by then hangs: SIGALRM ends it


@dataclass
class Run:
    """One build in a forked process: how it ended and what it logged."""

    point: str | None
    signal: int
    code: int
    log: str
    seconds: float


class ForkServer:
    """A process that has imported torch, transformers and pdo-hub, and forks one child per build."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env, text=True)
        ready = self._process.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the fork server did not start: {ready!r}")

    def build(self, pdo_cache: Path, hf_cache: Path, log: Path, point: str | None = None,
              extra_env: dict[str, str] | None = None, repo_id: str = REPO_ID) -> Run:
        """Ask for `repo_id` once, killed at `point` (None: never)."""
        env = {"PDO_HUB_CACHE": str(pdo_cache), "PDO_HUB_VERBOSITY": "info", "PDO_HUB_LOCK_TIMEOUT": "60",
               **(extra_env or {})}
        if point is not None:
            env["PDO_HUB_TEST_KILL_AT"] = point
        job = {"repo_id": repo_id, "hf_cache": str(hf_cache), "env": env, "log": str(log)}
        started = time.perf_counter()
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        return Run(point, answer["signal"], answer["code"], text, time.perf_counter() - started)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


def serve() -> None:
    """The fork server's loop: one JSON job per stdin line, one JSON result per stdout line."""
    import torch  # noqa: F401  (imported once here, shared by every fork)
    import transformers  # noqa: F401
    from transformers import AutoTokenizer, BertModel  # noqa: F401  (transformers imports lazily)

    import pdo_hub
    from pdo_hub.hub import transformers_models  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job, pdo_hub)
        _, status = os.waitpid(pid, 0)
        killed = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        print(json.dumps({"signal": killed, "code": code}), flush=True)


def _child(job: dict, pdo_hub) -> None:
    import torch

    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        signal.alarm(JOB_SECONDS)
        os.environ.update(job["env"])
        torch.set_num_threads(1)  # the machine is shared: one core per build
        model = pdo_hub.from_pretrained(job["repo_id"], config=CONFIG, cache_dir=job["hf_cache"])
        print(f"status {model.pdo_cache_status}", flush=True)
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


# --- one point -----------------------------------------------------------------------------------


@dataclass
class Reference:
    """Caches holding an undisturbed build of each repo, to start scenarios from and compare with."""

    cache: Path  # entries of REPO_ID and OTHER_REPO_ID
    other_cache: Path  # the entry of OTHER_REPO_ID only
    weights_sha256: str  # model.safetensors of REPO_ID's entry


@dataclass
class Outcome:
    """What killing a build at one point did, and what the next run made of it."""

    point: str
    killed: bool
    after_kill: list[str]  # entry folders neither complete nor untouched
    next_status: str  # "built" / "hit" of the next run, or "failed: ..."
    after_next: list[str]  # problems after the next run (incomplete entries, wrong weights)
    left_by_next: list[str]  # leftovers once the next run has run
    left_after_prune: list[str]  # leftovers after OptimizedCache.prune()
    seconds: float

    @property
    def ok(self) -> bool:
        return (self.killed and not self.after_kill and self.next_status in ("built", "hit") and not self.after_next
                and not self.left_after_prune and (self.next_status == "hit" or not self.left_by_next))


def publish_repos(hub, workdir: Path) -> None:
    """Publish the two tiny BERTs on `hub` (a `pdo_hub.serve.HubServer`)."""
    from hub_helpers import save_tiny_bert

    for seed, repo_id in ((1, REPO_ID), (2, OTHER_REPO_ID)):
        hub.store.publish(repo_id, save_tiny_bert(workdir / f"source-{seed}", seed=seed))


def make_reference(server: ForkServer, workdir: Path) -> Reference:
    """Build both repos undisturbed (each in its own cache), and a cache with both entries."""
    workdir.mkdir(parents=True, exist_ok=True)
    other = workdir / "other"
    for repo_id, cache in ((OTHER_REPO_ID, other), (REPO_ID, workdir / "main")):
        run = server.build(cache, workdir / "hf", workdir / f"{repo_id.split('/')[1]}.log", repo_id=repo_id)
        if run.code != 0:
            raise RuntimeError(f"the reference build of {repo_id} failed:\n{run.log[-3000:]}")
    both = workdir / "both"
    shutil.copytree(workdir / "main", both)
    for folder in entry_folders(other):
        shutil.copytree(folder, both / folder.relative_to(other))
    [main_entry] = entries_of(workdir / "main", REPO_ID)
    return Reference(both, other, sha256(main_entry / "model.safetensors"))


def crash_and_recover(server: ForkServer, reference: Reference, point: str, workdir: Path) -> Outcome:
    """Kill a build at `point` in the scenario `POINTS[point]`, check the cache, run again, check again."""
    from pdo_hub.cache import OptimizedCache

    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = POINTS[point]
    root, hf = workdir / "pdo_cache", workdir / "hf_cache"
    extra_env = {}
    if scenario == "evict":
        shutil.copytree(reference.other_cache, root)
        extra_env["PDO_HUB_CACHE_MAX_SIZE"] = "1"
    elif scenario in ("damaged", "hit"):
        shutil.copytree(reference.cache, root)
        [entry] = entries_of(root, REPO_ID)
        if scenario == "damaged":
            damage(entry)
        else:
            time.sleep(2.2)  # files changed within the racy window are not recorded as verified
    before = {folder: tree_digest(folder) for folder in entry_folders(root)}
    run = server.build(root, hf, workdir / "killed.log", point, extra_env)
    killed = run.signal == signal.SIGKILL
    after_kill = check_complete_or_absent(root, before)
    if not killed:
        after_kill.append(f"not killed at {point} (exit code {run.code}, signal {run.signal}):\n{run.log[-2000:]}")

    again = server.build(root, hf, workdir / "next.log")
    status = next((line.split()[1] for line in again.log.splitlines() if line.startswith("status ")), None)
    next_status = status if again.code == 0 and status else f"failed: {again.log[-2000:]}"
    after_next = check_complete_or_absent(root, {})
    mine = entries_of(root, REPO_ID)
    if len(mine) != 1:
        after_next.append(f"{len(mine)} entries of {REPO_ID}")
    elif sha256(mine[0] / "model.safetensors") != reference.weights_sha256:
        after_next.append("model.safetensors differs from an undisturbed build")
    left_by_next = leftovers(root)
    OptimizedCache(root).prune()
    return Outcome(point, killed, after_kill, next_status, after_next, left_by_next, leftovers(root),
                   time.perf_counter() - started)


# --- checks -------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def entry_folders(root: Path) -> list[Path]:
    return sorted(root.glob("*/entries/*"))


def entries_of(root: Path, repo_id: str) -> list[Path]:
    return sorted(root.glob(f"models--{repo_id.replace('/', '--')}/entries/*"))


def check_complete_or_absent(root: Path, before: dict[Path, dict[str, str]]) -> list[str]:
    """Problems of the cache at `root`: an entry folder neither complete nor as it was before the run.

    Complete means: listed by `OptimizedCache.list_entries` and every file re-hashed against its manifest.
    """
    from pdo_hub.cache import OptimizedCache
    from pdo_hub.cache.integrity import Check, examine

    cache = OptimizedCache(root)
    listed = {entry.path for entry in cache.list_entries()}
    problems = []
    for folder in entry_folders(root):
        if folder in before and tree_digest(folder) == before[folder]:
            continue  # untouched by the killed run (e.g. the damaged entry it had not moved yet)
        verdict = examine(root, folder, Check.FULL, None)
        if folder not in listed or verdict.entry is None:
            problems.append(f"{folder.relative_to(root)}: not a complete entry ({verdict.reason})")
    return problems


def leftovers(root: Path) -> list[str]:
    """What interrupted runs left in `.tmp/` and `.trash/`, and temp files inside entries and refs."""
    found = [p for area in (".tmp", ".trash") for p in sorted((root / area).glob("*"))]
    found += sorted(root.glob("*/entries/*/.*.tmp")) + sorted(root.glob("*/refs/**/.*.tmp"))
    return [p.relative_to(root).as_posix() for p in found]


def damage(folder: Path) -> None:
    """Flip one byte in the middle of the entry's weights."""
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


if __name__ == "__main__":
    serve()
