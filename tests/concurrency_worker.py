"""A process whose threads all ask for one model at the same moment (tests/test_concurrency.py, scripts/stress.py).

    python concurrency_worker.py REPO_ID CONFIG_JSON THREADS START_FOLDER

Once imported, the process writes `START_FOLDER/ready-<pid>` and waits for `START_FOLDER/go`, so that the
processes of a run start together however long their imports took; then THREADS threads pass a barrier
and call `pdo_hub.from_pretrained`. One JSON line per thread goes to stdout: the cache status, the
sha256 of the entry's `model.safetensors` and of the model's output on a fixed input, or the error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import pdo_hub

TOKENS = torch.arange(1, 17).unsqueeze(0)


def ask(repo_id: str, config: dict) -> dict:
    try:
        model = pdo_hub.from_pretrained(repo_id, config=config)
        with torch.inference_mode():
            output = model(input_ids=TOKENS).last_hidden_state.contiguous()
        weights = Path(model.pdo_cache_path) / "model.safetensors"
        return {"repo": repo_id, "pid": os.getpid(), "status": model.pdo_cache_status,
                "weights": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "output": hashlib.sha256(output.numpy().tobytes()).hexdigest()}
    except BaseException as err:  # reported, not raised: the parent checks every thread
        return {"repo": repo_id, "pid": os.getpid(), "error": f"{type(err).__name__}: {err}"}


def main() -> None:
    repo_id, config, threads, start = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(1)  # many processes share few cores
    (start / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 300
    while not (start / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    barrier = threading.Barrier(threads)
    results: list[dict] = [{} for _ in range(threads)]

    def run(index: int) -> None:
        barrier.wait()
        results[index] = ask(repo_id, config)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for result in results:
        print(json.dumps(result), flush=True)


def ask_together(repo_id: str | list[str], config: dict, processes: int, threads: int, workdir: Path,
                 env: dict[str, str] | None = None, timeout: float = 600) -> tuple[list[dict], list[str]]:
    """Run `processes` workers of `threads` threads each (worker i asks for `repo_id[i % len(repo_id)]` when
    given a list); returns every thread's result and the crash-point trace (`PDO_HUB_TEST_TRACE`: one
    `<point> <pid> <thread> <time>` line per point reached, by all processes)."""
    start, trace = workdir / "start", workdir / "trace.txt"
    start.mkdir(parents=True)
    env = dict(os.environ if env is None else env, PDO_HUB_TEST_TRACE=str(trace))
    repo_ids = [repo_id] if isinstance(repo_id, str) else list(repo_id)
    workers = [subprocess.Popen([sys.executable, __file__, repo_ids[index % len(repo_ids)], json.dumps(config),
                                 str(threads), str(start)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
               for index in range(processes)]
    try:
        deadline = time.monotonic() + timeout
        while len(list(start.glob("ready-*"))) < processes and time.monotonic() < deadline:
            if any(worker.poll() is not None for worker in workers):
                break  # one died while importing: its output says why
            time.sleep(0.05)
        (start / "go").touch()
        results = []
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=max(deadline - time.monotonic(), 1))
            if worker.returncode != 0:
                raise RuntimeError(f"a worker failed ({worker.returncode}):\n{stderr[-3000:]}")
            results += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    lines = trace.read_text(encoding="utf-8").splitlines() if trace.exists() else []
    return results, lines


if __name__ == "__main__":
    main()
