"""`pdo-hub serve` under load, as a separate process run with the real CLI:

1. throughput: a stock client (`hf_hub_download`) downloads the 87 MiB model.safetensors of the real
   all-MiniLM-L6-v2 (published on the server's pushed-repo store) over loopback;
2. 16 concurrent stock clients (threads, each with its own client cache) download it: byte-identical?
   The server's resident memory is sampled from /proc every 20 ms meanwhile (peak reported);
3. cache-hit load through serve on a second process: `pdo_hub.from_pretrained` of the optimized
   variant (served from the cache) against stock `transformers.AutoModel.from_pretrained` of the
   original, both through HF_ENDPOINT with everything in the client caches, alternating, in fresh
   processes. Each process times its load call after importing what both need (torch, transformers,
   BERT's modeling code), and also imports + call (interpreter start-up excluded).

    python scripts/bench_serve.py [--workdir DIR] [--loads 7]

Targets (issue: the mirror people run): >= 200 MB/s; 16 identical files with server RSS < 300 MB;
cache-hit load <= 1.5x stock from_pretrained.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = "sentence-transformers/all-MiniLM-L6-v2"
# The original is pushed to the server under its own id: a repo is answered by one store, and REPO is
# the optimized variant's (from the cache).
ORIGINAL = "bench/all-MiniLM-L6-v2-original"
MIB = 1024 * 1024

LOAD_SCRIPT = """
import json, os, sys, time
kind = sys.argv[1]
started = time.perf_counter()
# What both loads import anyway (torch, transformers, BERT's modeling code), first: \"load\" times the
# call alone, \"total\" the imports too, as a user's script pays them.
import torch, transformers
from transformers.models.bert import modeling_bert
if kind == "pdo":
    import pdo_hub
    from pdo_hub.hub import transformers_models, variants
    imported = time.perf_counter()
    model = pdo_hub.from_pretrained(%(repo)r)
else:
    from transformers import AutoModel
    imported = time.perf_counter()
    model = AutoModel.from_pretrained(%(original)r)
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "total": done - started, "status": getattr(model, "pdo_cache_status", None)}))
""" % {"repo": REPO, "original": ORIGINAL}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pdo-bench-serve-"))
    cache = work / "cache"
    for stale in [*work.glob("dl*"), *work.glob("client-*")]:  # a cached file would not be downloaded again
        shutil.rmtree(stale)
    _prepare(work, cache)
    server = subprocess.Popen([sys.executable, "-m", "pdo_hub.cli", "serve", "--port", "0", "--cache", str(cache),
                               "--repos", str(work / "repos")], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[2]
        from huggingface_hub import hf_hub_download

        started = time.perf_counter()
        first = Path(hf_hub_download(ORIGINAL, "model.safetensors", endpoint=url, cache_dir=work / "dl0"))
        seconds = time.perf_counter() - started
        size = first.stat().st_size
        print(f"1 client: {size / MIB:.1f} MiB in {seconds:.3f} s = {size / MIB / seconds:.0f} MiB/s (target >= 200 MB/s)")
        reference = _sha256(first)

        peak = _Peak(server.pid)
        peak.start()
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            paths = list(pool.map(lambda i: Path(hf_hub_download(ORIGINAL, "model.safetensors",
                                                                 endpoint=url, cache_dir=work / f"dl{i + 1}")), range(16)))
        seconds = time.perf_counter() - started
        peak.stop()
        identical = all(_sha256(p) == reference for p in paths)
        print(f"16 clients: {16 * size / MIB:.0f} MiB in {seconds:.2f} s = {16 * size / MIB / seconds:.0f} MiB/s, "
              f"byte-identical: {identical}, server peak RSS {peak.peak / MIB:.0f} MiB (target < 300 MB)")
        _loads(url, work, args.loads)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _prepare(work: Path, cache: Path) -> None:
    """The original on the server's pushed-repo store (as ORIGINAL) and its optimized variant in the cache (REPO)."""
    from pdo_hub.mirror_demo import minilm_files
    from pdo_hub.serve import HubServer, RepoStore

    repos = RepoStore(work / "repos")
    if not repos.exists(ORIGINAL):
        repos.publish(ORIGINAL, minilm_files(), message="the original")
    if not any(cache.glob("models--*/entries/*")):
        upstream = RepoStore(work / "upstream")
        upstream.publish(REPO, minilm_files())
        with HubServer(upstream) as server:
            env = {**os.environ, "HF_ENDPOINT": server.url, "PDO_HUB_CACHE": str(cache), "HF_HUB_CACHE": str(work / "hf-build")}
            subprocess.run([sys.executable, "-m", "pdo_hub.cli", "optimize", f"hf:{REPO}", "--quiet"], env=env, check=True)


def _loads(url: str, work: Path, rounds: int) -> None:
    """Variant (pdo, REPO from the cache store) vs original (stock, ORIGINAL from the pushed store), one server."""
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(work / "client-hf"), "PDO_HUB_CACHE": str(work / "client-pdo")}
    times: dict[str, list[float]] = {"pdo": [], "stock": []}
    totals: dict[str, list[float]] = {"pdo": [], "stock": []}
    for index in range(rounds + 1):  # the first round fills the client caches and is not counted
        for kind in ("pdo", "stock"):
            done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, kind], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if index:
                times[kind].append(result["seconds"])
                totals[kind].append(result["total"])
    for label, series in (("load call", times), ("imports + load call", totals)):
        pdo, stock = statistics.median(series["pdo"]), statistics.median(series["stock"])
        print(f"cache-hit load through serve, {label} (median of {rounds}): pdo_hub.from_pretrained {pdo * 1000:.0f} ms, "
              f"stock AutoModel.from_pretrained {stock * 1000:.0f} ms = {pdo / stock:.2f}x (target <= 1.5x)")


class _Peak(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.02)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    main()
