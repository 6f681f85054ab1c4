"""Stress runs of crash safety, concurrency and memory (the bigger counts of the CI tests), bounded in time.

Sections (all by default; `--only` picks some):

- crash: SIGKILL at every point of `tests/crash_harness.POINTS` (fetch, optimize, save, commit, rename,
  lock, quarantine, eviction, hit): each must leave the complete entry or none, the next run completes it
  with the same weights as an undisturbed build, and `.tmp/` / `.trash/` are empty after it (or `prune`).
- concurrency: P processes x T threads ask for one uncached model (one optimization, identical bytes and
  outputs everywhere); then M different models in M processes at once (each built once, builds overlap).
- mirrors: two `pdo-hub mirror` processes on one cache, R rounds, a new upstream commit of one repo before
  each round: every entry built exactly once, both exit 0 every round, `pdo-hub cache verify` clean.
- memory: peak RSS while optimizing all-MiniLM-L6-v2 and the digits ResNet-18 (conservative preset),
  over 3x the model's FP32 size plus `MARGIN_MIB`.

A Hub-compatible server on 127.0.0.1 serves tiny BERTs (and nothing leaves the machine); everything is
written under a temp folder. Prints a summary (`--json`: one JSON object); exit 1 when a check failed.

    python scripts/stress.py [--only crash,concurrency,mirrors,memory] [--processes 6] [--threads 16]
                             [--models 4] [--rounds 3] [--points NAME,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path[:0] = [str(TESTS), str(HERE)]

#: Peak memory budget while optimizing: 3x the FP32 model plus this (activations of the calibration and
#: held-out batches, the allocator's slack, one serialized candidate).
MARGIN_MIB = 512
FAST = {"enable_low_rank_optimization": False, "auto_select_best_method": False, "benchmark_optimizations": False,
        "calibration_samples": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="crash,concurrency,mirrors,memory")
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", default=None, help="crash points to run (default: all), comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pdo-stress-"))
    os.environ.update(HF_HUB_CACHE=str(root / "hf"), PDO_HUB_CACHE=str(root / "pdo"), HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
                      PDO_HUB_LOCK_TIMEOUT="600")
    from pdo_hub.serve import HubServer

    hub = HubServer(root / "store", port=0, allow_anonymous_writes=True).start()
    os.environ["HF_ENDPOINT"] = hub.url  # before any Hub client is imported, here or in the children
    summary: dict = {"workdir": str(root)}
    try:
        for section in args.only.split(","):
            started = time.perf_counter()
            summary[section] = SECTIONS[section](hub, root / section, args)
            summary[section]["seconds"] = round(time.perf_counter() - started, 1)
            if not args.json:
                _print_section(section, summary[section])
    finally:
        hub.stop()
    failed = [name for name, value in summary.items() if isinstance(value, dict) and not value.get("ok", True)]
    summary["ok"] = not failed
    print(json.dumps(summary, indent=2) if args.json else f"\n{'all checks passed' if not failed else f'FAILED: {failed}'}")
    return 0 if not failed else 1


# --- crash ---------------------------------------------------------------------------------------


def crash(hub, work: Path, args) -> dict:
    from crash_harness import POINTS, ForkServer, crash_and_recover, make_reference, publish_repos

    work.mkdir(parents=True)
    publish_repos(hub, work / "sources")
    server = ForkServer()
    try:
        reference = make_reference(server, work / "reference")
        points = args.points.split(",") if args.points else list(POINTS)
        outcomes = [crash_and_recover(server, reference, point, work / point) for point in points]
    finally:
        server.close()
    rows = [{"point": o.point, "scenario": POINTS[o.point], "killed": o.killed, "next run": o.next_status[:60],
             "left by next run": len(o.left_by_next), "left after prune": len(o.left_after_prune),
             "ok": o.ok, "seconds": round(o.seconds, 1),
             "problems": o.after_kill + o.after_next + o.left_after_prune} for o in outcomes]
    return {"ok": all(o.ok for o in outcomes), "points": len(outcomes), "rows": rows}


# --- concurrency ----------------------------------------------------------------------------------


def concurrency(hub, work: Path, args) -> dict:
    from concurrency_worker import ask_together
    from hub_helpers import save_tiny_bert

    work.mkdir(parents=True)
    hub.store.publish("stress/one-bert", save_tiny_bert(work / "one", seed=21))
    results, trace = ask_together("stress/one-bert", FAST, args.processes, args.threads, work / "one-run",
                                  env=dict(os.environ, PDO_HUB_CACHE=str(work / "cache-one")), timeout=1200)
    errors = [r["error"] for r in results if "error" in r]
    builds = sum(line.startswith("flow.building ") for line in trace)
    one = {"callers": len(results), "errors": errors[:3], "optimizations": builds,
           "distinct weights": len({r.get("weights") for r in results if "weights" in r}),
           "distinct outputs": len({r.get("output") for r in results if "output" in r})}
    one["ok"] = (len(results) == args.processes * args.threads and not errors and builds == 1
                 and one["distinct weights"] == 1 and one["distinct outputs"] == 1)

    repos = [f"stress/model-{index}" for index in range(args.models)]
    for index, repo_id in enumerate(repos):
        hub.store.publish(repo_id, save_tiny_bert(work / f"model-{index}", seed=100 + index))
    results, trace = ask_together(repos, FAST, args.models, 1, work / "many-run",
                                  env=dict(os.environ, PDO_HUB_CACHE=str(work / "cache-many")), timeout=1200)
    errors = [r["error"] for r in results if "error" in r]
    spans = _build_spans(trace)
    many = {"models": len(repos), "errors": errors[:3], "built": sum(r.get("status") == "built" for r in results),
            "most builds at once": _most_at_once(spans)}
    many["ok"] = not errors and many["built"] == len(repos) and (len(repos) < 2 or many["most builds at once"] > 1)
    return {"ok": one["ok"] and many["ok"], "one model": one, "different models": many}


def _build_spans(trace: list[str]) -> list[tuple[float, float]]:
    """(start, end) of each build: `flow.building` to `flow.committed` of the same process and thread."""
    started, spans = {}, []
    for line in trace:
        name, pid, thread, when = line.split()
        if name == "flow.building":
            started[pid, thread] = float(when)
        elif name == "flow.committed" and (pid, thread) in started:
            spans.append((started.pop((pid, thread)), float(when)))
    return spans


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


# --- two mirrors on one cache ---------------------------------------------------------------------


def mirrors(hub, work: Path, args) -> dict:
    import yaml
    from hub_helpers import save_tiny_bert

    work.mkdir(parents=True)
    repos = [f"stress/mirrored-{index}" for index in range(args.models)]
    for index, repo_id in enumerate(repos):
        hub.store.publish(repo_id, save_tiny_bert(work / f"source-{index}", seed=200 + index))
    manifest = work / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"config": FAST}, "models": [f"hf:{r}" for r in repos]}))
    trace = work / "trace.txt"
    env = dict(os.environ, PDO_HUB_CACHE=str(work / "cache"), PDO_HUB_TEST_TRACE=str(trace))
    command = [sys.executable, "-m", "pdo_hub.cli", "mirror", str(manifest), "--jobs", "2"]
    failures = []
    for round_ in range(args.rounds):
        if round_:  # a new upstream commit: a new key, built by exactly one of the two mirrors
            hub.store.publish(repos[0], save_tiny_bert(work / f"source-0-{round_}", seed=300 + round_))
        runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
        for run in runs:
            output = run.communicate(timeout=1200)[0]
            if run.returncode != 0:
                failures.append(f"round {round_}: exit {run.returncode}: {output[-1500:]}")
    builds = sum(line.startswith("flow.building ") for line in trace.read_text().splitlines()) if trace.exists() else 0
    entries = len(list((work / "cache").glob("*/entries/*")))
    verify = subprocess.run([sys.executable, "-m", "pdo_hub.cli", "cache", "verify"], env=env, capture_output=True,
                            text=True)
    expected = len(repos) + args.rounds - 1
    result = {"rounds": args.rounds, "mirrors": 2, "entries": entries, "expected entries": expected,
              "optimizations": builds, "verify exit": verify.returncode, "failures": failures[:3]}
    result["ok"] = not failures and entries == expected and builds == expected and verify.returncode == 0
    return result


# --- memory ---------------------------------------------------------------------------------------

MEMORY_CHILD = r"""
import gc, json, sys
import torch
sys.path.insert(0, sys.argv[2])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(2)
from pdo_hub.optimizers import create_post_download_optimizer
if sys.argv[1] == "minilm":
    from transformers import AutoModel, AutoTokenizer
    from pdo_hub.demo import minilm_folder
    from pdo_hub.hub.examples import text_inputs
    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder).eval()
    batches = text_inputs(AutoTokenizer.from_pretrained(folder), model, 32)  # as a Hub build calibrates
else:
    from digits_resnet import load_digits_split, trained_digits_resnet18
    model = trained_digits_resnet18().eval()
    batches = list(load_digits_split()[0][:128].split(8))
fp32 = sum(t.numel() * t.element_size() for t in model.state_dict().values())
gc.collect()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:  # resets the peak (VmHWM) to the current RSS
    handle.write("5")
optimized, report = create_post_download_optimizer("conservative").optimize_model(
    model=model, model_name=sys.argv[1], example_inputs=batches[0], calibration_data=batches)
print(json.dumps({"fp32_bytes": fp32, "rss_before": before, "peak": status("VmHWM"),
                  "applied": report["optimizations_applied"], "seconds": report["optimization_time_seconds"]}))
"""


def memory(hub, work: Path, args) -> dict:
    rows, ok = [], True
    for name in ("minilm", "digits-resnet18"):
        run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, name.split("-")[0], str(HERE)],
                             capture_output=True, text=True, timeout=3600)
        if run.returncode != 0:
            rows.append({"model": name, "error": run.stderr[-1500:]})
            ok = False
            continue
        data = json.loads(run.stdout.strip().splitlines()[-1])
        extra = data["peak"] - data["rss_before"]
        budget = 3 * data["fp32_bytes"] + MARGIN_MIB * 2**20
        rows.append({"model": name, "fp32 MiB": _mib(data["fp32_bytes"]), "RSS before MiB": _mib(data["rss_before"]),
                     "peak MiB": _mib(data["peak"]), "peak - before MiB": _mib(extra),
                     "ratio to FP32": round(extra / data["fp32_bytes"], 2),
                     "budget MiB": _mib(budget), "within budget": extra <= budget, "applied": data["applied"],
                     "optimize seconds": data["seconds"]})
        ok = ok and extra <= budget
    return {"ok": ok, "margin MiB": MARGIN_MIB, "rows": rows}


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


# --- output ---------------------------------------------------------------------------------------


def _print_section(name: str, result: dict) -> None:
    print(f"\n## {name}: {'ok' if result.get('ok') else 'FAILED'} ({result['seconds']} s)")
    rows = result.get("rows")
    if rows:
        columns = [key for key in rows[0] if key != "problems"]
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(str(row.get(key, "")) for key in columns) + " |")
            for problem in row.get("problems", []):
                print(f"    {problem[:500]}")
    for key, value in result.items():
        if key not in ("rows", "ok", "seconds"):
            print(f"- {key}: {value}")


SECTIONS = {"crash": crash, "concurrency": concurrency, "mirrors": mirrors, "memory": memory}

if __name__ == "__main__":
    sys.exit(main())
