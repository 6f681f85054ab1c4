"""An S3-compatible server on 127.0.0.1 (moto's, a real HTTP server, not a mock of the client) and the
environment that points pdo-hub's shared cache tier at a fresh prefix of it for each test.

Used by tests/test_shared_cache.py and tests/test_shared_serve.py, and by scripts/bench_shared_cache.py.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

BUCKET = "pdo-shared"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def start_s3_server():
    """Start moto's S3 server on a free port of 127.0.0.1; returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def make_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    import s3fs

    try:
        s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True).mkdir(bucket)
    except FileExistsError:  # moto's state is per process: a second server in this process shares it
        pass


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server for the module, with the bucket made; yields its endpoint URL."""
    server, endpoint = start_s3_server()
    make_bucket(endpoint)
    yield endpoint
    server.stop()


@pytest.fixture
def env(s3, monkeypatch):
    """A fresh tier prefix for this test, set in the environment with a 1 s build lease; returns it."""
    values = tier_env(s3)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PDO_HUB_SHARED_LEASE_SECONDS", "1")
    return values


def closed_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tier_env(endpoint: str, prefix: str | None = None) -> dict[str, str]:
    """Environment for a tier at `s3://BUCKET/{prefix}` on `endpoint` (a fresh prefix by default)."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
            "PDO_HUB_SHARED_CACHE": f"s3://{BUCKET}/{prefix or uuid.uuid4().hex[:12]}"}


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pdo_hub.cache import CacheKey, OptimizedCache

    key = CacheKey.from_dict(__import__("json").loads(sys.argv[2]))

    def build(folder):
        (folder / "model.safetensors").write_bytes(b"w" * 300_000)
        (folder / "config.json").write_text("{}")

    OptimizedCache(Path(sys.argv[1])).get_or_create(key, build)
    print("finished")
""")


def run_worker(root: Path, key, env: dict[str, str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """Build `key` into the local cache `root` in a new process (another machine: its own local cache and
    lock), SIGKILLed at the crash point `kill_at` (see pdo_hub.core._crashpoints)."""
    import json

    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                                   os.environ.get("PYTHONPATH")]))}
    if kill_at:
        child_env["PDO_HUB_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", _WORKER, str(root), json.dumps(key.to_dict())], env=child_env,
                          capture_output=True, text=True, timeout=120)
