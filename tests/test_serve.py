"""``fingerprint serve``: a real uvicorn server on 127.0.0.1, called with the official client.

The tiny random Llama serves throughout (with the SmolLM2 tokenizer); the detection checks use
a large KGW delta so a few hundred tokens suffice.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import httpx  # noqa: E402
import torch  # noqa: E402

from fingerprint.detect.detector import Detector, DetectorConfig  # noqa: E402
from fingerprint.detect.text import encode_text  # noqa: E402
from fingerprint.errors import ConfigError, KeyFileError  # noqa: E402
from fingerprint.keys import WatermarkKey  # noqa: E402
from fingerprint.serve import ApiKeys, Limits, ServerThread, create_app, serve_state  # noqa: E402
from fingerprint.serve.batcher import Batcher, Job  # noqa: E402
from fingerprint.serve.detok import ChoiceText  # noqa: E402
from fingerprint.serve.protocol import Sampling  # noqa: E402
from fingerprint.serve.server import check_bind  # noqa: E402
from tests.serve_helpers import (  # noqa: E402
    LogCapture,
    Recorded,
    RecordingTransport,
    ServerProcess,
    assert_no_secret,
    secret_forms,
    write_private,
)

MODEL = "tiny"
SECRET = secrets.token_bytes(32)
USER_KEY = "sk-user-" + secrets.token_hex(16)
TRUSTED_KEY = "sk-trusted-" + secrets.token_hex(16)
WRONG_KEY = "sk-wrong-" + secrets.token_hex(16)
CHAT = [{"role": "user", "content": "Tell me something about tides."}]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The model runs on one CPU thread (the machine is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def wm_key() -> WatermarkKey:
    return WatermarkKey(SECRET)


@pytest.fixture(scope="module")
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    with LogCapture() as cap:
        yield cap


@pytest.fixture(scope="module")
def api_keys() -> ApiKeys:
    return ApiKeys.from_pairs([(USER_KEY, False), (TRUSTED_KEY, True)])


@pytest.fixture(scope="module")
def server(tiny_model: Any, default_tokenizer: Any, wm_key: WatermarkKey, api_keys: ApiKeys,
           logs: LogCapture) -> Iterator[ServerThread]:
    app = create_app(tiny_model, default_tokenizer, key=wm_key, scheme="kgw", delta=4.0,
                     api_keys=api_keys, model_name=MODEL, limits=Limits(max_tokens=1200),
                     max_batch=8, batch_wait_ms=5)
    with ServerThread(app) as srv:
        yield srv


def make_client(srv: ServerThread, recorded: Recorded, key: str = USER_KEY) -> Any:
    http = httpx.Client(transport=RecordingTransport(recorded), timeout=120)
    return openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, http_client=http)


def make_http(srv: ServerThread, recorded: Recorded) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{srv.port}",
                        transport=RecordingTransport(recorded), timeout=120)


def auth(key: str = USER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def client(server: ServerThread, recorded: Recorded) -> Any:
    return make_client(server, recorded)


@pytest.fixture(scope="module")
def http(server: ServerThread, recorded: Recorded) -> Iterator[httpx.Client]:
    with make_http(server, recorded) as c:
        yield c


def sse_events(lines: list[str]) -> list[Any]:
    """The data payloads of SSE lines (``[DONE]`` kept as a string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def request_logs(logs: LogCapture) -> list[dict[str, Any]]:
    return [r for r in logs.records() if r.get("event") == "request"]


def wait_for(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# -- API keys -------------------------------------------------------------------------------------
def test_api_key_file(tmp_path: Path) -> None:
    a, b = "sk-" + "a" * 20, "sk-" + "b" * 20
    path = write_private(tmp_path / "keys.txt", f"# team keys\n\n{a}  trusted # ops\n{b}\n")
    keys = ApiKeys.load(path)
    assert len(keys) == 2
    assert keys.check(a) is not None and keys.check(a).trusted  # type: ignore[union-attr]
    assert keys.check(b) is not None and not keys.check(b).trusted  # type: ignore[union-attr]
    assert keys.check(b).label == "key@4"  # type: ignore[union-attr]
    assert keys.check("sk-" + "c" * 20) is None and keys.check(None) is None
    assert a not in repr(keys)
    loose = tmp_path / "loose.txt"
    loose.write_text(a + "\n")
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match="group or others"):
        ApiKeys.load(loose)
    for i, bad in enumerate([f"{a} admin\n", "sk-short\n", f"{a}\n{a}\n", "# nothing\n"]):
        with pytest.raises(ConfigError) as err:
            ApiKeys.load(write_private(tmp_path / f"bad{i}.txt", bad))
        assert a not in str(err.value) and "sk-short" not in str(err.value)


def test_no_public_bind_without_api_keys(tmp_path: Path, capsys: Any) -> None:
    check_bind("127.0.0.1", False)
    check_bind("::1", False)
    check_bind("0.0.0.0", True)
    with pytest.raises(ConfigError, match="without API keys"):
        check_bind("0.0.0.0", False)
    from fingerprint.cli import main

    key = WatermarkKey.generate().save(tmp_path / "k.json")
    assert main(["serve", "--model", str(tmp_path / "absent"), "--key", str(key),
                 "--host", "0.0.0.0"]) == 2  # refused before any model is loaded
    assert "without API keys" in capsys.readouterr().err


def test_auth(client: Any, server: ServerThread, recorded: Recorded) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    for key in (WRONG_KEY, USER_KEY[:-1]):
        with pytest.raises(openai.AuthenticationError) as err:
            make_client(server, recorded, key).chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=2)
        assert err.value.status_code == 401
        assert err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with make_http(server, recorded) as h:
        r = h.get("/v1/models")  # no Authorization header
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert h.get("/v1/models", headers={"Authorization": f"Basic {USER_KEY}"}
                     ).status_code == 401
        assert h.get("/health").json() == {"status": "ok"}  # no key needed


# -- the OpenAI format ----------------------------------------------------------------------------
def test_chat_completion_and_headers(client: Any, wm_key: WatermarkKey) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, max_tokens=12, extra_body={"min_tokens": 12})
    r = raw.parse()
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == MODEL and isinstance(r.created, int)
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.system_fingerprint == wm_key.key_id
    config = json.loads(raw.headers["x-fingerprint-watermark"])
    assert config == {"scheme": "kgw", "gamma": 0.25, "delta": 4.0, "context_width": 2,
                      "prf": "siphash24-v1", "prompt_context": True, "key_id": wm_key.key_id}
    assert raw.headers["x-fingerprint-key-id"] == wm_key.key_id
    assert raw.headers["x-request-id"] in r.id


def test_completions_prompt_list_and_n(client: Any) -> None:
    r = client.completions.create(model=MODEL, prompt=["Once upon a time", "The sea"], n=2,
                                  max_tokens=6, extra_body={"min_tokens": 6})
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" and c.text for c in r.choices)
    assert r.usage.completion_tokens == 24


def test_seed_and_stream_give_the_same_text(client: Any, http: httpx.Client) -> None:
    kw: dict[str, Any] = {"model": MODEL, "messages": CHAT, "max_tokens": 12, "seed": 1234,
                          "temperature": 0.9, "top_p": 0.95, "extra_body": {"min_tokens": 12}}
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    other = client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
    assert a == b and a != other
    stream = client.chat.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == a
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    # the wire format: SSE data lines, the last one [DONE]
    body = {k: v for k, v in kw.items() if k != "extra_body"} | {"min_tokens": 12,
                                                                 "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "x-fingerprint-watermark" in resp.headers
        events = sse_events(list(resp.iter_lines()))
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == a


def test_stop_sequences(client: Any) -> None:
    kw: dict[str, Any] = {"model": MODEL, "prompt": "Numbers:", "max_tokens": 24, "seed": 7,
                          "extra_body": {"min_tokens": 24}}
    full = client.completions.create(**kw).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop
    cut = full[:full.index(stop)]
    r = client.completions.create(**kw, stop=[stop, "\x00never"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24
    streamed = list(client.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_choice_text_holds_back_a_possible_stop(default_tokenizer: Any) -> None:
    tok = default_tokenizer
    ids = tok("Hello world, hello there", add_special_tokens=False)["input_ids"]
    c = ChoiceText(tok, ("hello t",), frozenset({2}))
    sent = []
    for t in ids:
        if c.add(t, None):
            break
        sent.append(c.take_delta())
    c.add(None, "length")
    sent.append(c.take_delta())
    assert c.finish == "stop" and c.text == "Hello world, "
    assert "".join(sent) == "Hello world, "  # "hello" was never sent before the stop matched


# -- opt-out --------------------------------------------------------------------------------------
def test_opt_out_only_for_trusted_keys(client: Any, server: ServerThread,
                                       recorded: Recorded, wm_key: WatermarkKey) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4,
                                       extra_body={"watermarking": False})
    assert err.value.status_code == 403
    assert err.value.body["code"] == "watermark_opt_out_forbidden"  # type: ignore[index]
    trusted = make_client(server, recorded, TRUSTED_KEY)
    raw = trusted.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, max_tokens=4, extra_body={"watermarking": False})
    assert json.loads(raw.headers["x-fingerprint-watermark"]) == {"scheme": "none"}
    assert raw.headers["x-fingerprint-key-id"] == "none"
    assert raw.parse().system_fingerprint == "none"
    marked = trusted.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT, max_tokens=4, extra_body={"watermarking": True})
    assert marked.headers["x-fingerprint-key-id"] == wm_key.key_id


# -- bad input ------------------------------------------------------------------------------------
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("malformed json", {"content": b'{"model": "tiny", "messages": ['}, 400, "invalid_json"),
    ("not an object", {"json": [1, 2]}, 400, None),
    ("nan", {"content": b'{"model": "tiny", "messages": [], "temperature": NaN}'}, 400,
     "invalid_json"),
    ("unknown fields", {"json": {"model": MODEL, "messages": CHAT, "foo": 1, "bar": 2}}, 400,
     "unknown_parameter"),
    ("absurd max_tokens", {"json": {"model": MODEL, "messages": CHAT, "max_tokens": 10**12}},
     400, "invalid_value"),
    ("zero max_tokens", {"json": {"model": MODEL, "messages": CHAT, "max_tokens": 0}}, 400,
     "invalid_value"),
    ("empty messages", {"json": {"model": MODEL, "messages": []}}, 400, "empty_array"),
    ("message not an object", {"json": {"model": MODEL, "messages": ["hi"]}}, 400,
     "invalid_type"),
    ("bad role", {"json": {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}},
     400, "invalid_value"),
    ("n too large", {"json": {"model": MODEL, "messages": CHAT, "n": 50}}, 400, "invalid_value"),
    ("temperature", {"json": {"model": MODEL, "messages": CHAT, "temperature": -1}}, 400,
     "invalid_value"),
    ("string number", {"json": {"model": MODEL, "messages": CHAT, "top_p": "0.5"}}, 400,
     "invalid_type"),
    ("too many stops", {"json": {"model": MODEL, "messages": CHAT, "stop": list("abcde")}}, 400,
     "invalid_value"),
    ("logprobs", {"json": {"model": MODEL, "messages": CHAT, "logprobs": True}}, 400,
     "unsupported_parameter"),
    ("wrong model", {"json": {"model": "gpt-4", "messages": CHAT}}, 404, "model_not_found"),
    ("prompt too long", {"json": {"model": MODEL, "messages": [
        {"role": "user", "content": "word " * 3000}]}}, 400, "context_length_exceeded"),
    ("wrong content type", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("body too large", {"json": {"model": MODEL, "messages": CHAT, "user": "x" * (1 << 20)}},
     413, "body_too_large"),
]


@pytest.mark.parametrize(("what", "kwargs", "status", "code"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_clean_4xx(http: httpx.Client, what: str, kwargs: dict[str, Any],
                                    status: int, code: str | None) -> None:
    kwargs = dict(kwargs)
    headers = {**auth(), **kwargs.pop("headers", {})}
    if "content" in kwargs and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    r = http.post("/v1/chat/completions", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if what == "unknown fields":
        assert "bar" in err["message"] and "foo" in err["message"]


def test_routing_errors_and_recovery(http: httpx.Client, client: Any) -> None:
    assert http.get("/v1/chat/completions", headers=auth()).status_code == 405
    r = http.get("/v1/nothing", headers=auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ""}, headers=auth())
    assert r.status_code == 400
    # the server keeps serving
    ok = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert ok.choices[0].message.content is not None


# -- batching, disconnects, slow readers ---------------------------------------------------------
def test_concurrent_requests_share_one_batch(tiny_model: Any, default_tokenizer: Any,
                                             wm_key: WatermarkKey, recorded: Recorded) -> None:
    app = create_app(tiny_model, default_tokenizer, key=wm_key, model_name=MODEL, max_batch=4,
                     batch_wait_ms=5000)  # the batch starts when 4 rows wait
    settings = [{"temperature": 0.0, "max_tokens": 3}, {"temperature": 0.7, "top_p": 0.9,
                                                        "max_tokens": 5},
                {"seed": 5, "max_tokens": 7}, {"temperature": 1.3, "max_tokens": 9}]
    with ServerThread(app) as srv:
        c = make_client(srv, recorded, key="anything")  # no API keys configured: all anonymous
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(c.chat.completions.create, model=MODEL, messages=CHAT,
                                extra_body={"min_tokens": s["max_tokens"]}, **s)
                    for s in settings]
            results = [f.result() for f in futs]
        stats = serve_state(app).batcher.stats
        assert stats.batches == 1 and list(stats.batch_sizes) == [4]
    for s, r in zip(settings, results, strict=True):
        assert r.usage.completion_tokens == s["max_tokens"]
        assert r.choices[0].finish_reason == "length"


def test_disconnect_mid_stream_cancels_only_its_rows(server: ServerThread, http: httpx.Client,
                                                     client: Any, logs: LogCapture) -> None:
    batcher = serve_state(server.app).batcher
    cancelled_before = batcher.stats.cancelled_rows
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 1000, "min_tokens": 1000,
            "stream": True, "user": "disconnect-test"}
    with ThreadPoolExecutor(1) as pool:
        with http.stream("POST", "/v1/chat/completions", json=body,
                         headers={**auth(), "X-Request-Id": "gone-1"}) as resp:
            lines = resp.iter_lines()
            content = 0
            while content < 3:  # generation is under way
                ev = sse_events([next(lines)])
                if ev and ev[0] != "[DONE]" and ev[0]["choices"][0]["delta"].get("content"):
                    content += 1
            # a request that joins while the stream runs (the next batch) must still complete
            neighbour = pool.submit(client.chat.completions.create, model=MODEL, messages=CHAT,
                                    max_tokens=8, extra_body={"min_tokens": 8})
        # the stream is closed: its row ends at the next step instead of running to 1000 tokens
        wait_for(lambda: batcher.stats.cancelled_rows > cancelled_before)
        assert neighbour.result(timeout=120).usage.completion_tokens == 8
    wait_for(lambda: any(r.get("client_request_id") == "gone-1" for r in request_logs(logs)))
    rec = next(r for r in request_logs(logs) if r.get("client_request_id") == "gone-1")
    assert rec["outcome"] == "cancelled" and rec["completion_tokens"] < 1000


def test_disconnect_while_waiting_cancels(server: ServerThread, logs: LogCapture) -> None:
    batcher = serve_state(server.app).batcher
    before = batcher.stats.cancelled_rows
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1000,
                       "min_tokens": 1000}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nX-Request-Id: gone-2\r\nAuthorization: Bearer " + USER_KEY.encode()
                  + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: batcher.active_rows > 0)
    wait_for(lambda: batcher.stats.cancelled_rows > before)
    wait_for(lambda: any(r.get("client_request_id") == "gone-2" for r in request_logs(logs)))
    rec = next(r for r in request_logs(logs) if r.get("client_request_id") == "gone-2")
    assert rec["outcome"] == "cancelled" and rec["completion_tokens"] < 1000


def test_slow_reader_and_busy_model_stall_nobody(server: ServerThread, http: httpx.Client,
                                                 client: Any) -> None:
    batcher = serve_state(server.app).batcher
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 500, "min_tokens": 500,
            "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as resp:
        lines = resp.iter_lines()
        seen = []
        while not any(e != "[DONE]" and e["choices"] and e["choices"][0]["delta"].get("content")
                      for e in sse_events(seen)):
            seen.append(next(lines))
        # the model is busy with the long row and this reader reads nothing: the event loop
        # still answers, and a request queued behind the batch completes
        assert http.get("/health").status_code == 200
        assert client.models.list().data[0].id == MODEL
        assert batcher.active_rows > 0  # answered while the model works on the long row
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
        assert r.choices[0].message.content is not None
        assert batcher.active_rows == 0  # the long row was generated without being read
        events = sse_events(seen + list(lines))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 500
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "length"


def test_batcher_is_not_broken_by_a_failing_reader(tiny_model: Any,
                                                   default_tokenizer: Any) -> None:
    batcher = Batcher(tiny_model, default_tokenizer, max_batch=4, batch_wait_s=1.0)
    batcher.start()
    ids = default_tokenizer("Hello there")["input_ids"]
    same_len = default_tokenizer("Hello where")["input_ids"]
    assert len(ids) == len(same_len)

    def broken(events: Any) -> None:
        raise RuntimeError("reader gone")

    got: list[Any] = []
    alone = Job([ids], 1, Sampling(max_tokens=16, min_tokens=16, seed=11), False, got.append)
    batcher.submit(alone)
    assert alone.done.wait(60)
    crowd = [Job([ids], 1, Sampling(max_tokens=16, min_tokens=16, seed=11), False, lambda e: None),
             Job([same_len], 2, Sampling(max_tokens=40, min_tokens=40), False, broken),
             Job([ids], 1, Sampling(max_tokens=16, min_tokens=16, temperature=0.0), False,
                 lambda e: None)]
    for job in crowd:
        batcher.submit(job)
    for job in crowd:
        assert job.done.wait(60)
    assert batcher.close(30)
    # a seeded row draws the same tokens alone or in a crowd; a reader that fails ends its own
    # rows only
    assert crowd[0].rows[0].tokens == alone.rows[0].tokens
    assert [r.finish for r in crowd[1].rows] == ["cancelled", "cancelled"]
    assert len(crowd[1].rows[0].tokens) < 40
    assert len(crowd[2].rows[0].tokens) == 16 and crowd[2].rows[0].finish == "length"
    delivered = [ev.token for batch in got for ev in batch if ev.token is not None]
    assert delivered == alone.rows[0].tokens


# -- the watermark is in what is served ----------------------------------------------------------
def test_closed_audit_finds_the_served_key(server: ServerThread, wm_key: WatermarkKey,
                                           default_tokenizer: Any, tmp_path: Path) -> None:
    from fingerprint.audit.clients import OpenAIClient
    from fingerprint.audit.querying import audit_closed
    from fingerprint.watermark.generate import read_prompts

    shipped = Path(__file__).resolve().parents[1] / "fingerprint" / "data" / "prompts.jsonl"
    prompts = [p.prompt for p in read_prompts(shipped)[0][:20]]
    suspect = OpenAIClient(server.base_url, MODEL, api_key=USER_KEY, max_tokens=32,
                           temperature=1.0, concurrency=4, max_retries=1,
                           extra_body={"min_tokens": 32})
    cfg = DetectorConfig(scheme="kgw", gamma=0.25, context_width=2)
    checkpoint = tmp_path / "answers.jsonl"
    mine = audit_closed(suspect, prompts, wm_key, cfg, tokenizer=default_tokenizer,
                        checkpoint=checkpoint, n_controls=10, seed=1)
    other = audit_closed(suspect, prompts, WatermarkKey.from_int(81), cfg,
                         tokenizer=default_tokenizer, checkpoint=checkpoint, n_controls=10,
                         seed=1)
    assert mine.inputs["failed_queries"] == []
    assert mine.detection.n_scored > 200
    assert mine.detection.pvalue < 1e-12
    assert other.detection.pvalue > 1e-4


def _texts(c: Any, n: int, **kw: Any) -> tuple[list[str], dict[str, Any]]:
    """``n`` answers of 32 tokens, asked concurrently (so they share batches)."""

    def ask(i: int) -> Any:
        return c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"Question {i}: why?"}],
            max_tokens=32, **kw)

    with ThreadPoolExecutor(n) as pool:
        raws = list(pool.map(ask, range(n)))
    headers = {raw.headers["x-fingerprint-watermark"] for raw in raws}
    assert len(headers) == 1
    return [raw.parse().choices[0].message.content for raw in raws], json.loads(headers.pop())


def _pvalue(key: WatermarkKey, header: dict[str, Any], texts: list[str], tok: Any) -> float:
    cfg = DetectorConfig.from_dict(header)
    ids = [encode_text(t, tok).ids for t in texts if t.strip()]
    return Detector(key, cfg).detect(ids, vocab_size=len(tok)).pvalue


def test_gumbel_server_is_detected(tiny_model: Any, default_tokenizer: Any,
                                   wm_key: WatermarkKey, recorded: Recorded) -> None:
    app = create_app(tiny_model, default_tokenizer, key=wm_key, scheme="gumbel",
                     model_name=MODEL, max_batch=8)
    with ServerThread(app) as srv:
        c = make_client(srv, recorded)
        with pytest.raises(openai.BadRequestError):  # greedy cannot carry Gumbel-max
            c.chat.completions.create(model=MODEL, messages=CHAT, temperature=0)
        texts, header = _texts(c, 10, extra_body={"min_tokens": 32})
    assert header["scheme"] == "gumbel" and header["key_id"] == wm_key.key_id
    assert _pvalue(wm_key, header, texts, default_tokenizer) < 1e-8
    assert _pvalue(WatermarkKey.from_int(82), header, texts, default_tokenizer) > 1e-4


def test_opted_out_text_is_not_marked(server: ServerThread, recorded: Recorded,
                                      wm_key: WatermarkKey, default_tokenizer: Any) -> None:
    trusted = make_client(server, recorded, TRUSTED_KEY)
    marked, header = _texts(trusted, 8, extra_body={"min_tokens": 32})
    plain, none = _texts(trusted, 8, extra_body={"min_tokens": 32, "watermarking": False})
    assert none == {"scheme": "none"}
    assert _pvalue(wm_key, header, marked, default_tokenizer) < 1e-8
    assert _pvalue(wm_key, header, plain, default_tokenizer) > 1e-4


@pytest.mark.slow
def test_smollm2_greedy_answers_match_generate(recorded: Recorded) -> None:
    """Served greedy answers are token for token those of ``generate`` (marked and not)."""
    from fingerprint.models import load_default_model
    from fingerprint.watermark.generate import generate

    model, tokenizer = load_default_model()
    key = WatermarkKey.generate()
    question = "What is the capital of France? Answer in one word."
    app = create_app(model, tokenizer, key=key, model_name="default",
                     api_keys=ApiKeys.from_pairs([(TRUSTED_KEY, True)]))
    with ServerThread(app) as srv:
        c = make_client(srv, recorded, key=TRUSTED_KEY)
        kw: dict[str, Any] = {"model": "default", "max_tokens": 8, "temperature": 0,
                              "messages": [{"role": "user", "content": question}]}
        marked = c.chat.completions.create(**kw).choices[0].message.content
        plain = c.chat.completions.create(**kw, extra_body={"watermarking": False})
    want_marked = generate(model, tokenizer, [question], key=key, scheme="kgw",
                           do_sample=False, max_new_tokens=8)[0].completion
    want_plain = generate(model, tokenizer, [question], scheme="none", do_sample=False,
                          max_new_tokens=8)[0].completion
    assert marked == want_marked
    assert plain.choices[0].message.content == want_plain
    assert "Paris" in want_plain


# -- graceful shutdown (a real process) -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model: Any, default_tokenizer: Any,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


def test_sigterm_finishes_requests_in_flight(tiny_checkpoint: Path, tmp_path: Path) -> None:
    key_file = WatermarkKey(SECRET).save(tmp_path / "key.json")
    keys = write_private(tmp_path / "api_keys.txt", f"# keys\n{USER_KEY}\n{TRUSTED_KEY} trusted\n")
    srv = ServerProcess(["--model", str(tiny_checkpoint), "--key", str(key_file),
                         "--api-keys", str(keys), "--threads", "1", "--shutdown-timeout", "600",
                         "--served-model-name", MODEL, "--log-level", "debug"],
                        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        base = srv.wait_ready()
        c = openai.OpenAI(base_url=base, api_key=USER_KEY, max_retries=0)
        stream = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=400,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body={"min_tokens": 400})
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                break  # generation is under way
        srv.proc.send_signal(signal.SIGTERM)
        refused = []

        def try_new() -> None:
            for _ in range(20):
                try:
                    r = httpx.post(f"{base}/chat/completions", headers=auth(), timeout=30,
                                   json={"model": MODEL, "messages": CHAT, "max_tokens": 2})
                    refused.append(r.status_code)
                except httpx.TransportError:
                    refused.append("refused")
                time.sleep(0.05)

        newcomer = threading.Thread(target=try_new)
        newcomer.start()
        chunks.extend(stream)  # the request in flight runs to its end
        newcomer.join(60)
        assert srv.proc.wait(60) == 0
    finally:
        srv.kill()
    assert chunks[-1].usage.completion_tokens == 400
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert refused and all(s in (503, "refused") for s in refused), refused
    records = [json.loads(line) for line in srv.lines]  # every line is JSON
    assert any(r.get("event") == "drain" for r in records)
    assert any(r.get("event") == "stop" and r["batcher_stopped"] for r in records)
    assert_no_secret([line.encode() for line in srv.lines],
                     secret_forms(SECRET, [USER_KEY, TRUSTED_KEY]), "log line")


# -- nothing secret leaves the server -------------------------------------------------------------
def test_no_secret_in_logs_or_responses(server: ServerThread, recorded: Recorded,
                                        logs: LogCapture, wm_key: WatermarkKey) -> None:
    user = make_client(server, recorded)
    trusted = make_client(server, recorded, TRUSTED_KEY)
    user.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
    list(user.completions.create(model=MODEL, prompt="Hi", max_tokens=4, stream=True))
    trusted.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4,
                                    extra_body={"watermarking": False})
    for bad in (lambda: make_client(server, recorded, WRONG_KEY).models.list(),
                lambda: user.chat.completions.create(model=MODEL, messages=CHAT,
                                                     extra_body={"watermarking": False}),
                lambda: user.chat.completions.create(model=MODEL, messages=[])):
        with pytest.raises(openai.APIStatusError):
            bad()
    blobs = recorded.blobs()
    assert len(blobs) >= 10
    forms = secret_forms(SECRET, [USER_KEY, TRUSTED_KEY, WRONG_KEY])
    assert_no_secret(blobs, forms, "response")
    assert_no_secret([line.encode() for line in logs.lines], forms, "log line")
    assert len(request_logs(logs)) >= 10
    assert {r.get("client") for r in request_logs(logs)} <= {"unauthenticated", "anonymous",
                                                             "key@1", "key@2"}
    assert wm_key.key_id.encode() in blobs[-1]  # the public id is there, the key is not
