"""Query a suspect model for the closed-model audit, with resumable checkpoints.

A suspect is anything that turns prompts into answers (:class:`SuspectClient`): a local
transformers model (:class:`HFClient`) or an OpenAI-compatible HTTP endpoint
(:class:`OpenAIClient`). :func:`query_with_checkpoint` drives a client over the audit prompts
and appends every answer to a JSONL checkpoint as it arrives, so a run killed after hours of
queries resumes where it stopped instead of starting over.

Checkpoint format (one JSON object per line):

* line 1, the header: format tag, SHA-256 of the prompts, their count and the client's
  :meth:`~SuspectClient.identity`. Resuming with other prompts or another client is refused.
* every other line, one :class:`Answer`, appended and ``fsync``-ed as soon as it arrives.

On resume the file is read back; a truncated or corrupt last line (a run killed mid-write) is
dropped and the file rewritten atomically before anything is appended. Answers recorded with
``error`` set (the query failed after all retries) are queried again: a transient outage must
not become permanent. Failed answers of the current run are recorded and returned, never
skipped.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from tqdm.auto import tqdm

from fingerprint.errors import ConfigError, FingerprintError, InputError

if TYPE_CHECKING:
    import httpx
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "Answer",
    "CheckpointError",
    "CheckpointMismatchError",
    "HFClient",
    "OpenAIClient",
    "SuspectClient",
    "SuspectClientError",
    "TokenBucket",
    "prompts_sha256",
    "query_with_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fingerprint.audit.answers/v1"
_ERROR_SNIPPET = 300  # characters of a failed response body kept in Answer.error
_MAX_BODY = 16 << 20  # bytes of one response body; larger ones count as malformed
_RESERVED_BODY_KEYS = frozenset({"model", "messages", "prompt", "stream", "n"})


class CheckpointError(FingerprintError, ValueError):
    """A checkpoint file that cannot be used: not a checkpoint, corrupt, or in use."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint written for other prompts or another suspect client."""


class SuspectClientError(FingerprintError, RuntimeError):
    """A client that broke its contract (unknown, duplicate or missing answers)."""


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """The suspect's answer to prompt ``index``.

    ``error`` is set (and ``text`` empty) when the query failed after all retries; such answers
    are kept and reported. ``attempts`` counts the requests (or generations) made.
    """

    index: int
    prompt: str
    text: str
    finish_reason: str | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the query succeeded."""
        return self.error is None

    def to_json(self) -> str:
        """One line of compact, ASCII-only JSON (no trailing newline)."""
        return json.dumps(
            {
                "index": self.index,
                "prompt": self.prompt,
                "text": self.text,
                "finish_reason": self.finish_reason,
                "attempts": self.attempts,
                "error": self.error,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> Answer:
        """Parse :meth:`to_json` output (or the decoded dict); :class:`InputError` if invalid."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise InputError(f"Answer is not valid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InputError(f"Answer must be a JSON object, got {type(data).__name__}.")
        index, attempts = data.get("index"), data.get("attempts")
        for name, value in (("index", index), ("attempts", attempts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"Answer.{name} must be a non-negative int, got {value!r}.")
        assert isinstance(index, int) and isinstance(attempts, int)
        for name in ("prompt", "text"):
            if not isinstance(data.get(name), str):
                raise InputError(f"Answer.{name} must be a string.")
        for name in ("finish_reason", "error"):
            if data.get(name) is not None and not isinstance(data.get(name), str):
                raise InputError(f"Answer.{name} must be a string or null.")
        return cls(
            index=index,
            prompt=data["prompt"],
            text=data["text"],
            finish_reason=data.get("finish_reason"),
            attempts=attempts,
            error=data.get("error"),
        )


@runtime_checkable
class SuspectClient(Protocol):
    """Something that answers prompts: a local model or a remote API."""

    def identity(self) -> dict[str, Any]:
        """JSON-able description of what answers (model, endpoint, sampling); never secrets."""
        ...

    def query(self, prompts: list[tuple[int, str]]) -> Iterator[Answer]:
        """Answer ``(index, prompt)`` pairs, yielding each answer as it completes (any order)."""
        ...


def _check_items(prompts: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """Validate ``(index, prompt)`` pairs: int indices, unique, string prompts."""
    if isinstance(prompts, (str, bytes)):
        raise InputError("prompts must be a list of (index, prompt) pairs, not a string.")
    items: list[tuple[int, str]] = []
    seen: set[int] = set()
    for item in prompts:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InputError(f"Each prompt must be an (index, prompt) pair, got {item!r:.80}.")
        index, prompt = item
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InputError(f"Prompt index must be a non-negative int, got {index!r}.")
        if not isinstance(prompt, str):
            raise InputError(f"Prompt {index} must be a str, got {type(prompt).__name__}.")
        if index in seen:
            raise InputError(f"Prompt index {index} appears twice.")
        seen.add(index)
        items.append((index, prompt))
    return items


def _check_number(name: str, value: Any, *, low: float, high: float = math.inf,
                  low_open: bool = False, integer: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the given range."""
    wrong_type = isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not isinstance(value, int)
    )
    if wrong_type or not math.isfinite(value):
        kind = "an int" if integer else "a finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}.")
    number = float(value)
    if number < low or (low_open and number == low) or number > high:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be in {bracket}{low}, {high}], got {value!r}.")


# --------------------------------------------------------------------------- rate limiting


class TokenBucket:
    """Thread-safe token bucket: up to ``burst`` requests at once, then ``rate`` per second.

    Each :meth:`reserve` takes a token, possibly borrowing against the future, and says how
    long the caller must wait before using it; callers are served in order of arrival.
    """

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_number("rate", rate, low=0.0, low_open=True)
        _check_number("burst", burst, low=1.0)
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return the seconds to wait before it may be used (0.0 if now)."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate) - 1.0
            return 0.0 if self._tokens >= 0.0 else -self._tokens / self.rate

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is available; ``False`` if ``stop`` was set while waiting."""
        delay = self.reserve()
        if delay <= 0.0:
            return True
        if stop is None:
            time.sleep(delay)
            return True
        return not stop.wait(delay)


# --------------------------------------------------------------------------- HTTP client


class _MalformedResponseError(Exception):
    """A 2xx response whose body is not the expected completion JSON."""


class _TooSlowError(Exception):
    """A response still arriving when the attempt's time was up."""


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _redact_url(url: str) -> str:
    """``url`` without user info, query or fragment (which may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIClient:
    """A suspect behind an OpenAI-compatible HTTP API (``/chat/completions`` or ``/completions``).

    Requests run on a pool of ``concurrency`` threads sharing one ``httpx`` connection pool.
    Each prompt is tried at most ``1 + max_retries`` times. Retried: connection errors,
    timeouts, dropped connections, HTTP 408, 429 and 5xx (waiting ``Retry-After`` when given,
    capped at ``max_backoff``; otherwise exponential backoff ``backoff * 2**k`` with jitter,
    capped), and 2xx responses with malformed JSON or missing fields. Other 4xx fail at once.
    A prompt that still fails yields an :class:`Answer` with ``error`` set.

    ``rate_limit`` (requests per second, retries included) is enforced by a token bucket of
    ``rate_burst`` tokens. ``extra_body`` is merged into every request body (e.g. ``seed``,
    ``stop``) and is part of :meth:`identity`, so it must not hold secrets. The API key is sent
    as ``Authorization: Bearer`` and never appears in ``repr``, identity, logs or errors.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        mode: str = "chat",
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        concurrency: int = 4,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        rate_limit: float | None = None,
        rate_burst: int = 1,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.strip():
            raise ConfigError("base_url must be a non-empty URL such as 'http://host:8000/v1'.")
        url = base_url.strip().rstrip("/")
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            raise ConfigError("base_url is not a valid URL (value not shown).") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"base_url must start with http:// or https:// and name a host, got "
                f"{_redact_url(url)!r}."
            )
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be a non-empty string (the provider's model name).")
        if mode not in ("chat", "completions"):
            raise ConfigError(f"mode must be 'chat' or 'completions', got {mode!r}.")
        if api_key is not None and (
            not isinstance(api_key, str) or not api_key or any(c in api_key for c in "\r\n")
        ):
            raise ConfigError("api_key must be a non-empty single-line string (value not shown).")
        _check_number("max_tokens", max_tokens, low=1, integer=True)
        _check_number("temperature", temperature, low=0.0)
        _check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        _check_number("concurrency", concurrency, low=1, integer=True)
        _check_number("timeout", timeout, low=0.0, low_open=True)
        _check_number("max_retries", max_retries, low=0, integer=True)
        _check_number("backoff", backoff, low=0.0)
        _check_number("max_backoff", max_backoff, low=0.0)
        _check_number("rate_burst", rate_burst, low=1, integer=True)
        if rate_limit is not None:
            _check_number("rate_limit", rate_limit, low=0.0, low_open=True)
        body = dict(extra_body or {})
        reserved = sorted(_RESERVED_BODY_KEYS & body.keys())
        if reserved:
            raise ConfigError(f"extra_body may not set {', '.join(reserved)}.")
        try:
            json.dumps(body)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"extra_body must be JSON-serializable: {exc}") from None

        self.base_url = url
        self.model = model
        self.mode = mode
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.rate_limit = None if rate_limit is None else float(rate_limit)
        self.rate_burst = rate_burst
        self.extra_body = body
        self._api_key = api_key
        self._endpoint = f"{url}/{'chat/completions' if mode == 'chat' else 'completions'}"
        self._rng = random.Random()
        self._bucket = None if rate_limit is None else TokenBucket(rate_limit, rate_burst)

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (
            f"OpenAIClient(base_url={_redact_url(self.base_url)!r}, model={self.model!r}, "
            f"mode={self.mode!r}, api_key={key}, concurrency={self.concurrency})"
        )

    def identity(self) -> dict[str, Any]:
        """Endpoint, model, mode and sampling settings (no key, no credentials in the URL)."""
        return {
            "kind": "openai",
            "base_url": _redact_url(self.base_url),
            "model": self.model,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "extra_body": copy.deepcopy(self.extra_body),
        }

    def _scrub(self, message: str) -> str:
        """``message`` with the API key masked."""
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return message

    def _body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model}
        if self.mode == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)
        body.update(self.extra_body)
        return body

    def _post(self, http: httpx.Client, body: dict[str, Any]) -> tuple[int, str | None, bytes]:
        """One request: status, ``Retry-After`` header and body.

        The whole response must arrive within ``timeout`` of the request (checked as data
        arrives; httpx bounds each wait by ``timeout`` too), so a trickling server cannot
        stretch an attempt indefinitely.
        """
        deadline = time.monotonic() + self.timeout
        with http.stream("POST", self._endpoint, json=body) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > _MAX_BODY:
                    raise _MalformedResponseError(f"body larger than {_MAX_BODY} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _TooSlowError
            return response.status_code, response.headers.get("retry-after"), b"".join(chunks)

    def _parse(self, content: bytes) -> tuple[str, str | None]:
        """Text and finish reason of a 2xx completion response body."""
        try:
            data = json.loads(content)
        except ValueError:
            raise _MalformedResponseError("body is not valid JSON") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _MalformedResponseError("no 'choices' in the response")
        choice = choices[0]
        if self.mode == "chat":
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            field = "choices[0].message.content"
        else:
            text = choice.get("text")
            field = "choices[0].text"
        if not isinstance(text, str):
            raise _MalformedResponseError(f"'{field}' is missing or not a string")
        finish = choice.get("finish_reason")
        return text, finish if isinstance(finish, str) else None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        base = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 60))
        return base * (0.5 + 0.5 * self._rng.random())

    def _query_one(self, http: httpx.Client, index: int, prompt: str,
                   stop: threading.Event) -> Answer:
        """Query one prompt with retries; never raises for HTTP or network failures."""
        import httpx

        body = self._body(prompt)
        attempts = 0
        last_error = "cancelled before the first request"
        while attempts <= self.max_retries and not stop.is_set():
            if self._bucket is not None and not self._bucket.acquire(stop):
                break
            attempts += 1
            retry_after: float | None = None
            try:
                status, retry_header, content = self._post(http, body)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                last_error = f"request not possible: {type(exc).__name__}: {exc}"
                break
            except httpx.TimeoutException as exc:
                last_error = f"timed out after {self.timeout:g} s ({type(exc).__name__})"
            except _TooSlowError:
                last_error = f"timed out: the response took over {self.timeout:g} s"
            except _MalformedResponseError as exc:
                last_error = f"malformed response: {exc}"
            except httpx.TransportError as exc:
                last_error = f"connection failed: {type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    try:
                        text, finish = self._parse(content)
                    except _MalformedResponseError as exc:
                        last_error = f"malformed response (HTTP {status}): {exc}"
                    else:
                        return Answer(index, prompt, text, finish, attempts, None)
                else:
                    body_text = content.decode("utf-8", "replace")
                    last_error = f"HTTP {status}: {' '.join(body_text.split())[:_ERROR_SNIPPET]}"
                    if not (status in (408, 429) or status >= 500):
                        break
                    retry_after = _parse_retry_after(retry_header)
            if attempts > self.max_retries:
                break
            delay = self._delay(attempts, retry_after)
            logger.debug(
                "prompt %d attempt %d failed (%s); retrying in %.2f s",
                index, attempts, self._scrub(last_error), delay,
            )
            if stop.wait(delay):
                break
        error = self._scrub(f"failed after {attempts} attempt(s): {last_error}")
        logger.warning("prompt %d: %s", index, error)
        return Answer(index, prompt, "", None, attempts, error)

    def query(self, prompts: list[tuple[int, str]]) -> Generator[Answer, None, None]:
        """Answer ``(index, prompt)`` pairs concurrently, yielding answers as they complete.

        At most ``concurrency`` requests are in flight. Closing the iterator early cancels the
        prompts not yet started and waits for the requests in flight (at most ``timeout``).
        """
        import httpx

        items = _check_items(prompts)
        if not items:
            return
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        stop = threading.Event()
        pending: set[Future[Answer]] = set()
        todo = iter(items)
        with httpx.Client(
            headers=headers, timeout=httpx.Timeout(self.timeout), limits=limits
        ) as http, ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="suspect-query"
        ) as pool:

            def fill() -> None:
                while len(pending) < self.concurrency:
                    item = next(todo, None)
                    if item is None:
                        return
                    pending.add(pool.submit(self._query_one, http, item[0], item[1], stop))

            try:
                fill()
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    pending.difference_update(done)
                    fill()  # keep the pool busy while the caller handles these answers
                    yield from sorted((f.result() for f in done), key=lambda a: a.index)
            finally:
                stop.set()
                for future in pending:
                    future.cancel()


# --------------------------------------------------------------------------- local model


def _prompt_seed(seed: int, index: int) -> int:
    """A 63-bit RNG seed for prompt ``index`` (no collisions between nearby seeds)."""
    digest = hashlib.sha256(f"fingerprint.audit.clients/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _RowSampler:
    """Logits processor that samples each row with its own generator, then forces the choice.

    Generation runs greedily over the returned scores (the sampled token at 0, all others at
    -inf), so a prompt's sample stream depends only on its seed, not on its batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        probs = torch.softmax(scores.detach().float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            drop[:, 0] = False
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        # Inverse-CDF sampling: one uniform draw per row from that row's own generator.
        cdf = probs.double().cumsum(dim=-1)
        draws = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]
        )
        targets = (draws * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)
        forced = torch.full_like(scores, -math.inf)
        forced.scatter_(-1, tokens.to(scores.device), 0.0)
        return forced


class HFClient:
    """A local transformers causal LM as the suspect.

    Prompts are generated in batches of ``batch_size`` (left padding), through the tokenizer's
    chat template when ``chat``. ``temperature == 0`` is greedy. Otherwise each prompt samples
    from its own generator seeded by ``(seed, index)``, so answers are reproducible and do not
    depend on how prompts are batched (up to float rounding of padded batches).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        chat: bool = True,
        seed: int = 0,
    ) -> None:
        _check_number("max_new_tokens", max_new_tokens, low=1, integer=True)
        _check_number("temperature", temperature, low=0.0)
        _check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        _check_number("batch_size", batch_size, low=1, integer=True)
        _check_number("seed", seed, low=0, integer=True)
        if not hasattr(model, "generate"):
            raise ConfigError(
                f"model must be a transformers causal LM, got {type(model).__name__}."
            )
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        if pad is None:
            raise ConfigError("The tokenizer has neither a pad nor an eos token; set pad_token.")
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("The tokenizer has no chat template; use chat=False for raw prompts.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.batch_size = batch_size
        self.chat = bool(chat)
        self.seed = seed
        self._pad_id = int(pad)
        self._identity: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"HFClient(model={type(self.model).__name__}, chat={self.chat}, "
            f"temperature={self.temperature}, batch_size={self.batch_size})"
        )

    def _tokenizer_sha256(self) -> str:
        """SHA-256 over the vocabulary, special tokens and chat template."""
        tok = self.tokenizer
        payload = {
            "vocab": sorted(tok.get_vocab().items()),
            "special": sorted(map(str, getattr(tok, "all_special_tokens", []))),
            "chat_template": getattr(tok, "chat_template", None) if self.chat else None,
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def identity(self) -> dict[str, Any]:
        """Model weights hash, tokenizer hash and generation settings (cached after first call;
        the weights must not change while the client is in use)."""
        if self._identity is None:
            from fingerprint.models import model_fingerprint

            identity: dict[str, Any] = {
                "kind": "hf",
                "model_sha256": model_fingerprint(self.model),
                "tokenizer_sha256": self._tokenizer_sha256(),
                "chat": self.chat,
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
            }
            if self.temperature > 0:
                identity["seed"] = self.seed
            self._identity = identity
        return dict(self._identity)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        if self.chat:
            from fingerprint.models import chat_prompts

            texts = chat_prompts(self.tokenizer, prompts)
        else:
            texts = prompts
        encoded = self.tokenizer(texts, add_special_tokens=not self.chat)["input_ids"]
        out: list[list[int]] = []
        for ids in encoded:
            ids = [int(t) for t in ids]
            if not ids:
                bos = self.tokenizer.bos_token_id
                if bos is None:
                    raise InputError("An empty prompt has no tokens and the tokenizer no bos.")
                ids = [int(bos)]
            out.append(ids)
        return out

    def _generate(self, batch: list[tuple[int, str]]) -> list[Answer]:
        import torch

        encoded = self._encode([p for _, p in batch])
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        try:
            device = next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")

        from transformers import GenerationConfig, LogitsProcessorList

        base = getattr(self.model, "generation_config", None)
        config = copy.deepcopy(base) if base is not None else GenerationConfig()
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.do_sample = False
        config.num_beams = 1
        config.num_return_sequences = 1
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.pad_token_id = self._pad_id
        processors = LogitsProcessorList()
        if self.temperature > 0:
            seeds = [_prompt_seed(self.seed, index) for index, _ in batch]
            processors.append(_RowSampler(seeds, self.temperature, self.top_p))
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=processors,
            )
        new_tokens = output[:, width:].cpu().tolist()
        eos = self._eos_ids()
        answers = []
        for (index, prompt), tokens in zip(batch, new_tokens, strict=True):
            stop_at = next((i for i, t in enumerate(tokens) if t in eos), None)
            finish = "length" if stop_at is None else "stop"
            kept = tokens if stop_at is None else tokens[:stop_at]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            answers.append(Answer(index, prompt, text, finish, 1, None))
        return answers

    def query(self, prompts: list[tuple[int, str]]) -> Generator[Answer, None, None]:
        """Generate answers batch by batch (in the given order), yielding each batch's answers."""
        items = _check_items(prompts)
        for start in range(0, len(items), self.batch_size):
            yield from self._generate(items[start:start + self.batch_size])


# --------------------------------------------------------------------------- checkpoints


def prompts_sha256(prompts: Sequence[str]) -> str:
    """SHA-256 over the prompts in order (length-prefixed UTF-8, so boundaries count)."""
    digest = hashlib.sha256(b"fingerprint.audit.prompts/v1\n")
    for prompt in prompts:
        data = prompt.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _normalized_identity(client: SuspectClient) -> dict[str, Any]:
    """The client's identity as it reads back from JSON."""
    identity = client.identity()
    if not isinstance(identity, dict):
        raise ConfigError(f"client.identity() must return a dict, got {type(identity).__name__}.")
    try:
        return json.loads(json.dumps(identity, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"client.identity() must be JSON-serializable: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` (each newline-terminated): temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as fh:
            fh.writelines(line + "\n" for line in lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path.lock`` so two runs never write one checkpoint."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CheckpointError(
                f"Checkpoint {path} is in use by another run (lock {lock_path} is held)."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _describe_mismatch(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """Human-readable reason why a checkpoint header does not fit this run."""
    if (found.get("prompts_sha256"), found.get("n_prompts")) != (
        expected["prompts_sha256"], expected["n_prompts"]
    ):
        return (
            f"Checkpoint {path} was written for other prompts ({found.get('n_prompts')} prompts, "
            f"sha256 {str(found.get('prompts_sha256'))[:12]}...) than this run "
            f"({expected['n_prompts']} prompts, sha256 {expected['prompts_sha256'][:12]}...). "
            "Use another checkpoint path, or delete this one to start over."
        )
    recorded = found.get("client")
    old: Mapping[str, Any] = recorded if isinstance(recorded, dict) else {}
    new = expected["client"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6])
    return (
        f"Checkpoint {path} was written by another suspect client ({detail}). Answers of "
        "different runs are never mixed: use another checkpoint path, or delete this one."
    )


def _load_checkpoint(path: Path, header: dict[str, Any],
                     prompts: Sequence[str]) -> tuple[dict[int, Answer], bool]:
    """Read a checkpoint: (answers by index, last line wins; whether the file is clean).

    A missing or empty file gives no answers. A truncated or corrupt last line is dropped
    (``clean`` is then False); any other damage raises :class:`CheckpointError`.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, False
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc}") from exc
    if not raw:
        return {}, False
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a truncated line
    truncated = tail != b""
    clean = not truncated
    if truncated:
        lines.append(tail)
    try:
        found = json.loads(lines[0]) if len(lines) > 1 or not truncated else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an answers checkpoint (its first line is not a '{CHECKPOINT_FORMAT}' "
            "header). Refusing to overwrite it: pass another path."
        )
    if {k: found.get(k) for k in header} != header:
        raise CheckpointMismatchError(_describe_mismatch(path, found, header))

    answers: dict[int, Answer] = {}
    body = lines[1:]
    for number, line in enumerate(body, start=2):
        is_last = number == len(body) + 1
        if is_last and truncated:
            logger.warning("checkpoint %s: dropping truncated last line %d", path, number)
            break
        if not line.strip():
            clean = False
            continue
        try:
            answer = Answer.from_json(line)
            if answer.index >= len(prompts) or answer.prompt != prompts[answer.index]:
                raise InputError(f"answer {answer.index} does not belong to these prompts")
        except InputError as exc:
            if is_last:
                logger.warning("checkpoint %s: dropping corrupt last line %d", path, number)
                clean = False
                break
            raise CheckpointError(
                f"Checkpoint {path} is corrupt at line {number} ({exc}); only a damaged last "
                "line can be repaired. Fix or delete the file."
            ) from None
        if answer.index in answers:
            clean = False
        answers[answer.index] = answer
    return answers, clean


def query_with_checkpoint(
    client: SuspectClient,
    prompts: list[str],
    checkpoint: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> list[Answer]:
    """Answer every prompt through ``client``, checkpointing each answer to JSONL as it arrives.

    Resumes from an existing checkpoint of the same prompts and client identity: answers already
    recorded are not queried again, except those with ``error`` set, which are retried. Returns
    one answer per prompt, sorted by index; failed prompts are included with ``error`` set.
    Raises :class:`CheckpointMismatchError` for a checkpoint of other prompts or another client,
    and :class:`CheckpointError` for a file that is not a checkpoint or is in use by another run.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError("prompts must be a list of strings.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompts[{i}] must be a str, got {type(prompt).__name__}.")
    prompts = list(prompts)
    path = Path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": CHECKPOINT_FORMAT,
        "prompts_sha256": prompts_sha256(prompts),
        "n_prompts": len(prompts),
        "client": _normalized_identity(client),
    }

    with _exclusive(path):
        loaded, clean = _load_checkpoint(path, header, prompts)
        results = {i: a for i, a in loaded.items() if a.error is None}
        retried = len(loaded) - len(results)
        if not clean or retried:
            kept = [results[i].to_json() for i in sorted(results)]
            _write_atomic(path, [json.dumps(header, separators=(",", ":")), *kept])
        if loaded:
            logger.info(
                "checkpoint %s: resuming with %d of %d answers (%d failed answers re-queried)",
                path, len(results), len(prompts), retried,
            )
        todo = [(i, p) for i, p in enumerate(prompts) if i not in results]
        expected = {i for i, _ in todo}
        failed = 0
        bar = tqdm(
            total=len(prompts), initial=len(results), desc="querying suspect", unit="prompt",
            disable=not progress,
        )
        try:
            with open(path, "ab") as fh:
                answers = client.query(todo) if todo else iter(())
                try:
                    for answer in answers:
                        if not isinstance(answer, Answer):
                            raise SuspectClientError(
                                f"client yielded {type(answer).__name__}, not Answer."
                            )
                        if answer.index not in expected:
                            raise SuspectClientError(
                                f"client answered prompt {answer.index}, which was not asked or "
                                "was already answered."
                            )
                        if answer.prompt != prompts[answer.index]:
                            raise SuspectClientError(
                                f"client's answer {answer.index} carries another prompt."
                            )
                        expected.discard(answer.index)
                        fh.write(answer.to_json().encode("ascii") + b"\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                        results[answer.index] = answer
                        failed += answer.error is not None
                        bar.update(1)
                finally:
                    close = getattr(answers, "close", None)
                    if close is not None:
                        close()
        finally:
            bar.close()
    if expected:
        raise SuspectClientError(
            f"client returned no answer for {len(expected)} prompt(s) (e.g. index "
            f"{min(expected)}); the answers received are in {path}."
        )
    if failed:
        logger.warning(
            "%d of %d prompts failed after all retries; they are recorded with their error and "
            "will be re-queried on the next run with checkpoint %s", failed, len(prompts), path,
        )
    return [results[i] for i in range(len(prompts))]
