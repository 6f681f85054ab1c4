"""Hostile HTTP requests to `pdo-hub serve`: random methods, raw paths, queries, headers and JSON / NDJSON
bodies to every endpoint. Every answer is below 500 and the server keeps answering afterwards."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path
from urllib.parse import quote

import pytest
from fuzz_support import fuzz_settings, json_values, mostly, nasty_text
from hypothesis import example, given
from hypothesis import strategies as st

from pdo_hub.cache import CacheKey, OptimizedCache
from pdo_hub.serve import HubServer, RepoStore, downloads
from pdo_hub.serve.service import ServeOptions, build_server

TOKENS = {
    "write-a": {"user": "writer", "scopes": ["read", "write"], "namespaces": ["org"]},
    "read-a": {"user": "reader", "scopes": ["read"], "namespaces": ["org"]},
}
README = "---\nlicense: mit\n2020-01-01: a date as a key\nwhen: 2020-12-31\n---\n# model\n"
SHA = "0" * 40


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    store = RepoStore(tmp_path_factory.mktemp("fuzz_store"))
    store.publish("org/model", {"config.json": b"{}", "README.md": README.encode(), "sub/w.safetensors": b"x" * 100})
    store.publish("org/private", {"a.txt": b"secret"}, private=True)
    store.publish("solo", {"a.txt": b"a"})
    with HubServer(store, tokens=TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory):
    """`pdo-hub serve --allow-downloads` over a cache holding one variant of `org/cached`; the download itself
    is stubbed (no network)."""
    root = tmp_path_factory.mktemp("fuzz_cache")

    def write(folder: Path) -> None:
        files = {"README.md": README.encode(), "config.json": b"{}", "model.safetensors": b"x" * 100}
        for name, data in files.items():
            (folder / name).write_bytes(data)

    OptimizedCache(root).commit(CacheKey("huggingface", "org/cached", "a" * 40, "0" * 64), write)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(downloads, "_fetch", lambda spec, optimize, preset, cache: {"status": "success", "source": str(spec)})
        server = build_server(ServeOptions(port=0, cache=root, allow_downloads=True))
        with server:
            yield server


def _segment(text: str, safe: str) -> str:
    """Percent-encode what http.client would refuse (it sends only printable ASCII) and, now and then, more."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


segments = st.one_of(
    st.sampled_from(["org", "model", "solo", "main", SHA, "refs%2Fpr%2F1", "config.json", "sub%2Fw.safetensors",
                     "..", ".", "%2e%2e", "%00", "%ff%fe", "%2F", "resolve", "tree", "revision", "a" * 300, "x" * 5000]),
    st.builds(_segment, nasty_text, st.sampled_from(["", "/", "%", "./"])),
)
# Mostly names that exist, so that requests reach the endpoints' code and not only the 404 of a missing repo.
repos = mostly(st.sampled_from(["org/model"] * 3 + ["org/cached"] * 2 + ["solo", "org/private", "org/new", "new"]),
               st.builds("{}/{}".format, segments, segments))
revisions = mostly(st.sampled_from(["main"] * 4 + ["refs%2Fpr%2F1", "refs%2Fheads%2Fmain", "nobranch", SHA]), segments)
files = mostly(st.sampled_from(["config.json", "README.md", "sub/w.safetensors", "sub%2Fw.safetensors", "no.txt"]),
               segments)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
READS = ["/api/models/{repo}", "/api/models/{repo}/revision/{rev}", "/api/models/{repo}/tree/{rev}",
         "/api/models/{repo}/tree/{rev}/{file}", "/api/models/{repo}/refs", "/api/models/{repo}/commits/{rev}",
         "/{repo}/resolve/{rev}/{file}", "/api/whoami-v2", "/api/models", "/api/datasets/{repo}", "//{repo}//{file}"]


def _ndjson(lines: list) -> bytes:
    return b"\n".join(json.dumps(line).encode() if not isinstance(line, bytes) else line for line in lines)


def _json(strategy: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda data: json.dumps(data).encode())


paths_in_repo = mostly(st.sampled_from(["a.txt", "sub/b.bin", "config.json", "x.safetensors"]), json_values)
commit_lines = st.lists(mostly(st.one_of(
    st.fixed_dictionaries({"key": st.just("header"), "value": st.fixed_dictionaries(
        {}, optional={"summary": mostly(st.text(max_size=20)), "description": json_values,
                      "parentCommit": st.one_of(st.just(SHA), json_values)})}),
    st.fixed_dictionaries({"key": st.just("file"), "value": st.fixed_dictionaries(
        {"path": paths_in_repo},
        optional={"content": mostly(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())),
                  "encoding": mostly(st.just("base64"))})}),
    st.fixed_dictionaries({"key": st.sampled_from(["lfsFile", "deletedFile", "deletedFolder", "other"]),
                           "value": st.fixed_dictionaries({"path": paths_in_repo},
                                                          optional={"oid": mostly(st.just("f" * 64))})}),
), st.one_of(json_values, st.binary(max_size=30), st.just(b"[" * 3000))), max_size=4).map(_ndjson)
create_bodies = _json(st.fixed_dictionaries({"name": mostly(st.sampled_from(["new", "model", "m" * 97]), segments)},
                                            optional={"organization": mostly(st.sampled_from(["org", "other"])),
                                                      "private": json_values, "type": mostly(st.just("model")),
                                                      "visibility": json_values}))
preupload_bodies = _json(st.fixed_dictionaries({"files": mostly(st.lists(st.fixed_dictionaries(
    {"path": paths_in_repo}, optional={"size": json_values, "sample": json_values}), max_size=3))}))
yaml_bodies = _json(st.fixed_dictionaries({"content": mostly(st.sampled_from([
    README, "---\na: 2020-13-45\n---\n", "---\na: " + "1" * 5000 + "\n---\n", "---\n" + "[" * 3000 + "\n---\n",
    "---\n{a\n---\n", "---\n!!python/name:os.system\n---\n"]))}))
download_bodies = _json(st.fixed_dictionaries({}, optional={
    "source": mostly(st.sampled_from(["huggingface", "hf", "torchvision"])),
    "model_id": mostly(st.sampled_from(["org/model", "resnet18:DEFAULT", "x" * 5000, "~\x00", "a/../b"]), nasty_text),
    "optimize": json_values, "preset": json_values, "revision": json_values}))
bodies = st.one_of(st.just(b""), commit_lines, create_bodies, preupload_bodies, yaml_bodies, download_bodies,
                   _json(json_values), st.binary(max_size=80), st.just(b"[" * 5000))
WRITES = [("/api/repos/create", create_bodies), ("/api/models/{repo}/preupload/{rev}", preupload_bodies),
          ("/api/models/{repo}/commit/{rev}", commit_lines), ("/api/validate-yaml", yaml_bodies),
          ("/models/download", download_bodies)]


def _fill(template: str, repo: str, rev: str, file: str) -> str:
    return template.format(repo=repo, rev=rev, file=file)


reads = st.tuples(mostly(st.sampled_from(["GET", "HEAD"]), methods),
                  st.builds(_fill, st.sampled_from(READS), repos, revisions, files), mostly(st.just(b""), bodies))
writes = st.sampled_from(WRITES).flatmap(lambda write: st.tuples(
    mostly(st.just("POST"), methods), st.builds(_fill, st.just(write[0]), repos, revisions, files),
    mostly(write[1], bodies)))
anything = st.tuples(methods, st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
                     .map(lambda p: "/" + p), bodies)
requests = st.one_of(reads, writes, anything)
queries = st.one_of(st.just(""), st.builds(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs),
                                           st.lists(st.tuples(st.sampled_from(["recursive", "include_prs", "create_pr",
                                                                               "author", "search", "expand", "x",
                                                                               "source", "model_id"]),
                                                              mostly(st.sampled_from(["1", "org", "hf"]), segments)),
                                                    max_size=3)))
_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
headers = st.fixed_dictionaries({
    "Authorization": mostly(st.sampled_from(["Bearer write-a"] * 3 + ["", "Bearer read-a", "Bearer ", "Basic eDp5",
                                                                      "bearer", "Bearer write-a write-a"]), _header_text),
}, optional={
    "Range": mostly(st.sampled_from(["bytes=0-0", "bytes=-5", "bytes=5-", "bytes=9-2", "bytes=0-99999999999",
                                     "bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000, "bytes=0-1,2-3",
                                     "bytes=\u0663-"]), _header_text),
    "Content-Type": st.sampled_from(["application/json", "application/x-ndjson", "text/plain", "multipart/form-data"]),
    "X-Junk": _header_text,
}).map(lambda sent: {name: value for name, value in sent.items() if value})  # "" stands for no such header


def _send(server: HubServer, method: str, path: str, headers: dict, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            connection.putheader(name, value.encode("utf-8"))  # raw bytes: the server reads them as latin-1
        connection.endheaders(body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@fuzz_settings(3)
@given(requests, queries, headers)
@example(("GET", "/api/models/org/model", b""), "", {})
@example(("POST", "/api/repos/create", b"[" * 5000), "", {"Authorization": "Bearer write-a"})  # JSON nested too deep
@example(("POST", "/api/models/org/model/commit/main", _ndjson([{"key": "file", "value": {"path": "a/\ud800"}}])),
         "", {"Authorization": "Bearer write-a"})  # a lone surrogate in a path
@example(("POST", "/api/models/org/model/commit/main", _ndjson([{"key": "file", "value": {
    "path": "a.txt", "content": "\ud800", "encoding": "utf-8"}}])), "", {"Authorization": "Bearer write-a"})
@example(("POST", "/api/validate-yaml", json.dumps({"content": "---\na: 2020-13-45\n---\n"}).encode()), "", {})
@example(("GET", "/org/model/resolve/main/config.json", b""), "", {"Range": "bytes=" + "9" * 5000 + "-"})
@example(("GET", "/api/models/org/%00", b""), "", {})  # a NUL echoed into the X-Error-Message header
@example(("POST", "/api/repos/create", json.dumps({"name": "m" * 5000, "organization": "org"}).encode()), "",
         {"Authorization": "Bearer write-a"})  # a folder name past the file system's limit
def test_the_repo_server_answers_every_request_below_500(repo_server, request_parts, query, headers):
    method, path, body = request_parts
    status = _send(repo_server, method, path + query, headers, body)
    assert status < 500, f"{method} {path[:200]} answered {status}"


@fuzz_settings(1)
@given(requests, queries, headers)
@example(("POST", "/models/download", json.dumps({"source": "hf", "model_id": "x" * 5000}).encode()), "", {})
@example(("POST", "/models/download", b""), "?source=hf&model_id=~%00", {})
@example(("GET", "/api/models/org/cached", b""), "", {})
@example(("GET", "/org/cached/resolve/main/README.md", b""), "", {"Range": "bytes=-5"})
def test_the_cache_server_answers_every_request_below_500(cache_server, request_parts, query, headers):
    method, path, body = request_parts
    status = _send(cache_server, method, path + query, headers, body)
    assert status < 500, f"{method} {path[:200]} answered {status}"


@pytest.mark.parametrize("raw", [
    b"GET /api/models/org/model HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST /api/repos/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/models HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 70000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello on the plain port
])
def test_malformed_http_is_refused_and_the_server_stays_up(repo_server, raw):
    with socket.create_connection(("127.0.0.1", repo_server.port), timeout=30) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if answer:  # a server may also just close a connection that does not speak HTTP
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:300]
    assert _send(repo_server, "GET", "/api/models/org/model", {}, b"") == 200
