"""The ASGI application: OpenAI-compatible endpoints over a watermarked, batched model.

    app = create_app(model, tokenizer, key=WatermarkKey.load("key.json"), scheme="kgw",
                     api_keys=ApiKeys.load("api_keys.txt"))

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with SSE streaming),
``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health`` (no key needed; 503 while
draining). Every response carries the provenance headers (:data:`WATERMARK_HEADER`,
:data:`KEY_ID_HEADER`); see ``docs/serve.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("fingerprint serve needs starlette and uvicorn: "
                      "pip install 'fingerprint[serve]'") from err

from fingerprint.core import DEFAULT_PRF
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey, as_key
from fingerprint.serve.auth import ANONYMOUS, ApiKeys, Principal, bearer_token
from fingerprint.serve.batcher import (
    Batcher,
    DrainingError,
    Job,
    JobError,
    OverloadedError,
    RowEvent,
)
from fingerprint.serve.detok import ChoiceText
from fingerprint.serve.protocol import (
    ApiError,
    Kind,
    Limits,
    ParsedRequest,
    chunk_body,
    parse_request,
    response_body,
    usage,
)
from fingerprint.watermark.generate import make_watermark

logger = logging.getLogger("fingerprint.serve")

WATERMARK_HEADER = "x-fingerprint-watermark"
KEY_ID_HEADER = "x-fingerprint-key-id"
REQUEST_ID_HEADER = "x-request-id"
UNMARKED = {"scheme": "none"}
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_UNAUTHENTICATED_PATHS = frozenset({"/health"})
_STATE_KEY = "fingerprint.serve"


def _json_header(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"), ensure_ascii=True)


@dataclass
class ServeState:
    """Everything the handlers share: model, batcher, limits, keys and public headers."""

    tokenizer: Any
    batcher: Batcher
    limits: Limits
    api_keys: ApiKeys | None
    model_name: str
    public: dict[str, Any]
    context_length: int | None
    shutdown_timeout: float = 60.0
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False

    @property
    def scheme(self) -> str:
        """The served watermark scheme."""
        return str(self.public["scheme"])

    def provenance(self, watermarked: bool) -> dict[str, str]:
        """The provenance headers of a response (marked or opted out)."""
        if not watermarked:
            return {WATERMARK_HEADER: _json_header(UNMARKED), KEY_ID_HEADER: "none"}
        return {WATERMARK_HEADER: _json_header(self.public),
                KEY_ID_HEADER: str(self.public["key_id"])}

    def fingerprint(self, watermarked: bool) -> str:
        """``system_fingerprint`` of a response: the key id, or ``"none"`` when unmarked."""
        return str(self.public["key_id"]) if watermarked else "none"

    def begin_drain(self) -> None:
        """Refuse new requests (503) from now on; requests in flight finish."""
        if not self.draining:
            self.draining = True
            self.batcher.drain()
            logger.info("draining", extra={"fields": {
                "event": "drain", "queued_rows": self.batcher.queued_rows,
                "active_rows": self.batcher.active_rows}})


def serve_state(app: Any) -> ServeState:
    """The :class:`ServeState` of an app made by :func:`create_app`."""
    return app.state.fingerprint


# -- errors and responses ---------------------------------------------------------------------
def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _parse_json(request: Request, limits: Limits) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "the request body must be JSON, sent with "
                       "'Content-Type: application/json'", code="unsupported_media_type")
    body = await _read_body(request, limits.max_body_bytes)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "We could not parse the JSON body of your request: it is not "
                       "valid JSON", code="invalid_json") from None


# -- the front door: ids, drain, auth, headers, access log ---------------------------------------
class FrontDoor:
    """Pure ASGI middleware in front of every route.

    Assigns the request id, refuses requests while draining (503), checks the bearer key (401),
    adds the provenance headers to every response that has not set its own, and writes one JSON
    access-log line per request.
    """

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rid = uuid.uuid4().hex[:24]
        client_rid = headers.get(REQUEST_ID_HEADER, "")
        echo_id = client_rid if _CLIENT_ID.fullmatch(client_rid) else rid
        info: dict[str, Any] = {"event": "request", "request_id": rid,
                                "method": scope.get("method"), "path": scope.get("path")}
        if echo_id != rid:
            info["client_request_id"] = echo_id
        scope[_STATE_KEY] = {"info": info, "principal": ANONYMOUS, "request_id": rid}
        status = [0]
        default_headers = [(k.encode(), v.encode())
                           for k, v in st.provenance(True).items()]
        default_headers.append((REQUEST_ID_HEADER.encode(), echo_id.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                out = list(message.get("headers", []))
                present = {k.lower() for k, _ in out}
                out.extend((k, v) for k, v in default_headers if k not in present)
                message = {**message, "headers": out}
            await send(message)

        try:
            path = scope.get("path", "")
            if st.draining and path not in _UNAUTHENTICATED_PATHS:
                err = ApiError(503, "the server is shutting down; retry on another instance",
                               type="server_error", code="shutting_down",
                               headers={"Retry-After": "1", "Connection": "close"})
                await _error(err)(scope, receive, send_with_headers)
                return
            if st.api_keys is not None and path not in _UNAUTHENTICATED_PATHS:
                principal = st.api_keys.check(bearer_token(headers.get("authorization")))
                if principal is None:
                    info["client"] = "unauthenticated"
                    msg = ("Incorrect API key provided" if headers.get("authorization")
                           else "You didn't provide an API key: send 'Authorization: Bearer "
                                "<key>'")
                    err = ApiError(401, msg, code="invalid_api_key",
                                   headers={"WWW-Authenticate": "Bearer"})
                    await _error(err)(scope, receive, send_with_headers)
                    return
                scope[_STATE_KEY]["principal"] = principal
                info["client"] = principal.label
            else:
                info["client"] = ANONYMOUS.label
            await self.app(scope, receive, send_with_headers)
        finally:
            info["status"] = status[0] or 500
            info["duration_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            logger.info("request", extra={"fields": info})


# -- generation ----------------------------------------------------------------------------------
class _ClientGoneError(Exception):
    """The client disconnected before its answer was complete."""


_GONE = object()


async def _watch_disconnect(receive: Receive, queue: asyncio.Queue[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(_GONE)
            return


def _apply(item: Any, job: Job, choices: list[ChoiceText]) -> None:
    if item is _GONE:
        raise _ClientGoneError
    if isinstance(item, JobError):
        raise ApiError(500, item.message, type="server_error", code="generation_failed")
    events: list[RowEvent] = item
    for ev in events:
        if choices[ev.row].add(ev.token, ev.finish):
            job.request_stop(ev.row)


def _finish_reason(c: ChoiceText) -> str:
    return "length" if c.finish == "length" else "stop"


class _Generation:
    """One accepted request: its job in the batcher and the reader of its events."""

    def __init__(self, st: ServeState, request: Request, parsed: ParsedRequest) -> None:
        self.st = st
        self.request = request
        self.parsed = parsed
        self.kind: Kind = parsed.kind
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        queue = self.queue

        def deliver(item: list[RowEvent] | JobError) -> None:  # runs in the worker thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self.job = Job(parsed.prompts, parsed.n, parsed.sampling, parsed.watermark, deliver)
        eos = frozenset(st.batcher.eos_ids)
        self.choices = [ChoiceText(st.tokenizer, parsed.sampling.stop, eos)
                        for _ in self.job.rows]
        state = request.scope[_STATE_KEY]
        self.info: dict[str, Any] = state["info"]
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        self.rid = prefix + state["request_id"]
        self.created = int(time.time())
        self.prompt_tokens = sum(len(p) for p in parsed.prompts)
        self.fingerprint = st.fingerprint(parsed.watermark)

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, sum(c.n_tokens for c in self.choices))

    def _log_outcome(self, outcome: str) -> None:
        self.info.update(outcome=outcome, completion_tokens=sum(c.n_tokens for c in self.choices),
                         finish_reasons=[c.finish for c in self.choices])

    def _done(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    async def _next(self) -> None:
        """Wait for the next delivery, then apply everything already queued."""
        _apply(await self.queue.get(), self.job, self.choices)
        while not self.queue.empty():
            _apply(self.queue.get_nowait(), self.job, self.choices)

    async def whole(self) -> Response:
        """Wait for every choice, then answer in one JSON body."""
        watch = asyncio.ensure_future(_watch_disconnect(self.request.receive, self.queue))
        try:
            while not self._done():
                await self._next()
        except _ClientGoneError:
            self.job.cancel()
            self._log_outcome("cancelled")
            return Response(status_code=499)
        except ApiError:
            self._log_outcome("error")
            raise
        except BaseException:
            self.job.cancel()
            self._log_outcome("cancelled")
            raise
        finally:
            watch.cancel()
        self._log_outcome("ok")
        body = response_body(self.kind, self.rid, self.created, self.st.model_name,
                             self.fingerprint, [(c.text, _finish_reason(c)) for c in self.choices],
                             self.usage())
        return JSONResponse(body, headers=self.st.provenance(self.parsed.watermark))

    def _chunk(self, choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> str:
        return _sse(chunk_body(self.kind, self.rid, self.created, self.st.model_name,
                               self.fingerprint, choices, self.parsed.include_usage, use))

    async def chunks(self) -> AsyncIterator[str]:
        """The SSE stream: a chunk per choice as its text grows, finish chunks, ``[DONE]``."""
        outcome = "cancelled"
        try:
            if self.kind == "chat":
                for i in range(len(self.choices)):
                    yield self._chunk([{"index": i, "role": "assistant", "text": ""}])
            while True:
                done = self._done()
                for i, c in enumerate(self.choices):
                    delta = c.take_delta()
                    if delta:
                        yield self._chunk([{"index": i, "text": delta}])
                    if c.finish is not None and not c.finish_sent:
                        c.finish_sent = True
                        item: dict[str, Any] = {"index": i, "finish": _finish_reason(c)}
                        if self.kind == "completion":
                            item["text"] = ""
                        yield self._chunk([item])
                if done:
                    break
                await self._next()
            if self.parsed.include_usage:
                yield self._chunk([], self.usage())
            yield "data: [DONE]\n\n"
            outcome = "ok"
        except ApiError as err:
            outcome = "error"
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
        finally:
            if not self._done():
                self.job.cancel()
            self._log_outcome(outcome)


async def _generate(request: Request, kind: Kind) -> Response:
    st: ServeState = request.app.state.fingerprint
    state = request.scope[_STATE_KEY]
    principal: Principal = state["principal"]
    data = await _parse_json(request, st.limits)
    parsed = parse_request(kind, data, tokenizer=st.tokenizer, limits=st.limits,
                           model_name=st.model_name, scheme=st.scheme,
                           context_length=st.context_length)
    info = state["info"]
    info.update(kind=kind, rows=parsed.rows, stream=parsed.stream,
                watermark=st.scheme if parsed.watermark else "none")
    if not parsed.watermark and not principal.trusted:
        raise ApiError(403, "'watermarking': false is only allowed for trusted API keys",
                       type="permission_error", param="watermarking",
                       code="watermark_opt_out_forbidden")
    if parsed.rows > st.batcher.max_batch:
        raise ApiError(400, f"this request asks for {parsed.rows} sequences (prompts x n); "
                       f"this server takes at most {st.batcher.max_batch} per request",
                       param="n", code="invalid_value")
    gen = _Generation(st, request, parsed)
    info["prompt_tokens"] = gen.prompt_tokens
    st.batcher.start()
    try:
        st.batcher.submit(gen.job)
    except DrainingError:
        raise ApiError(503, "the server is shutting down; retry on another instance",
                       type="server_error", code="shutting_down",
                       headers={"Retry-After": "1", "Connection": "close"}) from None
    except OverloadedError:
        raise ApiError(503, "the server is overloaded; retry later", type="server_error",
                       code="overloaded", headers={"Retry-After": "1"}) from None
    if parsed.stream:
        headers = {**st.provenance(parsed.watermark), "Cache-Control": "no-cache",
                   "X-Accel-Buffering": "no"}
        return StreamingResponse(gen.chunks(), media_type="text/event-stream", headers=headers)
    return await gen.whole()


def _endpoint(kind: Kind) -> Any:
    async def handler(request: Request) -> Response:
        try:
            return await _generate(request, kind)
        except ApiError as err:
            request.scope[_STATE_KEY]["info"]["error"] = err.code or err.type
            return _error(err)
        except Exception as err:
            logger.error("request failed", extra={"fields": {
                "event": "handler_error", "error_type": type(err).__name__,
                "request_id": request.scope[_STATE_KEY]["request_id"]}})
            return _error(ApiError(500, "internal server error", type="server_error"))

    handler.__name__ = f"{kind}_completions"
    return handler


async def _models(request: Request) -> Response:
    st: ServeState = request.app.state.fingerprint
    return JSONResponse({"object": "list", "data": [_model_card(st)]})


async def _model(request: Request) -> Response:
    st: ServeState = request.app.state.fingerprint
    if request.path_params["model"] != st.model_name:
        return _error(ApiError(404, "The model does not exist", param="model",
                               code="model_not_found"))
    return JSONResponse(_model_card(st))


def _model_card(st: ServeState) -> dict[str, Any]:
    return {"id": st.model_name, "object": "model", "created": st.created,
            "owned_by": "fingerprint", "watermark": st.public}


async def _health(request: Request) -> Response:
    st: ServeState = request.app.state.fingerprint
    if st.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                           f"{exc.detail}", code=code))


# -- the factory ---------------------------------------------------------------------------------
def _context_length(model: Any) -> int | None:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def create_app(
    model: Any,
    tokenizer: Any,
    *,
    key: WatermarkKey | int | str | os.PathLike[str],
    scheme: str = "kgw",
    gamma: float = 0.25,
    delta: float = 2.0,
    context_width: int | None = None,
    prf: str = DEFAULT_PRF,
    api_keys: ApiKeys | str | os.PathLike[str] | None = None,
    model_name: str = "default",
    limits: Limits | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 10.0,
    max_wait_ms: float | None = None,
    shutdown_timeout: float = 60.0,
) -> Starlette:
    """The OpenAI-compatible app serving ``model`` with the watermark of ``key``.

    ``scheme`` is ``"kgw"`` or ``"gumbel"`` (parameters as :func:`fingerprint.watermark.
    generate`). ``api_keys``: an :class:`ApiKeys` or a key file path; None lets every request
    in as anonymous (untrusted: nobody may opt out). ``limits`` caps each request.
    ``max_batch`` rows go into one ``generate`` call; a batch forms until no request has come
    for ``batch_wait_ms`` (and as many rows wait as in the previous batch), at most
    ``max_wait_ms`` (see :class:`~fingerprint.serve.batcher.Batcher`). The batcher starts with
    the app (lifespan) and, at shutdown,
    finishes the requests already accepted, waiting up to ``shutdown_timeout`` seconds.
    """
    if scheme not in ("kgw", "gumbel"):
        raise ConfigError(f"scheme must be 'kgw' or 'gumbel', got {scheme!r}")
    if not isinstance(model_name, str) or not model_name or len(model_name) > 256:
        raise ConfigError("model_name must be a non-empty string of at most 256 characters")
    key = as_key(key)
    pad = getattr(tokenizer, "pad_token_id", None)
    wm_kwargs, public = make_watermark(scheme, key, gamma=gamma, delta=delta,  # type: ignore[arg-type]
                                       context_width=context_width, prf=prf, pad_token_id=pad)
    limits = limits or Limits()
    if isinstance(api_keys, str | os.PathLike):
        api_keys = ApiKeys.load(api_keys)
    batcher = Batcher(model, tokenizer, watermark=wm_kwargs["watermarking_config"],
                      max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000.0,
                      max_wait_s=None if max_wait_ms is None else max_wait_ms / 1000.0,
                      max_queue_rows=limits.max_queue_rows)
    st = ServeState(tokenizer=tokenizer, batcher=batcher, limits=limits, api_keys=api_keys,
                    model_name=model_name, public=dict(public),
                    context_length=_context_length(model), shutdown_timeout=shutdown_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        logger.info("serving", extra={"fields": {
            "event": "start", "model": model_name, "watermark": public,
            "api_keys": 0 if api_keys is None else len(api_keys), "max_batch": max_batch,
            "batch_wait_ms": batch_wait_ms, "max_wait_ms": batcher.max_wait_s * 1000}})
        try:
            yield
        finally:
            st.begin_drain()
            stopped = await asyncio.to_thread(batcher.close, shutdown_timeout)
            logger.info("stopped", extra={"fields": {
                "event": "stop", "batcher_stopped": stopped, "batches": batcher.stats.batches,
                "rows": batcher.stats.rows}})

    routes = [
        Route("/v1/chat/completions", _endpoint("chat"), methods=["POST"]),
        Route("/v1/completions", _endpoint("completion"), methods=["POST"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/models/{model:path}", _model, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(FrontDoor, state=st)],
                    exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.state.fingerprint = st
    return app


__all__ = [
    "KEY_ID_HEADER",
    "REQUEST_ID_HEADER",
    "WATERMARK_HEADER",
    "FrontDoor",
    "ServeState",
    "create_app",
    "serve_state",
]
