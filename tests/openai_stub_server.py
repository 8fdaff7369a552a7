"""A local OpenAI-compatible HTTP server for tests, with deterministic answers and fault injection.

``OpenAIStub`` listens on 127.0.0.1 (ephemeral port) in a daemon thread while used as a context
manager, and serves ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``. Answers
come from ``answer(prompt)``. A fault plan ``faults(prompt, attempt) -> kind | None`` (attempt is
1-based per prompt) injects failures:

* ``"500"`` / ``"400"``: that HTTP status with an error body;
* ``"429"``: rate limited, with ``Retry-After: <retry_after>`` when ``retry_after`` is set;
* ``"hang"``: no answer for ``hang_s`` seconds, then the connection is closed;
* ``"close"``: the connection is closed without any response;
* ``"truncated"``: a 200 whose body is cut short before the connection closes;
* ``"trickle"``: a 200 whose body arrives a few bytes every 0.1 s (each wait is short, the
  whole response slow);
* ``"malformed"``: a 200 whose body is not JSON;
* ``"missing"``: a 200 JSON body without the completion text.

With ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get a 401 whose
message quotes the header received (as some providers do). Every wait is cut short when the
server stops, so no test is held up by a hanging handler.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FaultPlan = Callable[[str, int], "str | None"]
FAULT_KINDS = (
    "500", "400", "429", "hang", "close", "truncated", "trickle", "malformed", "missing"
)


def echo(prompt: str) -> str:
    """Default deterministic answer."""
    return f"echo: {prompt}"


def first_n(kind: str, n: int, prompts: Sequence[str] | None = None) -> FaultPlan:
    """Fault ``kind`` on the first ``n`` attempts of each prompt (or only of ``prompts``)."""
    chosen = None if prompts is None else set(prompts)

    def plan(prompt: str, attempt: int) -> str | None:
        if chosen is not None and prompt not in chosen:
            return None
        return kind if attempt <= n else None

    return plan


def always(kind: str) -> FaultPlan:
    """Fault ``kind`` on every request."""
    return first_n(kind, 1 << 30)


def scripted(script: Mapping[str, Sequence[str | None]]) -> FaultPlan:
    """Per prompt, the fault of each successive attempt (``None``: answer normally)."""

    def plan(prompt: str, attempt: int) -> str | None:
        steps = script.get(prompt, ())
        return steps[attempt - 1] if attempt <= len(steps) else None

    return plan


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: OpenAIStub

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out or go away are expected here: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None,
              raw: bytes | None = None, claimed_length: int | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(claimed_length or len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _drop(self) -> None:
        """End the connection without (further) response."""
        self.close_connection = True

    def do_GET(self) -> None:
        stub = self.server.stub
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
            if path == "/v1/chat/completions":
                prompt = body["messages"][-1]["content"]
            else:
                prompt = body["prompt"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._send(400, {"error": {"message": "bad request body"}})
            return
        auth = self.headers.get("Authorization")
        attempt = stub._arrive(prompt, path, body, auth)
        try:
            if stub.serial:
                with stub._serial_lock:
                    self._respond(stub, path, body, prompt, attempt, auth)
            else:
                self._respond(stub, path, body, prompt, attempt, auth)
        finally:
            stub._leave()

    def _respond(self, stub: OpenAIStub, path: str, body: dict[str, Any], prompt: str,
                 attempt: int, auth: str | None) -> None:
        if stub.delay and stub._stop.wait(stub.delay):
            self._drop()
            return
        if stub.api_key is not None and auth != f"Bearer {stub.api_key}":
            message = f"Incorrect API key provided: {auth!r}"
            self._send(401, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        kind = stub.faults(prompt, attempt) if stub.faults else None
        if kind == "500":
            self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
        elif kind == "400":
            self._send(400, {"error": {"message": "bad request", "type": "invalid_request"}})
        elif kind == "429":
            headers = {} if stub.retry_after is None else {"Retry-After": stub.retry_after}
            self._send(429, {"error": {"message": "rate limited"}}, headers)
        elif kind == "hang":
            stub._stop.wait(stub.hang_s)
            self._drop()
        elif kind == "close":
            self._drop()
        elif kind == "truncated":
            self._send(200, None, raw=b'{"choices": [{"te', claimed_length=4096)
            self._drop()
        elif kind == "trickle":
            payload = json.dumps(stub._completion(path, body, prompt)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            for start in range(0, len(payload), 4):
                if stub._stop.wait(0.1):
                    break
                self.wfile.write(payload[start:start + 4])
                self.wfile.flush()
            self._drop()
        elif kind == "malformed":
            self._send(200, None, raw=b"{this is not json")
        elif kind == "missing":
            self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
        elif kind is not None:
            raise ValueError(f"unknown fault kind {kind!r}")
        else:
            self._send(200, stub._completion(path, body, prompt))


class OpenAIStub:
    """OpenAI-compatible test server; use as a context manager (``with OpenAIStub() as s``).

    Records requests per prompt (``counts``), request start times (``starts``), request bodies
    (``bodies``), ``Authorization`` headers seen (``auth_headers``) and the peak number of
    requests in flight (``max_in_flight``). ``delay`` slows every request; ``serial`` handles
    one request at a time.
    """

    def __init__(
        self,
        answer: Callable[[str], str] = echo,
        *,
        faults: FaultPlan | None = None,
        delay: float = 0.0,
        serial: bool = False,
        hang_s: float = 5.0,
        retry_after: str | None = "0",
        api_key: str | None = None,
        model: str = "stub-model",
    ) -> None:
        self.answer = answer
        self.faults = faults
        self.delay = delay
        self.serial = serial
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.api_key = api_key
        self.model = model
        self.counts: Counter[str] = Counter()
        self.starts: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.paths: Counter[str] = Counter()
        self.auth_headers: set[str | None] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._serial_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> OpenAIStub:
        self._stop.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the stub is not running"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ bookkeeping

    def _arrive(self, prompt: str, path: str, body: dict[str, Any], auth: str | None) -> int:
        with self._lock:
            self.counts[prompt] += 1
            self.starts.append(time.monotonic())
            self.bodies.append(body)
            self.paths[path] += 1
            self.auth_headers.add(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.counts[prompt]

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset(self) -> None:
        """Forget the requests recorded so far (the fault plan then sees attempt 1 again)."""
        with self._lock:
            self.counts.clear()
            self.starts.clear()
            self.bodies.clear()
            self.paths.clear()
            self.auth_headers.clear()
            self.max_in_flight = self.in_flight

    @property
    def total(self) -> int:
        """Requests received so far."""
        with self._lock:
            return sum(self.counts.values())

    def _completion(self, path: str, body: dict[str, Any], prompt: str) -> dict[str, Any]:
        words = self.answer(prompt).split(" ")
        limit = body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(words) > limit:
            words, finish = words[:limit], "length"
        text = " ".join(words)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words)}
        if path == "/v1/chat/completions":
            return {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        return {
            "id": "cmpl-stub",
            "object": "text_completion",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": usage,
        }
