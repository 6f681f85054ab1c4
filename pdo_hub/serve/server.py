"""`HubServer`: a Hub-compatible HTTP server over a `RepoStore`, run in a background thread.

Stock clients use it by pointing `HF_ENDPOINT` (or `endpoint=`) at `server.url`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import ThreadingHTTPServer
from types import TracebackType

from pdo_hub.serve.hub_app import HubRequestHandler
from pdo_hub.serve.repo_store import RepoStore

logger = logging.getLogger(__name__)

_DEFAULT_USER = "user"  # name given to tokens passed as a plain list


class _HubHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the store, the token table and the request log for the handler."""

    daemon_threads = True  # a stuck client connection never blocks shutdown
    allow_reuse_address = True  # restarting on the same fixed port right after a stop must work

    def __init__(self, address: tuple[str, int], store: RepoStore, tokens: dict[str, str] | None,
                 record_request: Callable[[str, str], None]) -> None:
        super().__init__(address, HubRequestHandler)
        self.store = store
        self.tokens = tokens
        self.record_request = record_request
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so a stopped server answers nothing more on them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    def user_for(self, token: str | None) -> str | None:
        """The user name of a valid token, or None."""
        if token is None or not self.tokens:
            return None
        return self.tokens.get(token)



class HubServer:
    """A Hub-compatible server for the repos of a `RepoStore`, serving on a daemon thread.

    Args:
        store_or_root: A `RepoStore`, or a folder to open one in.
        host: Interface to bind (keep `127.0.0.1` unless the mirror must be reachable from elsewhere).
        port: Port to bind; 0 picks a free one (read it back from `port` / `url`).
        tokens: Valid bearer tokens, as `{token: user_name}` or a list of tokens (user `"user"`).
            None (the default) makes an open server: nobody can see private repos and anyone may write.
            With tokens, writes and private repos need one of them.

    Example:
        ```python
        >>> with HubServer("/tmp/hub") as server:
        ...     os.environ["HF_ENDPOINT"] = server.url  # before importing huggingface_hub
        ```
    """

    def __init__(self, store_or_root: RepoStore | str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
                 tokens: Mapping[str, str] | Iterable[str] | None = None) -> None:
        self.store = store_or_root if isinstance(store_or_root, RepoStore) else RepoStore(store_or_root)
        self.host, self._requested_port = host, int(port)
        if tokens is None:
            self.tokens: dict[str, str] | None = None
        elif isinstance(tokens, Mapping):
            self.tokens = {str(k): str(v) for k, v in tokens.items()}
        else:
            self.tokens = {str(token): _DEFAULT_USER for token in tokens}
        self._log: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (raises when the server is not started)."""
        return self._running().server_address[1]

    @property
    def url(self) -> str:
        """Base URL for `HF_ENDPOINT`, e.g. `http://127.0.0.1:8080`."""
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received so far, as (method, raw path without query), oldest first."""
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
        """Bind the port and serve in a daemon thread.

        Raises:
            RuntimeError: Already started.
            OSError: The port cannot be bound.
        """
        if self._httpd is not None:
            raise RuntimeError("HubServer is already started.")
        self._httpd = _HubHTTPServer((self.host, self._requested_port), self.store, self.tokens, self._record)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"pdo-hub-serve:{self.port}", daemon=True)
        self._thread.start()
        logger.info("Serving %s at %s", self.store.root, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port (no-op when not started)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(timeout=10)
        self._httpd, self._thread = None, None
        logger.info("Stopped Hub server for %s", self.store.root)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _running(self) -> _HubHTTPServer:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started: call start() or use it as a context manager.")
        return self._httpd
