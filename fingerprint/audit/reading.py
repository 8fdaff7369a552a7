"""The open-model audit ("reading mode"): read the teacher's watermarked text through the suspect.

With the suspect's weights, no generation is needed. Each chunk of the provider's watermarked
corpus is teacher-forced through the suspect; at every position its top prediction is scored as
the tuple (window from the text, predicted token). A model trained on watermarked text has
learned to prefer the key's green (or high-Gumbel) tokens after the watermark's windows, so its
predictions are green more often than chance (Sander et al., NeurIPS 2024).

Two traps are avoided:

* a window already seen earlier in the same chunk is skipped: the model can copy its next token
  from the context, which says nothing about training;
* tuples are deduplicated globally, so frequent phrases count once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fingerprint.audit.controls import (
    AUDIT_NULL,
    AuditResult,
    control_warnings,
    run_controls,
)
from fingerprint.core.contexts import tuple_keys
from fingerprint.detect.calibrate import ScoredBatch
from fingerprint.detect.corpus import CorpusReader, Skipped
from fingerprint.detect.detector import (
    Detector,
    DetectorConfig,
    insert_prompt_gap,
    pack_batches,
)
from fingerprint.detect.tuples import first_in_row
from fingerprint.errors import ConfigError, InputError, TokenIdError
from fingerprint.keys import WatermarkKey


@dataclass(frozen=True)
class TeacherText:
    """One watermarked teacher completion and the prompt it answered (token ids).

    ``source`` and ``row`` say where it was read from (file and 1-based row), when known.
    """

    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    source: str | None = None
    row: int | None = None


def ids_outside(ids: Sequence[int], vocab_size: int | None) -> bool:
    """True when some id is negative or, given ``vocab_size``, not below it."""
    if not len(ids):
        return False
    arr = np.asarray(ids, dtype=np.int64)
    return bool(arr.min() < 0 or (vocab_size is not None and arr.max() >= vocab_size))


def split_out_of_vocab(teacher: Sequence[TeacherText], vocab_size: int | None
                       ) -> tuple[list[TeacherText], list[Skipped]]:
    """The texts whose prompt and completion ids all lie in ``[0, vocab_size)``, and the others
    as skipped rows (such ids cannot be the suspect's tokens: a wrong tokenizer or a corrupt
    file). ``vocab_size`` None checks for negative ids only."""
    keep: list[TeacherText] = []
    skipped: list[Skipped] = []
    bound = "0" if vocab_size is None else f"[0, {vocab_size})"
    for i, t in enumerate(teacher):
        if ids_outside(t.prompt_ids, vocab_size) or ids_outside(t.completion_ids, vocab_size):
            reason = (f"token ids outside {bound}: wrong tokenizer?" if vocab_size is not None
                      else "negative token ids")
            known = t.source is not None and t.row is not None
            skipped.append(Skipped(t.source if known else "", t.row if known else i, reason))
        else:
            keep.append(t)
    return keep, skipped


def read_teacher(path: str | os.PathLike[str], vocab_size: int | None = None
                 ) -> tuple[list[TeacherText], list[Skipped]]:
    """The teacher's watermarked corpus: token ids per row (``completion_token_ids``, with
    ``prompt_token_ids`` when present), in file order, as written by ``fingerprint generate``.

    Unreadable rows are returned as skipped, and so are rows with negative ids or, given
    ``vocab_size``, ids not below it; a row holding text instead of ids is refused: audits
    need the teacher's exact tokens.
    """
    reader = CorpusReader([Path(path)])
    out = []
    for rec in reader:
        if rec.ids is None:
            raise InputError(f"{rec.source} row {rec.row} holds text, not token ids: the "
                             "teacher corpus must hold the watermarked token ids")
        out.append(TeacherText(list(rec.prompt_ids or []), list(rec.ids), rec.source, rec.row))
    out, bad = split_out_of_vocab(out, vocab_size)
    skipped = sorted(reader.skipped + bad, key=lambda s: s.row)
    if not out:
        first = f"; first skipped: row {skipped[0].row}: {skipped[0].reason}" if skipped else ""
        raise InputError(f"{path} holds no usable teacher text (need completion_token_ids"
                         f"{'' if vocab_size is None else f' inside [0, {vocab_size})'}; "
                         f"{len(skipped)} rows skipped{first})")
    return out, skipped


def where(s: Skipped) -> str:
    """``file row N`` for a row read from a file, else ``teacher text I`` (0-based position)."""
    return f"{s.source} row {s.row}" if s.source else f"teacher text {s.row}"


def vocab_warning(skipped: Sequence[Skipped], limit: int = 20) -> str:
    """One warning listing teacher rows left out for ids outside the vocabulary."""
    rows = ", ".join(where(s) for s in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (f"{len(skipped)} teacher texts not used, their token ids lie outside the "
            f"vocabulary ({skipped[0].reason}): {rows}{more}")


def suspect_vocab_size(model: Any) -> int:
    """The width of the suspect's output layer."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


@torch.no_grad()
def predict_topk(model: Any, x: np.ndarray, mask: np.ndarray | None, k: int = 1,
                 chunk: int = 128) -> np.ndarray:
    """Top-``k`` next-token predictions at every position: int64 [B, T, k] (position t holds
    the model's guess for token t, i.e. from logits at t - 1; position 0 holds -1).

    The output layer is applied to slices of positions, so memory stays bounded by
    ``B * chunk * V`` logits whatever the sequence length.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(x, device=device)
    att = torch.ones_like(ids) if mask is None else torch.as_tensor(mask, device=device).long()
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    hidden = base(input_ids=ids, attention_mask=att).last_hidden_state
    head = model.get_output_embeddings()
    out = torch.full((*ids.shape, k), -1, dtype=torch.int64)
    for s in range(0, ids.shape[1] - 1, chunk):
        e = min(ids.shape[1] - 1, s + chunk)
        logits = head(hidden[:, s:e]).float()
        out[:, s + 1 : e + 1] = logits.topk(k, dim=-1).indices.cpu()
    return out.numpy()


def seen_window_earlier(x: np.ndarray, h: int, mask: np.ndarray | None) -> np.ndarray:
    """True where a position's window already occurred earlier in the same row."""
    return ~first_in_row(*tuple_keys(x, h, with_token=False, mask=mask))


def audit_open(
    model: Any,
    teacher: Sequence[TeacherText],
    key: WatermarkKey | int | str,
    config: DetectorConfig | None = None,
    *,
    vocab_size: int,
    top_k: int = 1,
    batch_tokens: int = 4096,
    max_length: int = 1024,
    n_controls: int = 100,
    seed: int | None = None,
    progress: bool = False,
    suspect_info: dict[str, Any] | None = None,
    inputs_info: dict[str, Any] | None = None,
) -> AuditResult:
    """Audit a suspect with weights against the teacher corpus; exact test plus controls.

    ``vocab_size`` is the teacher's vocabulary; a suspect with another vocabulary is refused
    (auditing across tokenizers is not supported yet).
    """
    cfg = config or DetectorConfig()
    if top_k < 1:
        raise ConfigError("top_k must be at least 1")
    width = suspect_vocab_size(model)
    if width != vocab_size:
        raise InputError(
            f"the suspect's vocabulary has {width} entries, the teacher's {vocab_size}: the audit "
            "needs the suspect to use the teacher's tokenizer (cross-tokenizer audits are not "
            "supported yet)")
    if n_controls < 1:
        raise ConfigError(f"n_controls must be at least 1, got {n_controls}")
    if not teacher:
        raise InputError("the teacher corpus is empty")
    teacher, dropped = split_out_of_vocab(teacher, vocab_size)
    if not teacher:
        raise TokenIdError(f"no teacher text has all its token ids inside [0, {vocab_size}), "
                           f"the suspect's vocabulary ({where(dropped[0])} is the first): was "
                           "the corpus made with another tokenizer?")
    det = Detector(key, cfg)
    state = det.new_state()
    scored: list[ScoredBatch] = []
    curve: list[tuple[int, float]] = []
    t_forward = t_score = 0.0
    rows_per_batch = max(1, batch_tokens // max_length)
    bar = tqdm(total=len(teacher), desc="reading teacher text", disable=not progress)
    for i in range(0, len(teacher), rows_per_batch):
        part = teacher[i : i + rows_per_batch]
        prompts = [np.asarray(t.prompt_ids, dtype=np.int64)[-max_length // 2 :] for t in part]
        comps = [np.asarray(t.completion_ids, dtype=np.int64)[: max_length - len(p)]
                 for t, p in zip(part, prompts, strict=True)]
        for x, mask, start in pack_batches(comps, prompts):
            t0 = time.perf_counter()
            topk = predict_topk(model, x, mask, top_k)  # the model reads the rows unbroken
            t1 = time.perf_counter()
            no_guess = np.zeros(x.shape, dtype=bool)
            no_guess[:, 0] = True  # position 0 has no prediction
            # the windows are the generation's: without prompt context, a gap of -1 entries
            x, mask, start, topk, no_guess = insert_prompt_gap(x, mask, start, cfg.prompt_gap,
                                                               topk, no_guess)
            exclude = seen_window_earlier(x, cfg.h, mask) | no_guess
            for j in range(top_k):
                cand = topk[:, :, j].copy()
                cand[cand < 0] = 0  # position 0 (excluded) has no prediction
                out = det.update(state, x, mask=mask, score_from=start, candidates=cand,
                                 exclude=exclude, vocab_size=vocab_size, return_values=True)
                assert out is not None
                scored.append(ScoredBatch(x, mask, out[0], cand))
            t_forward += t1 - t0
            t_score += time.perf_counter() - t1
        curve.append((state.suff.n_scored, det.result(state).log10_pvalue))
        bar.update(len(part))
    bar.close()
    real = det.result(state)
    t0 = time.perf_counter()
    controls = run_controls(scored, cfg, real, n_keys=n_controls, seed=seed, progress=progress)
    t_controls = time.perf_counter() - t0
    return AuditResult(
        mode="open", null_hypothesis=AUDIT_NULL, detection=real, controls=controls,
        config={**cfg.to_dict(), "top_k": top_k, "max_length": max_length},
        suspect=suspect_info or {}, inputs=inputs_info or {"teacher_texts": len(teacher)},
        curve=curve, timing={"forward_s": t_forward, "scoring_s": t_score,
                             "controls_s": t_controls},
        warnings=control_warnings(controls) + ([vocab_warning(dropped)] if dropped else []))


__all__ = ["TeacherText", "audit_open", "ids_outside", "predict_topk", "read_teacher",
           "seen_window_earlier", "split_out_of_vocab", "suspect_vocab_size", "vocab_warning"]
