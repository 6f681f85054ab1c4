"""Test set-up shared by every test.

Hub settings are read when huggingface_hub is imported, so they are set here, before any test module
imports it: telemetry and Xet off, the client cache in a session temp folder, and HF_ENDPOINT pointing
at the Hub-compatible server that the `hub_server` fixture starts on 127.0.0.1 (nothing leaves the
machine). Every test gets its own optimized cache folder.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="pdo-hub-tests-"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
        "HF_HOME": str(_SESSION_ROOT / "hf_home"),
        "HF_HUB_CACHE": str(_SESSION_ROOT / "hf_hub_cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "DISABLE_SAFETENSORS_CONVERSION": "1",
        "TORCH_HOME": str(_SESSION_ROOT / "torch_home"),
        # Defaults under ~/.cache (the demo's work folder, matplotlib's) must not outlive a run: a folder
        # left by another checkout or version would make the tests depend on it.
        "XDG_CACHE_HOME": str(_SESSION_ROOT / "xdg_cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("PDO_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(autouse=True)
def _warm_ups_stay_in_their_test(monkeypatch):
    """Background warm-ups (a loaded variant building its trace) end with the test that started them, and
    files are damaged in place (truncated, then rewritten) only after they are done.

    A loaded variant maps its weights file, and pulling pages from under a running model is fatal
    (SIGBUS) for any memory-mapped load, as the README's known limits say. A warm-up still running in
    the next test also broke `ast.parse` there (CPython 3.11.7's "AST constructor recursion depth
    mismatch" when another thread runs Python code meanwhile)."""
    from pdo_hub.optimizers.methods import _warm_up

    write_bytes = Path.write_bytes

    def after_warm_ups(self, data):
        _warm_up.wait_all(timeout=120)
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", after_warm_ups)
    yield
    _warm_up.wait_all(timeout=120)


@pytest.fixture(autouse=True)
def _isolated_pdo_cache(tmp_path, monkeypatch):
    """Point the optimized cache at a per-test folder so no test sees another's entries."""
    monkeypatch.setenv("PDO_HUB_CACHE", str(tmp_path / "pdo_cache"))
    yield


@pytest.fixture(scope="session")
def session_root() -> Path:
    return _SESSION_ROOT


# --- Hub server fixtures (tests/hub_fixtures.py) -------------------------------------------------
from hub_fixtures import *  # noqa: E402,F401,F403  (fixtures live beside the server helpers)
