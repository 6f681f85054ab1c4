"""Offline mode makes no network call at all, proven at the socket level.

While `no_network()` is active, every `socket.connect` / `connect_ex` / `create_connection` to anything but a
local (AF_UNIX) socket, every `getaddrinfo`, and every send on a connection opened before (a client's
keep-alive pool needs no new connect) raises and is recorded, whoever makes it: pdo-hub, huggingface_hub,
transformers, torchvision. A server's request log would only see calls that reached that
server; this sees every attempt, including ones a library swallows to fall back to its cache.

huggingface_hub read `HF_HUB_OFFLINE` when the test session imported it (offline off, see conftest.py), so
its own blocking is not in play here: pdo-hub's offline path (`PDO_HUB_OFFLINE` / `HF_HUB_OFFLINE` read at
call time, `local_files_only=True`, `mirror --offline`) must hold by itself.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Iterator

import pytest
import torch
from hub_helpers import FAST_CONFIG, encode, hidden, save_tiny_bert

import pdo_hub
from pdo_hub.cli import main

REPO = "offline/tiny-bert"
PUSHED = "offline/tiny-bert-pdo"
ORIGINAL_ONLY = "offline/tiny-original"


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse and record every attempt to reach the network; yields the list of attempts."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(what: str) -> OSError:
        attempts.append(what)
        return OSError(f"offline test: network access refused ({what})")

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise refuse(f"connect {address!r}")

    def connect_ex(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address)
        raise refuse(f"connect_ex {address!r}")

    def create_connection(address, *args, **kwargs):
        raise refuse(f"create_connection {address!r}")

    def getaddrinfo(host, port, *args, **kwargs):
        raise refuse(f"getaddrinfo {host!r}:{port!r}")

    def guard_send(cls: type, name: str):
        real = getattr(cls, name)

        def send(self, *args, **kwargs):  # a keep-alive connection opened earlier needs no connect()
            if self.family == getattr(socket, "AF_UNIX", None):
                return real(self, *args, **kwargs)
            raise refuse(f"{name} on an open connection to {_peer(self)}")

        return send

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        for name in ("send", "sendall", "sendto", "sendmsg"):
            patch.setattr(socket.socket, name, guard_send(socket.socket, name))
            patch.setattr(ssl.SSLSocket, name, guard_send(ssl.SSLSocket, name))
        patch.setattr(socket, "create_connection", create_connection)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield attempts


def _peer(sock: socket.socket) -> str:
    try:
        return repr(sock.getpeername())
    except OSError:
        return "an unconnected socket"


def test_the_guard_sees_every_way_out(hub_server):
    import httpx2
    from huggingface_hub import HfApi

    with no_network() as attempts:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", hub_server.port))
        with pytest.raises(OSError):
            socket.getaddrinfo("huggingface.co", 443)
        with socket.socket() as sock, pytest.raises(OSError):
            sock.connect(("127.0.0.1", hub_server.port))
        with pytest.raises(Exception):
            HfApi(endpoint=hub_server.url).model_info("anything/at-all")
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(hub_server.url)
    with httpx2.Client() as client:
        client.get(hub_server.url + "/api/models/anything/at-all")  # leaves a keep-alive connection in the pool
        with no_network() as reused, pytest.raises(httpx2.HTTPError):
            client.get(hub_server.url + "/api/models/anything/at-all")
    assert len(attempts) >= 5 and reused, (attempts, reused)


@pytest.fixture(scope="module")
def tiny_repo(hub_server, tmp_path_factory) -> str:
    files = save_tiny_bert(tmp_path_factory.mktemp("offline_bert"), seed=3)
    hub_server.store.publish(REPO, files, message="tiny")
    hub_server.store.publish(ORIGINAL_ONLY, files, message="tiny, mirrored as is")
    return REPO


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "PDO_HUB_OFFLINE", "local_files_only"])
def test_from_pretrained_offline_makes_no_connection(tiny_repo, switch, tmp_path, monkeypatch):
    hf_cache = str(tmp_path / "hf")
    online = pdo_hub.from_pretrained(tiny_repo, config=FAST_CONFIG, cache_dir=hf_cache)
    kwargs = {"local_files_only": True} if switch == "local_files_only" else {}
    if switch != "local_files_only":
        monkeypatch.setenv(switch, "1")
    with no_network() as attempts:
        offline = pdo_hub.from_pretrained(tiny_repo, config=FAST_CONFIG, cache_dir=hf_cache, **kwargs)
        outputs = hidden(offline, encode())
    assert attempts == [], f"offline from_pretrained tried the network: {attempts}"
    assert offline.pdo_cache_status == "hit" and offline.pdo_cache_path == online.pdo_cache_path
    assert torch.equal(outputs, hidden(online, encode()))


def test_an_offline_miss_is_an_error_not_a_connection(tiny_repo, monkeypatch):
    from pdo_hub.core.errors import OfflineCacheMissError

    monkeypatch.setenv("PDO_HUB_OFFLINE", "1")
    with no_network() as attempts, pytest.raises(OfflineCacheMissError):
        pdo_hub.from_pretrained(tiny_repo, config=FAST_CONFIG)
    assert attempts == []


def _seed_resnet18_weights() -> None:
    import torchvision

    from pdo_hub.hub import torchvision_models

    path = torchvision_models.weights_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    if not path.is_file():  # seeded under the real file name: torchvision never downloads it
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def test_mirror_offline_makes_no_connection(tiny_repo, tmp_path, capsys):
    _seed_resnet18_weights()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "defaults:\n  config: " + json.dumps(FAST_CONFIG) + "\n"
        f"models:\n  - hf:{tiny_repo}\n  - source: hf:{ORIGINAL_ONLY}\n    optimize: false\n"
        "  - torchvision:resnet18:DEFAULT\n")
    assert main(["mirror", str(manifest), "--quiet"]) == 0, capsys.readouterr()
    capsys.readouterr()
    with no_network() as attempts:
        code = main(["mirror", str(manifest), "--offline", "--json", "--quiet"])
    result = json.loads(capsys.readouterr().out)
    assert attempts == [], f"mirror --offline tried the network: {attempts}"
    assert code == 0 and result["counts"]["skipped"] == 3, result


def test_get_model_offline_makes_no_connection(monkeypatch):
    _seed_resnet18_weights()
    online = pdo_hub.get_model("resnet18", weights="DEFAULT", config=FAST_CONFIG)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with no_network() as attempts:
        offline = pdo_hub.get_model("resnet18", weights="DEFAULT", config=FAST_CONFIG)
    assert attempts == [], f"offline get_model tried the network: {attempts}"
    assert offline.pdo_cache_status == "hit" and offline.pdo_cache_path == online.pdo_cache_path


def test_a_published_variant_loads_offline_without_a_connection(tiny_repo, tmp_path, monkeypatch):
    from pdo_hub.push import push_entry

    with monkeypatch.context() as patch:
        patch.setenv("PDO_HUB_CACHE", str(tmp_path / "builder"))
        built = pdo_hub.from_pretrained(tiny_repo, config=FAST_CONFIG, cache_dir=str(tmp_path / "builder_hf"))
    push_entry(built.pdo_cache_path, PUSHED)
    hf_cache = str(tmp_path / "hf")
    online = pdo_hub.from_pretrained(PUSHED, cache_dir=hf_cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with no_network() as attempts:
        offline = pdo_hub.from_pretrained(PUSHED, cache_dir=hf_cache)
        offline_pinned = pdo_hub.AutoModel.from_pretrained(PUSHED, cache_dir=hf_cache)
    assert attempts == [], f"an offline load of a published variant tried the network: {attempts}"
    assert offline.pdo_cache_status == "hit" and offline.pdo_cache_path == online.pdo_cache_path
    assert offline_pinned.pdo_cache_path == online.pdo_cache_path
