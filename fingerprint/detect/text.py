"""Text in: normalization, tokenization with offsets, and per-token highlighting.

The detector scores token ids, so text must be tokenized with the tokenizer the watermark used.
``encode_text`` normalizes the text first (against cheap character-level evasion, see
:mod:`.normalize`), tokenizes without adding special tokens, keeps each token's character span in
the *original* text (for highlighting), and masks special tokens out of scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fingerprint.detect.detector import DetectionResult, Detector
from fingerprint.detect.normalize import (
    NormalizeConfig,
    normalize_with_offsets,
    original_span,
)
from fingerprint.errors import InputError


@dataclass(frozen=True)
class EncodedText:
    """Token ids of a text and each token's [start, end) span in the original text."""

    ids: np.ndarray
    spans: list[tuple[int, int]]
    special: np.ndarray  # True for special tokens (not scored)
    normalized: str
    truncated: bool


def encode_text(
    text: str,
    tokenizer: Any,
    *,
    normalize: NormalizeConfig | None = None,
    max_tokens: int | None = None,
) -> EncodedText:
    """Normalize and tokenize ``text``; spans refer to the original text."""
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}; decode bytes as UTF-8")
    if not text.strip():
        raise InputError("the text is empty: there is nothing to test")
    cfg = normalize if normalize is not None else NormalizeConfig()
    norm, origin = normalize_with_offsets(text, cfg)
    enc = tokenizer(norm, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = enc.get("offset_mapping") or [(0, 0)] * len(ids)
    truncated = max_tokens is not None and len(ids) > max_tokens
    if truncated:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    spans = [original_span(origin, int(s), int(e), len(text)) for s, e in offsets]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = np.isin(ids, list(special_ids)) if special_ids else np.zeros(len(ids), bool)
    return EncodedText(ids, spans, special, norm, bool(truncated))


def detect_text(
    detector: Detector,
    text: str,
    tokenizer: Any,
    *,
    prompt: str | None = None,
    normalize: NormalizeConfig | None = None,
    max_tokens: int | None = None,
) -> DetectionResult:
    """Test one text; the result's ``token_flags`` carry each token's span for highlighting."""
    vocab = len(tokenizer)
    enc = encode_text(text, tokenizer, normalize=normalize, max_tokens=max_tokens)
    if len(enc.ids) == 0:
        raise InputError("the text has no tokens after normalization")
    p_ids = np.asarray([], dtype=np.int64)
    if prompt:
        p_ids = encode_text(prompt, tokenizer, normalize=normalize).ids
    gap = detector.config.prompt_gap if len(p_ids) else 0  # see pack_batches
    x = np.concatenate([p_ids, np.zeros(gap, np.int64), enc.ids])[None, :]
    mask = np.concatenate([np.ones(len(p_ids), bool), np.zeros(gap, bool), ~enc.special])[None, :]
    first = len(p_ids) + gap  # the completion's first column
    state = detector.new_state()
    out = detector.update(state, x, mask=mask, score_from=[first], vocab_size=vocab,
                          return_values=True)
    assert out is not None
    sel, values = out
    flags = []
    for i, (start, end) in enumerate(enc.spans):
        c = first + i
        item: dict[str, Any] = {"index": i, "token": int(enc.ids[i]), "start": start,
                                "end": end, "scored": bool(sel[0, c])}
        if not enc.special[i]:
            v = float(values[0, c])
            if detector.config.scheme == "kgw":
                item["green"] = v < detector.config.gamma
            else:
                item["score"] = v
        flags.append(item)
    return detector.test(state.suff, flags)


__all__ = ["EncodedText", "detect_text", "encode_text"]
