"""Running the app with uvicorn: in the foreground with graceful shutdown, or in a thread.

On SIGTERM (or SIGINT) the server drains at once, before uvicorn closes its sockets: requests
that arrive from then on get 503, requests in flight (queued or generating) finish, then the
batcher stops and the process exits 0. uvicorn waits up to ``shutdown_timeout`` seconds for open
connections, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

try:
    import uvicorn
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("fingerprint serve needs starlette and uvicorn: "
                      "pip install 'fingerprint[serve]'") from err

from fingerprint.errors import ConfigError
from fingerprint.serve.app import serve_state

logger = logging.getLogger("fingerprint.serve")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, has_api_keys: bool) -> None:
    """Refuse to listen beyond loopback without API keys."""
    if not has_api_keys and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} without API keys: anyone who can reach "
                          "it could use the model. Pass --api-keys FILE, or bind to 127.0.0.1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server that drains the app when asked to exit and exits 0 afterwards."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        serve_state(self._app).begin_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # a graceful stop is a success, not a re-raised kill


def _config(app: Any, *, log_level: str, shutdown_timeout: float,
            limit_concurrency: int | None) -> uvicorn.Config:
    return uvicorn.Config(app, http="h11", lifespan="on", log_config=None, access_log=False,
                          log_level=log_level,
                          timeout_graceful_shutdown=math.ceil(shutdown_timeout),
                          limit_concurrency=limit_concurrency, server_header=False,
                          timeout_keep_alive=5)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
               log_level: str = "info", shutdown_timeout: float = 60.0,
               limit_concurrency: int | None = 1024) -> int:
    """Serve ``app`` until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    check_bind(host, serve_state(app).api_keys is not None)
    sock = bind_socket(host, port)
    server = _Server(_config(app, log_level=log_level, shutdown_timeout=shutdown_timeout,
                             limit_concurrency=limit_concurrency), app)
    logger.info("listening", extra={"fields": {"event": "listen", "host": host,
                                               "port": sock.getsockname()[1]}})
    server.run(sockets=[sock])
    return 0 if server.started else 1


class ServerThread:
    """The app served by uvicorn in a background thread (tests, benchmarks, notebooks)::

        with ServerThread(app) as srv:
            client = OpenAI(base_url=srv.base_url, api_key="...")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning", shutdown_timeout: float = 30.0) -> None:
        check_bind(host, serve_state(app).api_keys is not None)
        self.app = app
        self.host = host
        self._sock = bind_socket(host, port)
        self.port = int(self._sock.getsockname()[1])
        self.server = _Server(_config(app, log_level=log_level,
                                      shutdown_timeout=shutdown_timeout,
                                      limit_concurrency=None), app)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="fingerprint-serve-uvicorn", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; returns once uvicorn is up."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Drain and stop as on SIGTERM: requests in flight finish first."""
        serve_state(self.app).begin_drain()
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ServerThread", "bind_socket", "check_bind", "is_loopback", "run_server"]
