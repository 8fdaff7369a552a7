"""Tests of :mod:`fingerprint.audit.clients`: HTTP and local suspects, retries, checkpoints."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fingerprint.audit import clients
from fingerprint.audit.clients import (
    CHECKPOINT_FORMAT,
    Answer,
    CheckpointError,
    CheckpointMismatchError,
    HFClient,
    OpenAIClient,
    SuspectClient,
    SuspectClientError,
    TokenBucket,
    query_with_checkpoint,
)
from fingerprint.errors import ConfigError, FingerprintError, InputError
from fingerprint.models import model_fingerprint
from tests.openai_stub_server import FAULT_KINDS, OpenAIStub, always, first_n, scripted

PROMPTS = [f"prompt number {i}: say something about topic {i * 7 % 5}" for i in range(12)]
SECRET = "sk-test-7f3a9c1e5b2d4f60-SECRET"
MODES = ("chat", "completions")


def reverse_words(prompt: str) -> str:
    """A deterministic stub answer that differs from the prompt."""
    return " ".join(reversed(prompt.split()))


def fast_client(stub: OpenAIStub, **kwargs: Any) -> OpenAIClient:
    """A client tuned for tests: tiny backoff so retries cost milliseconds."""
    options: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 10.0}
    options.update(kwargs)
    return OpenAIClient(stub.base_url, "stub-model", **options)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a checkpoint, parsed (fails on any partial or corrupt line)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("ascii").splitlines()]


def answer_lines(path: Path) -> list[dict[str, Any]]:
    lines = read_lines(path)
    assert lines[0]["format"] == CHECKPOINT_FORMAT
    return lines[1:]


def key(answers: list[Answer]) -> list[tuple[Any, ...]]:
    """The parts of answers that must not depend on how the run went."""
    return [(a.index, a.prompt, a.text, a.finish_reason, a.error) for a in answers]


# --------------------------------------------------------------------------- Answer


def test_answer_json_round_trip() -> None:
    answer = Answer(3, "héllo\n\"q\" \ud83d", "text \u2028 ✓", "stop", 2, None)
    line = answer.to_json()
    assert "\n" not in line and line.isascii()
    assert Answer.from_json(line) == answer
    assert Answer.from_json(json.loads(line)) == answer
    failed = Answer(0, "p", "", None, 5, "HTTP 500")
    assert Answer.from_json(failed.to_json()) == failed and not failed.ok


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        "[]",
        '{"index": -1, "prompt": "p", "text": "t", "attempts": 1}',
        '{"index": 0, "prompt": "p", "text": 3, "attempts": 1}',
        '{"index": 0, "prompt": "p", "text": "t", "attempts": true}',
        '{"index": 0, "prompt": "p", "text": "t", "attempts": 1, "error": 5}',
    ],
)
def test_answer_from_json_rejects_bad_lines(bad: str) -> None:
    with pytest.raises(InputError):
        Answer.from_json(bad)


# --------------------------------------------------------------------------- token bucket


def test_token_bucket_with_injected_clock() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=4.0, burst=2, clock=lambda: now[0])
    # Two tokens at once, then one every 0.25 s; reservations queue up behind each other.
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75])
    now[0] += 0.75  # the three borrowed tokens are paid back, nothing left over
    assert bucket.reserve() == pytest.approx(0.25)
    now[0] += 10.0  # a long idle period refills to the burst, no further
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.25])
    with pytest.raises(ConfigError):
        TokenBucket(rate=0.0)


def test_token_bucket_acquire_is_interruptible() -> None:
    bucket = TokenBucket(rate=0.01)
    assert bucket.acquire()
    stop = threading.Event()
    stop.set()
    start = time.monotonic()
    assert bucket.acquire(stop) is False  # would wait 100 s without the stop event
    assert time.monotonic() - start < 5


def test_retry_after_parsing() -> None:
    parse = clients._parse_retry_after
    assert parse(None) is None and parse("") is None and parse("soon") is None
    assert parse("3") == 3.0 and parse("0.5") == 0.5 and parse("-2") == 0.0
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    seconds = parse(future)
    assert seconds is not None and 90 < seconds <= 101


# --------------------------------------------------------------------------- OpenAIClient


@pytest.mark.parametrize("mode", MODES)
def test_openai_answers_all_prompts_in_order(mode: str, tmp_path: Path) -> None:
    with OpenAIStub(reverse_words) as stub:
        client = fast_client(
            stub, mode=mode, max_tokens=6, temperature=0.7, top_p=0.9, extra_body={"seed": 11}
        )
        assert isinstance(client, SuspectClient)
        answers = query_with_checkpoint(client, PROMPTS, tmp_path / "run.jsonl")
        base_url = stub.base_url
        paths = dict(stub.paths)
        bodies = list(stub.bodies)
    assert [a.index for a in answers] == list(range(len(PROMPTS)))
    for answer, prompt in zip(answers, PROMPTS, strict=True):
        words = reverse_words(prompt).split()
        assert answer.prompt == prompt
        assert answer.text == " ".join(words[:6])
        assert answer.finish_reason == ("length" if len(words) > 6 else "stop")
        assert answer.attempts == 1 and answer.error is None
    endpoint = "/v1/chat/completions" if mode == "chat" else "/v1/completions"
    assert paths == {endpoint: len(PROMPTS)}
    body = bodies[0]
    assert body["model"] == "stub-model" and body["max_tokens"] == 6 and body["seed"] == 11
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    if mode == "chat":
        assert body["messages"] == [{"role": "user", "content": body["messages"][0]["content"]}]
    else:
        assert isinstance(body["prompt"], str) and "messages" not in body
    identity = client.identity()
    assert identity["kind"] == "openai" and identity["mode"] == mode
    assert identity["model"] == "stub-model" and identity["base_url"] == base_url


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "400"])
def test_openai_survives_each_fault(mode: str, kind: str) -> None:
    prompts = PROMPTS[:4]
    # A hung or trickling response costs one client timeout; others take milliseconds.
    slow = kind in ("hang", "trickle")
    failures = 1 if slow else 2
    with OpenAIStub(reverse_words, faults=first_n(kind, failures), hang_s=30.0) as stub:
        client = fast_client(stub, mode=mode, max_retries=3, timeout=1.0 if slow else 10.0)
        answers = sorted(client.query(list(enumerate(prompts))), key=lambda a: a.index)
        counts = dict(stub.counts)
    assert [a.text for a in answers] == [reverse_words(p) for p in prompts]
    assert all(a.error is None and a.finish_reason == "stop" for a in answers)
    assert [a.attempts for a in answers] == [failures + 1] * len(prompts)
    assert counts == {p: failures + 1 for p in prompts}


def test_openai_mixed_faults_per_prompt() -> None:
    script = {
        PROMPTS[0]: ["500", "429", "close"],
        PROMPTS[1]: ["malformed"],
        PROMPTS[2]: ["truncated", "missing"],
        PROMPTS[3]: [],
        PROMPTS[4]: ["400"],  # a client error is final: no retry
        PROMPTS[5]: ["500", "500", "500", "500"],  # more failures than retries allow
    }
    with OpenAIStub(reverse_words, faults=scripted(script)) as stub:
        client = fast_client(stub, max_retries=3)
        answers = {a.index: a for a in client.query(list(enumerate(PROMPTS[:6])))}
        counts = dict(stub.counts)
    assert sorted(answers) == list(range(6))
    for i in range(4):
        assert answers[i].text == reverse_words(PROMPTS[i]) and answers[i].error is None
        assert answers[i].attempts == len(script[PROMPTS[i]]) + 1 == counts[PROMPTS[i]]
    assert answers[4].error is not None and "HTTP 400" in answers[4].error
    assert answers[4].attempts == 1 == counts[PROMPTS[4]]
    assert answers[5].error is not None and "HTTP 500" in answers[5].error
    assert answers[5].attempts == 4 == counts[PROMPTS[5]] and answers[5].text == ""


@pytest.mark.parametrize("mode", MODES)
def test_permanent_failure_is_reported_then_retried_on_resume(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "failing.jsonl"
    prompts = PROMPTS[:5]
    with OpenAIStub(reverse_words, faults=always("500")) as stub:
        answers = query_with_checkpoint(fast_client(stub, mode=mode, max_retries=2), prompts, path)
        counts = dict(stub.counts)
        # Every prompt is reported, with its error, after 1 + max_retries attempts.
        assert [a.index for a in answers] == list(range(5))
        assert all(a.error and "HTTP 500" in a.error and a.text == "" for a in answers)
        assert all(a.attempts == 3 for a in answers) and counts == {p: 3 for p in prompts}
        assert [line["error"] is not None for line in answer_lines(path)] == [True] * 5

        # A later run, once the endpoint has recovered, re-queries the failed prompts only.
        stub.reset()
        stub.faults = first_n("500", 2, prompts=[prompts[1]])
        client = fast_client(stub, mode=mode, max_retries=2)
        answers = query_with_checkpoint(client, prompts, path)
        counts = dict(stub.counts)
    assert [a.text for a in answers] == [reverse_words(p) for p in prompts]
    assert all(a.error is None for a in answers)
    assert counts == {p: 3 if p == prompts[1] else 1 for p in prompts}
    lines = answer_lines(path)
    assert sorted(line["index"] for line in lines) == list(range(5))
    assert all(line["error"] is None for line in lines)


def test_retry_after_header_is_honoured() -> None:
    prompt = PROMPTS[0]
    with OpenAIStub(faults=first_n("429", 1), retry_after="1") as stub:
        answers = list(fast_client(stub, backoff=0.0, max_backoff=5.0).query([(0, prompt)]))
        starts = list(stub.starts)
    assert answers[0].error is None and answers[0].attempts == 2
    assert starts[1] - starts[0] >= 0.9  # waited Retry-After, not the (zero) backoff

    with OpenAIStub(faults=first_n("429", 2), retry_after="0") as stub:
        client = fast_client(stub, backoff=30.0, max_backoff=30.0)
        start = time.monotonic()
        answers = list(client.query([(0, prompt)]))
    assert answers[0].error is None and answers[0].attempts == 3
    assert time.monotonic() - start < 20  # Retry-After: 0 replaced the 30 s backoff


def test_concurrency_overlaps_requests_and_is_bounded() -> None:
    items = list(enumerate(PROMPTS[:9]))
    with OpenAIStub(delay=0.3) as stub:
        answers = list(fast_client(stub, concurrency=3).query(items))
        peak = stub.max_in_flight
    assert len(answers) == 9 and all(a.ok for a in answers)
    assert 1 < peak <= 3
    with OpenAIStub(delay=0.05) as stub:
        list(fast_client(stub, concurrency=1).query(items[:4]))
        assert stub.max_in_flight == 1


def test_rate_limit_bounds_request_rate() -> None:
    # Counts, not precise timings: a loaded machine can only delay requests, which lowers the
    # count in a window; the slack covers early requests delayed into the window.
    rate, n, window = 10.0, 12, 0.3
    with OpenAIStub() as stub:
        client = fast_client(stub, concurrency=8, rate_limit=rate, rate_burst=1)
        answers = list(client.query(list(enumerate(PROMPTS[:n]))))
        starts = sorted(stub.starts)
    assert len(answers) == n and all(a.ok for a in answers)
    early = sum(1 for t in starts if t - starts[0] <= window)
    assert early <= 1 + rate * window + 3  # burst + rate * window + slack; 8+ without a limit
    assert starts[-1] - starts[0] >= 0.7  # 12 tokens spaced 0.1 s apart span 1.1 s


def test_closing_the_iterator_early_stops_querying() -> None:
    with OpenAIStub(delay=0.2) as stub:
        answers = fast_client(stub, concurrency=2).query(list(enumerate(PROMPTS)))
        first = next(answers)
        answers.close()
        total = stub.total
    assert first.ok
    assert total <= 4  # two in flight at most, refilled once; never the twelve


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://example.org/v1"},
        {"base_url": "not a url"},
        {"mode": "embeddings"},
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"concurrency": 0},
        {"timeout": 0},
        {"max_retries": -1},
        {"rate_limit": 0.0},
        {"extra_body": {"messages": []}},
        {"extra_body": {"x": object()}},
        {"api_key": "two\nlines" + SECRET},
    ],
)
def test_openai_client_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:9/v1", "api_key": SECRET}
    options.update(kwargs)
    with pytest.raises(ConfigError) as info:
        OpenAIClient(options.pop("base_url"), "m", **options)
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------- API key hygiene


def test_api_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keyed.jsonl"
    with OpenAIStub(reverse_words, api_key=SECRET, faults=first_n("500", 1)) as stub:
        client = fast_client(stub, api_key=SECRET, max_retries=2)
        answers = query_with_checkpoint(client, PROMPTS[:3], path)
        seen = set(stub.auth_headers)
        first_url = stub.base_url
    assert all(a.ok for a in answers)
    assert seen == {f"Bearer {SECRET}"}  # the key is sent, as a bearer token
    assert SECRET not in repr(client) and "***" in repr(client)
    assert SECRET not in json.dumps(client.identity())
    assert SECRET not in path.read_text()

    # A provider that quotes the rejected key back: the answer's error must not repeat it.
    wrong = "sk-wrong-0123456789abcdef-SECRET"
    with OpenAIStub(api_key=SECRET) as stub:
        client = fast_client(stub, api_key=wrong, max_retries=2)
        failed = query_with_checkpoint(client, PROMPTS[:2], tmp_path / "wrong.jsonl")
        assert stub.total == 2  # 401 is not retried
    assert all(a.error and "HTTP 401" in a.error and a.attempts == 1 for a in failed)
    assert all(wrong not in a.error for a in failed if a.error)
    assert wrong not in (tmp_path / "wrong.jsonl").read_text()

    # Errors raised to the caller carry no key either.
    other = OpenAIClient(first_url, "another-model", api_key=SECRET)
    with pytest.raises(CheckpointMismatchError) as info:
        query_with_checkpoint(other, PROMPTS[:3], path)
    assert SECRET not in str(info.value) and "another-model" in str(info.value)
    for text in (caplog.text, *(str(r.args) for r in caplog.records)):
        assert SECRET not in text and wrong not in text


def test_identity_hides_url_credentials() -> None:
    client = OpenAIClient("https://user:pw-SECRET@api.example.org:8443/v1?key=SECRET", "m")
    assert client.identity()["base_url"] == "https://api.example.org:8443/v1"
    assert "SECRET" not in repr(client)


# --------------------------------------------------------------------------- checkpoints

CHILD = """
import json, sys
from fingerprint.audit.clients import OpenAIClient, query_with_checkpoint
base_url, path, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = OpenAIClient(base_url, "stub-model", concurrency=2, backoff=0.01, timeout=10.0)
query_with_checkpoint(client, prompts, path)
"""


def test_kill_and_resume_answers_each_prompt_once(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    with OpenAIStub(reverse_words, delay=0.25) as stub:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, stub.base_url, str(path), json.dumps(PROMPTS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and child.poll() is None:
                if path.exists() and path.read_bytes().count(b"\n") >= 1 + 3:
                    break
                time.sleep(0.01)
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1].decode("ascii").splitlines()
        before = {json.loads(line)["index"] for line in complete[1:]}
        assert 3 <= len(before) < len(PROMPTS)

        answers = query_with_checkpoint(
            OpenAIClient(stub.base_url, "stub-model", concurrency=2, backoff=0.01),
            PROMPTS, path,
        )
        counts = dict(stub.counts)

    lines = answer_lines(path)
    assert sorted(line["index"] for line in lines) == list(range(len(PROMPTS)))
    assert all(counts[PROMPTS[i]] == 1 for i in before)  # answered before the kill: kept
    # Asked twice: only prompts in flight at the kill (two requests, plus at most two answers
    # received but not yet written, since the pool is refilled before answers are written).
    repeated = [i for i, p in enumerate(PROMPTS) if counts[p] > 1]
    assert len(repeated) <= 4 and all(counts[PROMPTS[i]] == 2 for i in repeated)

    with OpenAIStub(reverse_words) as stub:
        clean = query_with_checkpoint(fast_client(stub), PROMPTS, tmp_path / "clean.jsonl")
    assert key(answers) == key(clean)
    assert [a.text for a in answers] == [reverse_words(p) for p in PROMPTS]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "nul"])
def test_damaged_last_line_is_repaired(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    prompts = PROMPTS[:6]
    with OpenAIStub(reverse_words) as stub:
        first = query_with_checkpoint(fast_client(stub, concurrency=1), prompts, path)
        raw = path.read_bytes()
        last_index = json.loads(raw.splitlines()[-1])["index"]
        if damage == "truncate":  # killed in the middle of writing the last answer
            path.write_bytes(raw[:-15])
        elif damage == "garbage":  # a complete but unreadable last line
            path.write_bytes(raw[: raw.rstrip(b"\n").rfind(b"\n") + 1] + b'{"index": 5,}\n')
        else:  # a crash left zeros at the end of the file
            path.write_bytes(raw + b"\0" * 40)
        second = query_with_checkpoint(fast_client(stub), prompts, path)
        counts = dict(stub.counts)
    assert key(first) == key(second)
    expected = {p: 1 for p in prompts}
    if damage != "nul":
        expected[prompts[last_index]] = 2  # only the damaged answer is asked again
    assert counts == expected
    assert sorted(line["index"] for line in answer_lines(path)) == list(range(6))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic rewrite left no temp file


def test_corruption_before_the_last_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with OpenAIStub() as stub:
        query_with_checkpoint(fast_client(stub), PROMPTS[:4], path)
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = b"{broken\n"
        path.write_bytes(b"".join(lines))
        with pytest.raises(CheckpointError, match="line 3"):
            query_with_checkpoint(fast_client(stub), PROMPTS[:4], path)
        assert path.read_bytes() == b"".join(lines)


def test_mismatched_prompts_or_client_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with OpenAIStub() as stub:
        query_with_checkpoint(fast_client(stub), PROMPTS[:4], path)
        before = path.read_bytes()
        total = stub.total
        with pytest.raises(CheckpointMismatchError, match="other prompts"):
            query_with_checkpoint(fast_client(stub), PROMPTS[:5], path)
        with pytest.raises(CheckpointMismatchError, match="other prompts"):
            query_with_checkpoint(fast_client(stub), [*PROMPTS[:3], "changed"], path)
        with pytest.raises(CheckpointMismatchError, match="temperature"):
            query_with_checkpoint(fast_client(stub, temperature=1.0), PROMPTS[:4], path)
        with pytest.raises(CheckpointMismatchError, match="mode"):
            query_with_checkpoint(fast_client(stub, mode="completions"), PROMPTS[:4], path)
        # Settings that do not change answers (concurrency, retries) may differ on resume.
        query_with_checkpoint(fast_client(stub, concurrency=1, max_retries=0), PROMPTS[:4], path)
        assert stub.total == total
    assert path.read_bytes() == before


def test_foreign_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\nline two\n")
    with OpenAIStub() as stub, pytest.raises(CheckpointError, match="not an answers checkpoint"):
        query_with_checkpoint(fast_client(stub), PROMPTS[:2], path)
    assert path.read_text() == "my precious notes\nline two\n"


def test_checkpoint_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with OpenAIStub() as stub, clients._exclusive(path):
        with pytest.raises(CheckpointError, match="in use"):
            query_with_checkpoint(fast_client(stub), PROMPTS[:2], path)
        assert stub.total == 0


class ScriptedClient:
    """A client that returns whatever answers it is told to, to test contract checks."""

    def __init__(self, extra: list[Answer] | None = None, skip: int | None = None) -> None:
        self.extra = extra or []
        self.skip = skip
        self.asked: list[list[int]] = []

    def identity(self) -> dict[str, Any]:
        return {"kind": "scripted"}

    def query(self, prompts: list[tuple[int, str]]) -> Iterator[Answer]:
        self.asked.append([i for i, _ in prompts])
        for index, prompt in prompts:
            if index != self.skip:
                yield Answer(index, prompt, prompt.upper(), "stop", 1, None)
        yield from self.extra


def test_client_contract_violations_are_caught(tmp_path: Path) -> None:
    prompts = PROMPTS[:3]
    path = tmp_path / "a.jsonl"
    with pytest.raises(SuspectClientError, match="no answer for 1"):
        query_with_checkpoint(ScriptedClient(skip=1), prompts, path)
    assert sorted(line["index"] for line in answer_lines(path)) == [0, 2]  # progress kept
    client = ScriptedClient()
    assert [a.text for a in query_with_checkpoint(client, prompts, path)] == [
        p.upper() for p in prompts
    ]
    assert client.asked == [[1]]
    done = ScriptedClient()
    query_with_checkpoint(done, prompts, path)
    assert done.asked == []  # nothing left to ask

    duplicate = ScriptedClient(extra=[Answer(0, prompts[0], "again", "stop", 1, None)])
    with pytest.raises(SuspectClientError, match="already answered"):
        query_with_checkpoint(duplicate, prompts, tmp_path / "b.jsonl")
    stranger = ScriptedClient(extra=[Answer(0, "another prompt", "x", "stop", 1, None)])
    with pytest.raises(SuspectClientError):
        query_with_checkpoint(stranger, prompts, tmp_path / "c.jsonl")
    with pytest.raises(InputError):
        query_with_checkpoint(ScriptedClient(), "one prompt", tmp_path / "d.jsonl")  # type: ignore[arg-type]


def test_empty_prompt_list(tmp_path: Path) -> None:
    assert query_with_checkpoint(ScriptedClient(), [], tmp_path / "e.jsonl") == []
    assert answer_lines(tmp_path / "e.jsonl") == []


def test_errors_are_typed() -> None:
    assert issubclass(CheckpointMismatchError, CheckpointError)
    assert issubclass(CheckpointError, FingerprintError)
    assert issubclass(SuspectClientError, FingerprintError)


# --------------------------------------------------------------------------- HFClient

HF_PROMPTS = [
    "Hi",
    "Tell me a long story about a dragon who lived in the mountains",
    "What is 2+2?",
    "Name three colors of the rainbow, please.",
    "x",
]


def hf_texts(client: HFClient, prompts: list[str]) -> list[str]:
    answers = sorted(client.query(list(enumerate(prompts))), key=lambda a: a.index)
    assert [a.index for a in answers] == list(range(len(prompts)))
    assert all(a.ok and a.attempts == 1 and a.finish_reason in ("stop", "length") for a in answers)
    return [a.text for a in answers]


@pytest.mark.parametrize("chat", [False, True])
def test_hf_batched_greedy_equals_one_by_one(tiny_model: Any, default_tokenizer: Any,
                                             chat: bool) -> None:
    options: dict[str, Any] = {"max_new_tokens": 6, "chat": chat}
    batched = hf_texts(HFClient(tiny_model, default_tokenizer, batch_size=5, **options),
                       HF_PROMPTS)
    single = hf_texts(HFClient(tiny_model, default_tokenizer, batch_size=1, **options),
                      HF_PROMPTS)
    assert batched == single
    if not chat:  # raw prompts give prompt-dependent answers, so padding mistakes would show
        assert len(set(batched)) == len(HF_PROMPTS)


def test_hf_sampling_is_seeded_per_prompt(tiny_model: Any, default_tokenizer: Any) -> None:
    def run(batch_size: int, seed: int) -> list[str]:
        client = HFClient(tiny_model, default_tokenizer, max_new_tokens=5, temperature=1.0,
                          top_p=0.95, batch_size=batch_size, chat=False, seed=seed)
        return hf_texts(client, HF_PROMPTS[:3])

    first = run(3, seed=1)
    assert first == run(1, seed=1)  # batching does not change a prompt's sample
    second = run(3, seed=2)
    assert all(a != b for a, b in zip(first, second, strict=True))  # each prompt has its stream


def test_hf_identity_and_checkpoint(tiny_model: Any, default_tokenizer: Any,
                                    tmp_path: Path) -> None:
    client = HFClient(tiny_model, default_tokenizer, max_new_tokens=4, batch_size=2)
    identity = client.identity()
    assert identity["kind"] == "hf"
    assert identity["model_sha256"] == model_fingerprint(tiny_model)
    assert identity["chat"] is True and "seed" not in identity
    path = tmp_path / "hf.jsonl"
    answers = query_with_checkpoint(client, HF_PROMPTS[:3], path)
    assert [a.index for a in answers] == [0, 1, 2]
    sampled = HFClient(tiny_model, default_tokenizer, max_new_tokens=4, temperature=0.7)
    assert sampled.identity()["seed"] == 0
    with pytest.raises(CheckpointMismatchError, match="temperature"):
        query_with_checkpoint(sampled, HF_PROMPTS[:3], path)
    with pytest.raises(ConfigError):
        HFClient(tiny_model, default_tokenizer, batch_size=0)
