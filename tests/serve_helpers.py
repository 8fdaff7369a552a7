"""Helpers for the ``fingerprint serve`` tests: recording HTTP traffic and logs, secret forms,
and a server subprocess."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fingerprint.serve.logs import LOGGERS, JsonFormatter


class Recorded:
    """Every response seen by a :class:`RecordingTransport`: status, raw headers, body bytes."""

    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, status: int, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        rec = {"status": status, "headers": headers, "body": bytearray()}
        with self._lock:
            self.responses.append(rec)
        return rec

    def blobs(self) -> list[bytes]:
        """Each response's headers and body as bytes."""
        with self._lock:
            return [b"\n".join(k + b": " + v for k, v in r["headers"]) + b"\n\n" + bytes(r["body"])
                    for r in self.responses]


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: Any, rec: dict[str, Any]) -> None:
        self.inner = inner
        self.rec = rec

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.rec["body"] += chunk
            yield chunk

    def close(self) -> None:
        self.inner.close()


class RecordingTransport(httpx.HTTPTransport):
    """An httpx transport that keeps a copy of every response (streams included)."""

    def __init__(self, sink: Recorded, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sink = sink

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        rec = self.sink.add(resp.status_code, list(resp.headers.raw))
        return httpx.Response(resp.status_code, headers=resp.headers,
                              stream=_Tee(resp.stream, rec), extensions=resp.extensions)


class LogCapture(logging.Handler):
    """Keeps every record of the server's loggers, formatted as the server formats them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._saved: list[tuple[logging.Logger, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict[str, Any]]:
        """The captured lines, parsed."""
        return [json.loads(line) for line in list(self.lines)]

    def __enter__(self) -> LogCapture:
        for name in LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.level))
            lg.setLevel(logging.DEBUG)
            lg.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg, level in self._saved:
            lg.removeHandler(self)
            lg.setLevel(level)


def secret_forms(secret: bytes, api_keys: list[str]) -> list[bytes]:
    """The ways a secret could leak: raw, hex (both cases), base64 (padded or not, url-safe)."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode(),
             base64.b64encode(secret), base64.urlsafe_b64encode(secret),
             base64.b64encode(secret).rstrip(b"="), base64.urlsafe_b64encode(secret).rstrip(b"=")]
    forms += [k.encode() for k in api_keys]
    return forms


def assert_no_secret(blobs: list[bytes], forms: list[bytes], what: str) -> None:
    """Fail if any form of a secret occurs in any blob."""
    for i, blob in enumerate(blobs):
        for j, form in enumerate(forms):
            assert form not in blob, f"secret form {j} found in {what} #{i}"


class ServerProcess:
    """``python -m fingerprint.cli serve ...`` on a free port; stderr (JSON logs) collected."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "fingerprint.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})}, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if self.port is None:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "listen":
                    self.port = int(rec["port"])

    def wait_ready(self, timeout: float = 120.0) -> str:
        """The base URL, once the server answers /health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + "".join(self.lines[-20:]))
            if self.port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                        return f"http://127.0.0.1:{self.port}/v1"
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start:\n" + "".join(self.lines[-20:]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to a new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


__all__ = [
    "LogCapture",
    "Recorded",
    "RecordingTransport",
    "ServerProcess",
    "assert_no_secret",
    "secret_forms",
    "write_private",
]
