"""`HubServer`: the Hub-compatible ASGI app served by uvicorn on a background thread.

Stock clients use it by pointing `HF_ENDPOINT` (or `endpoint=`) at `server.url`. The same class runs
the test servers and `pdo-hub serve`, so the protocol has one implementation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType

import uvicorn

from pdo_hub.core.errors import ConfigError
from pdo_hub.serve._http import DEFAULT_MAX_BODY, Request, Response, ServeConfig
from pdo_hub.serve.asgi import DEFAULT_MAX_HEADER_BYTES, create_app
from pdo_hub.serve.repo_store import RepoStore
from pdo_hub.serve.store_protocol import ReadableRepoStore
from pdo_hub.serve.tokens import TokenScope, TokenTable, parse_tokens

logger = logging.getLogger(__name__)

_START_TIMEOUT = 30.0
_GRACEFUL_SHUTDOWN_S = 5  # downloads still running at stop() get this long, then they are cut
# h11 refuses (400) a request head beyond this; below it the app answers 431 with X-Error-Code.
_MAX_REQUEST_HEAD = 4 * DEFAULT_MAX_HEADER_BYTES


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the thread that owns the process (it runs on a worker)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubServer:
    """A Hub-compatible server for a store of model repos, served by uvicorn on a daemon thread.

    Args:
        store_or_root: Any `ReadableRepoStore` (a `RepoStore`, a `StoreChain`, an `UpstreamStore`, ...),
            or a folder to open a `RepoStore` in.
        host: Interface to bind. Anything but loopback (127.0.0.0/8, ::1, localhost) needs tokens,
            or `insecure=True`.
        port: Port to bind; 0 picks a free one (read it back from `port` / `url`).
        tokens: Valid bearer tokens and their scopes, in any form `parse_tokens` accepts (a list,
            `{token: user}`, `{token: {"user", "scopes", "namespaces"}}`, a `TokenTable`). None: no
            tokens, so nobody sees private repos and nobody may write.
        public_url: The URL clients reach the server at (behind a proxy), used in the URLs of answers.
            Defaults to the bound `http://host:port`; the request's Host header is never used.
        allow_anonymous_writes: Let requests without a valid token create repos and commit (tests, or a
            private machine). Off by default: the server is read-only without write tokens.
        insecure: Allow a non-loopback `host` without tokens (or with anonymous writes).
        max_body_bytes: Largest request body accepted; larger ones get 413 at once.
        max_logged_requests: How many recent requests `requests` keeps.
        extra_routes: More framework-neutral endpoints, `{(method, "/path"): endpoint(Request) -> Response}`
            (see `ServeConfig.extra_routes`).

    Raises:
        ConfigError: Bad tokens, a bad `public_url`, or a non-loopback `host` without tokens and without
            `insecure=True` (`--insecure` on the command line).

    Example:
        ```python
        >>> with HubServer("/tmp/hub", tokens={"secret": "alice"}) as server:
        ...     os.environ["HF_ENDPOINT"] = server.url  # before importing huggingface_hub
        ```
    """

    def __init__(self, store_or_root: ReadableRepoStore | str | os.PathLike[str], host: str = "127.0.0.1",
                 port: int = 0,
                 tokens: TokenTable | Mapping[str, str | Mapping | TokenScope] | Iterable[str] | None = None, *,
                 public_url: str | None = None, allow_anonymous_writes: bool = False, insecure: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY, max_logged_requests: int = 10_000,
                 extra_routes: Mapping[tuple[str, str], Callable[[Request], Response]] | None = None) -> None:
        if isinstance(store_or_root, (str, os.PathLike)):
            store_or_root = RepoStore(store_or_root)
        if not isinstance(store_or_root, ReadableRepoStore):
            raise ConfigError(f"HubServer needs a folder or a store implementing ReadableRepoStore, "
                              f"got {type(store_or_root).__name__}.")
        self.store = store_or_root
        self.host, self._requested_port = host, int(port)
        self.tokens = parse_tokens(tokens)
        self.allow_anonymous_writes = bool(allow_anonymous_writes)
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 0:
            raise ConfigError(f"max_body_bytes must be a non-negative number of bytes, got {max_body_bytes!r}.")
        self.max_body_bytes = max_body_bytes
        self.public_url = _check_public_url(public_url)
        self.extra_routes = dict(extra_routes or {})
        _check_exposure(host, bool(self.tokens), self.allow_anonymous_writes, insecure)
        self._log: deque[tuple[str, str]] = deque(maxlen=max_logged_requests)
        self._log_lock = threading.Lock()
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (raises when the server is not started)."""
        if self._socket is None:
            raise RuntimeError("HubServer is not started: call start() or use it as a context manager.")
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        """Base URL for `HF_ENDPOINT`: `public_url` if given, else e.g. `http://127.0.0.1:8080`."""
        if self.public_url:
            return self.public_url
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """The most recent requests (at most `max_logged_requests`), as (method, raw path without query)."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        """Forget the requests logged so far (to assert on what a single call requested)."""
        with self._log_lock:
            self._log.clear()

    def _record(self, method: str, raw_path: str) -> None:
        with self._log_lock:
            self._log.append((method, raw_path))

    def start(self) -> HubServer:
        """Bind the port and serve on a daemon thread; returns once the server accepts connections.

        Raises:
            RuntimeError: Already started, or the server did not come up.
            OSError: The port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("HubServer is already started.")
        self._socket = _bind(self.host, self._requested_port)
        config = ServeConfig(store=self.store, base_url=self.url, tokens=self.tokens,
                             allow_anonymous_writes=self.allow_anonymous_writes, max_body_bytes=self.max_body_bytes,
                             extra_routes=self.extra_routes)
        uvicorn_config = uvicorn.Config(
            create_app(config, record=self._record), log_config=None, access_log=False, lifespan="off",
            proxy_headers=False, server_header=False, timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
            h11_max_incomplete_event_size=_MAX_REQUEST_HEAD)
        self._server = _ThreadServer(uvicorn_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=f"pdo-hub-serve:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("The Hub server did not start (see the log of 'uvicorn.error').")
            time.sleep(0.01)
        logger.info("Serving %s at %s", type(self.store).__name__, self.url)
        return self

    def stop(self) -> None:
        """Stop serving, cut idle keep-alive connections and release the port (no-op when not started)."""
        server, thread, sock = self._server, self._thread, self._socket
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join(timeout=_GRACEFUL_SHUTDOWN_S + 5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout=5)
        if sock is not None:
            sock.close()
        self._server, self._thread, self._socket = None, None, None
        logger.info("Stopped the Hub server")

    def serve_forever(self) -> bool:
        """Serve until Ctrl-C or SIGTERM, then stop as `stop` does: for a foreground `pdo-hub serve`.

        SIGTERM is what `docker stop`, systemd and a plain `kill` send; by default it would end the
        process at once, cutting downloads in flight, so here it stops the server like Ctrl-C (from the
        main thread only: Python sets signal handlers there).

        Returns:
            True when Ctrl-C or SIGTERM stopped it; False when the server ended by itself (it failed: see the log).
        """
        if self._server is None:
            self.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            # Short sleeps, not one long one: a signal can land on the server's thread, and Python runs its
            # handler only when the main thread next wakes. Not Thread.join: on Python 3.11 a Ctrl-C inside
            # it marks the still-running thread as ended (bpo-45274), and stop() would then close the
            # socket under uvicorn instead of letting it finish its downloads.
            while self._thread is not None and self._thread.is_alive():
                time.sleep(0.5)
            return False
        except KeyboardInterrupt:
            logger.info("Interrupted")
            return True
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def _check_exposure(host: str, has_tokens: bool, anonymous_writes: bool, insecure: bool) -> None:
    if is_loopback(host) or insecure or (has_tokens and not anonymous_writes):
        return
    why = "with anonymous writes" if anonymous_writes else "without any token"
    raise ConfigError(
        f"Refusing to serve on {host or 'every interface'!r} {why}: anyone who can reach it could read "
        f"{'and overwrite ' if anonymous_writes else ''}its models. Configure tokens (a token file), bind "
        f"127.0.0.1, or pass --insecure (insecure=True) if the network is trusted.")


def _check_public_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise ConfigError(f"public_url must be an http:// or https:// URL, got {url!r}.")
    return url.rstrip("/")


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port); binding here lets port 0 be read back at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting on the same fixed port right after a stop must work (the old one is in TIME_WAIT).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
