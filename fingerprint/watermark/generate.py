"""Watermarked generation with a transformers model: a list of prompts in, results out.

    from fingerprint.watermark import generate
    results = generate(model, tokenizer, ["Explain tides."], key=key, scheme="kgw")
    results[0].completion, results[0].completion_ids, results[0].watermark

Prompts go in batches, left-padded, through the chat template (``chat=True``). Both schemes
run as a ``watermarking_config``, after temperature, top-k and top-p: KGW's ``delta`` then
biases the distribution actually sampled from (as transformers' and vLLM's KGW do), and
Gumbel-max sees the processed logits it needs (it also needs sampling). :func:`generate_jsonl`
runs a prompts file to a results file and resumes where an interrupted run stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fingerprint.core import DEFAULT_PRF
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey, as_key
from fingerprint.watermark.config import DEFAULT_CONTEXT_WIDTH
from fingerprint.watermark.gumbel import GumbelWatermarkingConfig
from fingerprint.watermark.kgw import KGWWatermarkingConfig

Scheme = Literal["kgw", "gumbel", "none"]
GENERATION_SCHEMES: tuple[str, ...] = ("kgw", "gumbel", "none")
UNWATERMARKED: dict[str, Any] = {"scheme": "none"}


@dataclass(frozen=True)
class GenerationResult:
    """One completion: text, token ids, and the public configuration that produced it.

    ``prompt_ids`` are the real (unpadded) prompt tokens after the chat template;
    ``completion_ids`` the generated tokens up to and including the first end-of-sequence token.
    ``watermark`` is the scheme's public configuration (``{"scheme": "none"}`` when unmarked).
    """

    prompt: str
    completion: str
    completion_ids: list[int]
    prompt_ids: list[int]
    watermark: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn. ``top_k=None``/``top_p=None`` turn those filters off."""

    max_new_tokens: int = 256
    min_new_tokens: int | None = None
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "seed"):
            v = getattr(self, name)
            if v is None and name != "max_new_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError("min_new_tokens must lie between 0 and max_new_tokens")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 (or None for no top-k), got {self.top_k}")
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample must be True or False, got {self.do_sample!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (0 <= t < math.inf):
            raise ConfigError(f"temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float)
                              or not 0 < p <= 1):
            raise ConfigError(f"top_p must lie in (0, 1] (or None), got {p!r}")

    @property
    def greedy(self) -> bool:
        """Whether these settings decode greedily (no sampling, or temperature 0)."""
        return not self.do_sample or self.temperature == 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``; filters are explicit (transformers would
        otherwise apply its default top-k of 50)."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.greedy:
            kw["do_sample"] = False
            return kw
        kw.update(do_sample=True, temperature=float(self.temperature),
                  top_k=0 if self.top_k is None else self.top_k,
                  top_p=1.0 if self.top_p is None else float(self.top_p))
        return kw


def make_watermark(
    scheme: Scheme,
    key: WatermarkKey | int | str | os.PathLike[str] | None,
    *,
    gamma: float = 0.25,
    delta: float = 2.0,
    context_width: int | None = None,
    prf: str = DEFAULT_PRF,
    pad_token_id: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keyword arguments for ``model.generate``, public configuration) of a scheme.

    ``scheme="none"`` needs no key and marks nothing; the others refuse a missing key.
    """
    if scheme not in GENERATION_SCHEMES:
        raise ConfigError(f"scheme must be one of {GENERATION_SCHEMES}, got {scheme!r}")
    if scheme == "none":
        if key is not None:
            raise ConfigError("scheme='none' generates without a watermark; do not pass a key")
        return {}, dict(UNWATERMARKED)
    if key is None:
        raise ConfigError(f"the {scheme} watermark needs a key: pass key=WatermarkKey.load(path) "
                          "(make one with `fingerprint keygen`), or scheme='none' for an "
                          "unwatermarked control")
    key = as_key(key)
    h = DEFAULT_CONTEXT_WIDTH[scheme] if context_width is None else context_width
    wm: KGWWatermarkingConfig | GumbelWatermarkingConfig
    if scheme == "kgw":
        wm = KGWWatermarkingConfig(key, gamma=gamma, delta=delta, context_width=h, prf=prf,
                                   pad_token_id=pad_token_id)
    else:
        wm = GumbelWatermarkingConfig(key, context_width=h, prf=prf, pad_token_id=pad_token_id)
    return {"watermarking_config": wm}, wm.config


def _check_sampling_for(scheme: str, sampling: SamplingSettings) -> None:
    if scheme == "gumbel" and sampling.greedy:
        raise ConfigError("greedy decoding (do_sample=False or temperature=0) cannot carry a "
                          "Gumbel watermark; sample (do_sample=True, temperature > 0) or use "
                          "scheme='kgw'")


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def _render(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[str]:
    if chat:
        from fingerprint.models import chat_prompts

        return chat_prompts(tokenizer, list(prompts))
    return list(prompts)


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, not a single string")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompts[{i}] must be a non-empty string, got {p!r}")


def iter_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    key: WatermarkKey | int | str | os.PathLike[str] | None = None,
    scheme: Scheme = "kgw",
    max_new_tokens: int = 256,
    min_new_tokens: int | None = None,
    gamma: float = 0.25,
    delta: float = 2.0,
    context_width: int | None = None,
    prf: str = DEFAULT_PRF,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    chat: bool = True,
    batch_size: int = 8,
    seed: int | None = None,
) -> Iterator[list[GenerationResult]]:
    """Like :func:`generate`, but yields each batch's results (in prompt order) as it finishes."""
    _check_prompts(prompts)
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                do_sample=do_sample, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_sampling_for(scheme, sampling)
    pad = getattr(tokenizer, "pad_token_id", None)
    wm_kwargs, public = make_watermark(scheme, key, gamma=gamma, delta=delta,
                                       context_width=context_width, prf=prf, pad_token_id=pad)
    if pad is None:
        raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its "
                          "eos token) to generate in batches")
    gen_kwargs = {**sampling.generate_kwargs(), **wm_kwargs, "pad_token_id": pad}
    sampling_record = asdict(sampling)
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        enc = tokenizer(_render(tokenizer, batch, chat), return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=not chat)
        enc = {k: v.to(device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed + start)  # each batch reproducible on its own
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kwargs)
        width = enc["input_ids"].shape[1]
        results = []
        for b, prompt in enumerate(batch):
            ids = out[b, width:].tolist()
            stop = next((i for i, t in enumerate(ids) if t in eos), None)
            ids = ids if stop is None else ids[:stop + 1]
            mask = enc["attention_mask"][b].bool()
            results.append(GenerationResult(
                prompt=prompt,
                completion=tokenizer.decode(ids, skip_special_tokens=True),
                completion_ids=ids,
                prompt_ids=enc["input_ids"][b][mask].tolist(),
                watermark=dict(public),
                sampling=dict(sampling_record),
            ))
        yield results


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    key: WatermarkKey | int | str | os.PathLike[str] | None = None,
    scheme: Scheme = "kgw",
    max_new_tokens: int = 256,
    min_new_tokens: int | None = None,
    gamma: float = 0.25,
    delta: float = 2.0,
    context_width: int | None = None,
    prf: str = DEFAULT_PRF,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    chat: bool = True,
    batch_size: int = 8,
    seed: int | None = None,
) -> list[GenerationResult]:
    """Generate watermarked completions of ``prompts`` (a list of strings), in order.

    ``scheme``: ``"kgw"`` (green lists, ``gamma``/``delta`` added to the processed logits;
    works with greedy decoding too),
    ``"gumbel"`` (distortion-free; needs sampling) or ``"none"`` (no watermark, no key).
    ``context_width`` defaults to 2 for KGW and 4 for Gumbel. ``chat=True`` applies the
    tokenizer's chat template. ``seed`` seeds torch's global RNG before each batch.
    """
    return [r for batch in iter_generate(
        model, tokenizer, prompts, key=key, scheme=scheme, max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens, gamma=gamma, delta=delta, context_width=context_width,
        prf=prf, temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample,
        chat=chat, batch_size=batch_size, seed=seed) for r in batch]


# -- prompts files and resumable results files ----------------------------------------------------
@dataclass(frozen=True)
class PromptLine:
    """A prompt read from a JSONL file, identified by its line number and text hash."""

    line: int
    prompt: str

    @property
    def sha256(self) -> str:
        """The SHA-256 of the prompt text (hex); with :attr:`line` it identifies the prompt."""
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


def read_prompts(path: str | os.PathLike[str]) -> tuple[list[PromptLine], list[str]]:
    """(valid prompts, one message per broken line) from a JSONL file of ``{"prompt": ...}``.

    Blank lines are skipped; a line that is not a JSON object with a non-empty string
    ``"prompt"`` is reported as ``path:LINE: reason`` and left out.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise InputError(f"prompts file {path} is not UTF-8 text: {err}") from None
    prompts: list[PromptLine] = []
    errors: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 etc.
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{number}: not valid JSON ({err.msg})")
            continue
        prompt = obj.get("prompt") if isinstance(obj, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(f'{path}:{number}: expected an object with a non-empty string "prompt"')
            continue
        prompts.append(PromptLine(number, prompt))
    return prompts, errors


def _read_done(out: Path) -> tuple[dict[int, dict[str, Any]], str | None]:
    """(records already in ``out`` by prompt line, a note if a truncated last line was dropped).

    A run appends one line per result and flushes it, so only the last line can be cut short (a
    kill during a write): it is removed so that its prompt is done again. Anything else that
    does not parse is an error: the file is not one this command wrote.
    """
    if not out.exists():
        return {}, None
    data = out.read_bytes()
    note = None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail.strip():
        try:
            json.loads(tail)
            with out.open("ab") as f:  # complete but unterminated: terminate it
                f.write(b"\n")
            lines.append(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            with out.open("r+b") as f:
                f.truncate(len(data) - len(tail))
            note = f"{out}: dropped a truncated last line; its prompt will be generated again"
    done: dict[int, dict[str, Any]] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            line, sha = rec["line"], rec["prompt_sha256"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            line = sha = None
        if not isinstance(line, int) or not isinstance(sha, str):
            raise InputError(f"{out}:{number} is not a result line written by `fingerprint "
                             "generate`; pass a new --out file")
        if line in done:
            raise InputError(f"{out}: prompt line {line} appears twice (lines {number} and "
                             "earlier); the file was edited or written by two runs at once")
        done[line] = rec
    return done, note


def _check_resume(done: dict[int, dict[str, Any]], prompts: list[PromptLine], out: Path,
                  settings: dict[str, Any]) -> None:
    by_line = {p.line: p for p in prompts}
    for line, rec in done.items():
        p = by_line.get(line)
        if p is None or rec["prompt_sha256"] != p.sha256:
            raise InputError(f"{out} holds a result for prompt line {line}, which is missing or "
                             "different in the prompts file now; write to a new --out file")
        for name, want in settings.items():
            if rec.get(name) != want:
                raise ConfigError(
                    f"{out} was written with a different {name} ({rec.get(name)!r}, now "
                    f"{want!r}); resume with the same settings or write to a new --out file")


def generate_jsonl(
    model: Any,
    tokenizer: Any,
    prompts_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    model_name: str = "default",
    max_prompts: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, int]:
    """Generate a completion for every prompt of a JSONL file into a JSONL results file.

    Resumable: each result is appended and flushed as its batch finishes, keyed by the prompt's
    line number and SHA-256; a rerun skips the prompts already done, redoes one whose line was
    cut short by a kill, and refuses a results file made with other settings. ``max_prompts``
    stops after that many new results. ``options`` are :func:`generate`'s keywords. Returns
    counts: ``total``, ``done_before``, ``generated``, ``broken_lines``.
    """
    from tqdm import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr))
    prompts, errors = read_prompts(prompts_path)
    for msg in errors:
        log(f"warning: skipping {msg}")
    if not prompts:
        raise InputError(f"{prompts_path} holds no valid prompt")
    if max_prompts is not None and (isinstance(max_prompts, bool)
                                    or not isinstance(max_prompts, int) or max_prompts < 0):
        raise ConfigError(f"max_prompts must be a non-negative integer, got {max_prompts!r}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = options.pop("key", None)
    key = None if key is None else as_key(key)
    scheme = options.get("scheme", "kgw")
    _, public = make_watermark(
        scheme, key, gamma=options.get("gamma", 0.25), delta=options.get("delta", 2.0),
        context_width=options.get("context_width"), prf=options.get("prf", DEFAULT_PRF))
    sampling_keys = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k",
                     "top_p", "seed")
    defaults = SamplingSettings()
    checked = SamplingSettings(**{k: options.get(k, getattr(defaults, k)) for k in sampling_keys})
    _check_sampling_for(scheme, checked)
    sampling = asdict(checked)
    settings = {"watermark": public, "sampling": sampling, "model": model_name,
                "chat": options.get("chat", True)}
    done, note = _read_done(out)
    if note:
        log(f"warning: {note}")
    _check_resume(done, prompts, out, settings)
    pending = [p for p in prompts if p.line not in done]
    if max_prompts is not None:
        pending = pending[:max_prompts]
    generated = 0
    n_done = sum(p.line in done for p in prompts)
    bar = tqdm(total=len(prompts), initial=n_done, unit="prompt", disable=not progress,
               file=sys.stderr)
    try:
        with out.open("a", encoding="utf-8") as f:
            batches = iter_generate(model, tokenizer, [p.prompt for p in pending], key=key,
                                    **options)
            offset = 0
            for results in batches:
                for p, r in zip(pending[offset:offset + len(results)], results, strict=True):
                    rec = {"line": p.line, "prompt_sha256": p.sha256, "prompt": r.prompt,
                           "completion": r.completion,
                           "completion_token_ids": r.completion_ids,
                           "prompt_token_ids": r.prompt_ids, **settings}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                offset += len(results)
                generated += len(results)
                bar.update(len(results))
    finally:
        bar.close()
    return {"total": len(prompts), "done_before": len(done), "generated": generated,
            "broken_lines": len(errors)}


__all__ = [
    "GENERATION_SCHEMES",
    "GenerationResult",
    "PromptLine",
    "SamplingSettings",
    "generate",
    "generate_jsonl",
    "iter_generate",
    "make_watermark",
    "read_prompts",
]
