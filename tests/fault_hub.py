"""A fault-injecting Hub for tests: a raw asyncio proxy on 127.0.0.1 in front of the project's `HubServer`.

Stock clients talk to the proxy (`FaultHub.url`); it reads each HTTP/1.1 request whole, matches it
against the rules in the order they were added, and either forwards it to the real server or injects
a fault. Faults the Hub's clients meet in the wild, each one a `Fault` kind:

- `status`: answer with an error status (500, 429 with `Retry-After`, ...) without asking the server;
- `delay`: hold the request for `seconds` (longer than the client's timeout), then forward it;
- `drop`: forward, send the answer's head and half its body, then close the connection;
- `length`: forward with `Content-Length` off by `delta` bytes (HEAD: the header only; GET: a shorter
  body to match a smaller length -- a consistent lie -- or the whole body then a close for a larger one);
- `hook`: run a callable (e.g. move a branch to a new commit), then forward.

Every rule fires at most `times` times and every wait is bounded, so no test can loop or hang on it.
Requests go upstream over a fresh connection that closes after the answer (the answer is read whole:
test files are small); the client side keeps its connection alive as a real server would.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pdo_hub.serve import HubServer, RepoStore

__all__ = ["Fault", "FaultHub", "Seen", "use_endpoint"]

_MAX_DELAY = 30.0  # no injected wait may be longer
_UPSTREAM_TIMEOUT = 60.0  # the real server answers test requests in far less
_KINDS = ("status", "delay", "drop", "length", "hook")


@dataclass
class Fault:
    """One rule: requests matching `method` and `path` get the fault `kind`, at most `times` times.

    Attributes:
        kind: `status`, `delay`, `drop`, `length` or `hook` (see the module docstring).
        path: Regular expression searched in the raw request path (query excluded).
        method: HTTP method, or `*` for any.
        times: How many matching requests get the fault; later ones are forwarded untouched.
        status: The status of a `status` fault.
        headers: Extra headers of a `status` fault (e.g. `{"Retry-After": "1"}`).
        seconds: The wait of a `delay` fault (at most 30 s).
        delta: Bytes added to the true `Content-Length` by a `length` fault (negative: shorter).
        hook: Called (in the proxy's thread) by a `hook` fault before forwarding.
        fired: How many times it fired so far.
    """

    kind: str
    path: str
    method: str = "*"
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    delta: int = 0
    hook: Callable[[], None] | None = None
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; known: {_KINDS}.")
        if not 0 <= self.seconds <= _MAX_DELAY or self.times < 0:
            raise ValueError(f"A fault waits 0..{_MAX_DELAY} s and fires a non-negative number of times.")

    def matches(self, method: str, path: str) -> bool:
        return self.fired < self.times and self.method in ("*", method) and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Seen:
    """A request the proxy received: method, raw path (no query), its Range header, the fault it got, when."""

    method: str
    path: str
    range: str | None
    fault: str | None
    at: float


class FaultHub:
    """A `HubServer` over a `RepoStore` in `root`, behind a fault-injecting proxy.

    Args:
        root: Folder of the repo store.
        tokens: Tokens of the real server (as `HubServer` takes them).
        allow_anonymous_writes: Let requests without a token push (as `HubServer`).

    Example:
        ```python
        >>> with FaultHub(tmp_path / "store") as hub:
        ...     hub.add(Fault("status", r"/resolve/.*/model\\.safetensors$", method="GET", times=2))
        ...     httpx2.get(hub.url + "/api/models/org/name")  # forwarded; file GETs get 500 twice
        ```
    """

    def __init__(self, root: str | Path, *, tokens=None, allow_anonymous_writes: bool = True) -> None:
        self.store = RepoStore(root)
        self.server = HubServer(self.store, tokens=tokens, allow_anonymous_writes=allow_anonymous_writes)
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """What clients use as the Hub endpoint (the proxy)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def requests(self) -> list[Seen]:
        """Every request the proxy received, in order."""
        with self._lock:
            return list(self._seen)

    def add(self, *faults: Fault) -> None:
        """Add rules (matched in the order added)."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """Drop every rule and forget the requests seen."""
        with self._lock:
            self._faults.clear()
            self._seen.clear()

    def start(self) -> FaultHub:
        self.server.start()
        self._loop = asyncio.new_event_loop()
        self._listener = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self._port = self._listener.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-hub:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None:
            async def shutdown() -> None:
                self._listener.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            loop.close()
            self._loop = None
        self.server.stop()

    def __enter__(self) -> FaultHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the proxy ----------------------------------------------------------------------------------

    def _match(self, method: str, path: str, range_header: str | None) -> Fault | None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.fired += 1
            self._seen.append(Seen(method, path, range_header, fault.kind if fault else None, time.monotonic()))
            return fault

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return  # the client closed its keep-alive connection
                method, target, headers = _parse_head(head)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    writer.write(_response(501, {}, b"chunked request bodies are not proxied"))
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                fault = self._match(method, target.split("?", 1)[0], headers.get("range"))
                if not await self._answer(fault, method, head, body, writer):
                    return
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return
        finally:
            writer.close()

    async def _answer(self, fault: Fault | None, method: str, head: bytes, body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the client connection stays open."""
        if fault is not None and fault.kind == "status":
            payload = b"" if method == "HEAD" else json.dumps({"error": f"injected {fault.status}"}).encode()
            writer.write(_response(fault.status, fault.headers, payload, length=len(payload)))
            await writer.drain()
            return True
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.kind == "hook" and fault.hook is not None:
            await asyncio.get_running_loop().run_in_executor(None, fault.hook)
        status_line, response_headers, response_body = await self._forward(head, body)
        keep_open = True
        if fault is not None and fault.kind == "drop":
            response_body, keep_open = response_body[: len(response_body) // 2], False
        elif fault is not None and fault.kind == "length":
            true_length = int(_header(response_headers, "content-length") or 0)
            wrong = max(true_length + fault.delta, 0)
            response_headers = _set_header(response_headers, "Content-Length", str(wrong))
            if fault.delta < 0:
                response_body = response_body[:wrong]
            else:
                keep_open = False  # the client waits for bytes that never come, until the close
        writer.write(status_line + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in response_headers)
                     + b"\r\n" + (b"" if method == "HEAD" else response_body))
        await writer.drain()
        return keep_open

    async def _forward(self, head: bytes, body: bytes) -> tuple[bytes, list[tuple[str, str]], bytes]:
        """Send the request to the real server over a connection of its own; its answer, read whole."""
        lines = head.decode("latin-1").split("\r\n")
        kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
        request = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            writer.write(request + body)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), _UPSTREAM_TIMEOUT)
        finally:
            writer.close()
        raw_head, _, rest = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line]
        headers = [(k, v) for k, v in headers if k.lower() != "connection"]
        if (_header(headers, "transfer-encoding") or "").lower() == "chunked":
            raise RuntimeError("the proxy expects Content-Length answers from HubServer")
        return (status_line + "\r\n").encode("latin-1"), headers, rest


def use_endpoint(monkeypatch, url: str) -> None:
    """Point every Hub client call of this process at `url` (huggingface_hub read HF_ENDPOINT at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _set_header(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name.lower()] + [(name, value)]


def _response(status: int, headers: dict[str, str], payload: bytes, *, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Injected", "Content-Type: application/json",
             f"Content-Length: {len(payload) if length is None else length}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
