"""The OpenAI wire format: request validation, tokenization, response and chunk bodies.

Requests are checked field by field and refused with a 400 whose body is OpenAI's error object.
Unknown fields are refused (as OpenAI does), all of them listed in one message. Two fields extend
the API: ``watermarking`` (``false`` opts out of the watermark, for trusted keys only, as vLLM's
request field) and ``min_tokens`` (vLLM's name: end-of-sequence is suppressed until that many
tokens are out). ``null`` stands for an absent optional field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["chat", "completion"]

COMMON_FIELDS = frozenset({
    "model", "temperature", "top_p", "max_tokens", "stop", "n", "seed", "stream",
    "stream_options", "user", "watermarking", "min_tokens", "presence_penalty",
    "frequency_penalty", "logprobs",
})
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "best_of", "suffix"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_FIELDS = frozenset({"role", "content", "name"})
SEED_RANGE = (-(2**63), 2**64)
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class ApiError(Exception):
    """A request refused with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 error."""
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Each cap is refused with a 4xx, never silently clamped."""

    max_tokens: int = 1024  # cap on max_tokens
    default_max_tokens: int = 256  # chat requests without max_tokens
    max_n: int = 4  # cap on n
    max_prompts: int = 8  # prompts of one /v1/completions request
    max_prompt_tokens: int = 2048  # tokens of one prompt after the chat template
    max_body_bytes: int = 1 << 20  # request body
    max_stop: int = 4  # stop sequences
    max_stop_chars: int = 256  # characters of one stop sequence
    max_queue_rows: int = 256  # rows waiting for the model before new requests get 503

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                from fingerprint.errors import ConfigError

                raise ConfigError(f"limit {name} must be a positive integer, got {v!r}")
        if self.default_max_tokens > self.max_tokens:
            object.__setattr__(self, "default_max_tokens", self.max_tokens)


@dataclass(frozen=True)
class Sampling:
    """How the tokens of one request are drawn (shared by all its choices)."""

    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Temperature 0: the likeliest token at every step."""
        return self.temperature == 0.0


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: token ids of each prompt and how to sample them."""

    kind: Kind
    model: str
    prompts: list[list[int]]
    n: int
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    watermark: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Sequences generated: n per prompt."""
        return len(self.prompts) * self.n


# -- field checks -----------------------------------------------------------------------------
def _absent(body: dict[str, Any], name: str) -> bool:
    return body.get(name) is None


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name, "invalid_type")
    if v < low or v > high or (low_open and v == low):
        bracket = "(" if low_open else "["
        raise bad(f"'{name}' must lie in {bracket}{low:g}, {high:g}], got {v!r}", name,
                  "invalid_value")
    return float(v)


def _integer(body: dict[str, Any], name: str, default: int | None, low: int,
             high: int | None = None, cap_note: str = "") -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer", name, "invalid_type")
    if v < low:
        raise bad(f"'{name}' must be at least {low}, got {v}", name, "invalid_value")
    if high is not None and v > high:
        raise bad(f"'{name}' must be at most {high}{cap_note}, got {v}", name, "invalid_value")
    return v


def _boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false", name, "invalid_type")
    return v


def _neutral(body: dict[str, Any], kind: Kind) -> None:
    """Fields accepted only at the value that changes nothing (they are not implemented)."""
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or v != 0):
            raise bad(f"'{name}' is not supported by this server (only 0)", name,
                      "unsupported_parameter")
    v = body.get("logprobs")
    if v is not None and v is not False:
        raise bad("'logprobs' is not supported by this server", "logprobs",
                  "unsupported_parameter")
    if kind == "completion":
        if body.get("echo") not in (None, False):
            raise bad("'echo' is not supported by this server", "echo", "unsupported_parameter")
        if body.get("best_of") not in (None, 1) or isinstance(body.get("best_of"), bool):
            raise bad("'best_of' is not supported by this server (only 1)", "best_of",
                      "unsupported_parameter")
        if body.get("suffix") is not None:
            raise bad("'suffix' is not supported by this server", "suffix",
                      "unsupported_parameter")


def _stop(body: dict[str, Any], limits: Limits) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(items) > limits.max_stop:
        raise bad(f"'stop' may hold at most {limits.max_stop} sequences", "stop",
                  "invalid_value")
    for s in items:
        if not s or len(s) > limits.max_stop_chars:
            raise bad(f"each stop sequence must have 1 to {limits.max_stop_chars} characters",
                      "stop", "invalid_value")
    return tuple(dict.fromkeys(items))


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    v = body.get("stream_options")
    if v is None:
        return False
    if not stream:
        raise bad("'stream_options' is only allowed with 'stream': true", "stream_options")
    if not isinstance(v, dict) or set(v) - {"include_usage"}:
        raise bad("'stream_options' may only hold 'include_usage'", "stream_options")
    return _boolean(v, "include_usage", False)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if msgs is None:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(msgs, list):
        raise bad("'messages' must be a list of message objects", "messages", "invalid_type")
    if not msgs:
        raise bad("'messages' must hold at least one message", "messages", "empty_array")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object", where, "invalid_type")
        unknown = sorted(set(m) - MESSAGE_FIELDS)
        if unknown:
            raise bad(f"{where} has unsupported fields: {', '.join(unknown)}", where,
                      "unknown_parameter")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role",
                      "invalid_value")
        if m.get("name") is not None and not isinstance(m.get("name"), str):
            raise bad(f"{where}.name must be a string", f"{where}.name", "invalid_type")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                ok = (isinstance(part, dict) and part.get("type") == "text"
                      and isinstance(part.get("text"), str) and set(part) <= {"type", "text"})
                if not ok:
                    raise bad(f"{where}.content[{j}] must be a text part "
                              '({"type": "text", "text": ...}); other parts are not supported',
                              f"{where}.content", "invalid_value")
                parts.append(part["text"])
            content = "\n".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string or a list of text parts",
                      f"{where}.content", "invalid_type")
        out.append({"role": ROLES[role], "content": content})
    return out


def _prompts(body: dict[str, Any], limits: Limits) -> list[str]:
    v = body.get("prompt")
    if v is None:
        raise bad("'prompt' is required", "prompt", "missing_required_parameter")
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise bad("'prompt' must be a string or a list of strings (token ids are not "
                  "supported)", "prompt", "invalid_type")
    if not items:
        raise bad("'prompt' must hold at least one prompt", "prompt", "empty_array")
    if len(items) > limits.max_prompts:
        raise bad(f"'prompt' may hold at most {limits.max_prompts} prompts", "prompt",
                  "invalid_value")
    if any(not p for p in items):
        raise bad("'prompt' must not be empty", "prompt", "invalid_value")
    return items


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, ready to answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise bad("this model has no chat template: use /v1/completions", "messages",
                  "chat_not_supported")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as err:  # the template's own checks (e.g. role order) raise here
        raise bad(f"the chat template refused these messages ({type(err).__name__})",
                  "messages", "invalid_value") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_completion(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a raw prompt (special tokens added as the tokenizer does by default)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def parse_request(kind: Kind, body: Any, *, tokenizer: Any, limits: Limits, model_name: str,
                  scheme: str, context_length: int | None = None) -> ParsedRequest:
    """Validate a decoded JSON body and tokenize its prompts; raise :class:`ApiError`."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"Unrecognized request argument(s): {', '.join(unknown)}", unknown[0],
                  "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required (see GET /v1/models)", "model",
                  "missing_required_parameter")
    if model != model_name:
        raise ApiError(404, f"The model '{model[:100]}' does not exist; this server serves "
                       f"'{model_name}'", param="model", code="model_not_found")
    _neutral(body, kind)
    if not _absent(body, "user") and not isinstance(body["user"], str):
        raise bad("'user' must be a string", "user", "invalid_type")
    stream = _boolean(body, "stream", False)
    include_usage = _stream_options(body, stream)
    watermark = _boolean(body, "watermarking", True)
    n = _integer(body, "n", 1, 1, limits.max_n, " on this server")
    assert n is not None
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    if kind == "chat" and not _absent(body, "max_completion_tokens"):
        if not _absent(body, "max_tokens"):
            raise bad("pass 'max_tokens' or 'max_completion_tokens', not both",
                      "max_completion_tokens")
        name = "max_completion_tokens"
    else:
        name = "max_tokens"
    default = limits.default_max_tokens if kind == "chat" else min(
        COMPLETION_DEFAULT_MAX_TOKENS, limits.max_tokens)
    max_tokens = _integer(body, name, default, 1, limits.max_tokens, " on this server")
    assert max_tokens is not None
    min_tokens = _integer(body, "min_tokens", 0, 0, max_tokens, " (max_tokens)")
    assert min_tokens is not None
    seed = _integer(body, "seed", None, SEED_RANGE[0], SEED_RANGE[1] - 1)
    stop = _stop(body, limits)
    if watermark and scheme == "gumbel" and temperature == 0.0:
        raise bad("temperature 0 (greedy decoding) cannot carry this server's Gumbel "
                  "watermark: use a temperature > 0", "temperature", "invalid_value")
    if kind == "chat":
        prompts = [encode_chat(tokenizer, _messages(body))]
    else:
        prompts = [encode_completion(tokenizer, p) for p in _prompts(body, limits)]
    for i, ids in enumerate(prompts):
        where = "messages" if kind == "chat" else "prompt"
        if not ids:
            raise bad("the prompt has no tokens", where, "invalid_value")
        if len(ids) > limits.max_prompt_tokens:
            raise bad(f"the prompt{'' if len(prompts) == 1 else f' {i}'} has {len(ids)} "
                      f"tokens; this server takes at most {limits.max_prompt_tokens}", where,
                      "context_length_exceeded")
        if context_length is not None and len(ids) + max_tokens > context_length:
            raise bad(f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed "
                      f"the model's context of {context_length} tokens", where,
                      "context_length_exceeded")
    sampling = Sampling(max_tokens=max_tokens, min_tokens=min_tokens, temperature=temperature,
                        top_p=top_p, stop=stop, seed=seed)
    return ParsedRequest(kind=kind, model=model, prompts=prompts, n=n, sampling=sampling,
                         stream=stream, include_usage=include_usage, watermark=watermark)


# -- responses ----------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_body(kind: Kind, rid: str, created: int, model: str, fingerprint: str,
                  choices: list[tuple[str, str]], use: dict[str, int]) -> dict[str, Any]:
    """A whole (non-streamed) response: ``choices`` are (text, finish_reason) in index order."""
    if kind == "chat":
        items = [{"index": i, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish}
                 for i, (text, finish) in enumerate(choices)]
        obj = "chat.completion"
    else:
        items = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                 for i, (text, finish) in enumerate(choices)]
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": items, "usage": use}


def chunk_body(kind: Kind, rid: str, created: int, model: str, fingerprint: str,
               choices: list[dict[str, Any]], include_usage: bool,
               use: dict[str, int] | None = None) -> dict[str, Any]:
    """One streamed chunk. ``choices`` items: ``index``, and ``text``/``role``/``finish``."""
    items = []
    for c in choices:
        finish = c.get("finish")
        if kind == "chat":
            delta: dict[str, Any] = {}
            if "role" in c:
                delta["role"] = c["role"]
            if "text" in c:
                delta["content"] = c["text"]
            items.append({"index": c["index"], "delta": delta, "logprobs": None,
                          "finish_reason": finish})
        else:
            items.append({"index": c["index"], "text": c.get("text", ""), "logprobs": None,
                          "finish_reason": finish})
    out: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created, "model": model, "system_fingerprint": fingerprint, "choices": items}
    if include_usage:
        out["usage"] = use
    return out


__all__ = [
    "ApiError",
    "Limits",
    "ParsedRequest",
    "Sampling",
    "chunk_body",
    "encode_chat",
    "encode_completion",
    "parse_request",
    "response_body",
    "usage",
]
