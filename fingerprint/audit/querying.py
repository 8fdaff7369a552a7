"""The closed-model audit: query the suspect with the provider's prompts and score its answers.

Without weights, the evidence is in what the suspect writes. Its answers are tokenized with the
teacher's tokenizer and scored like any text, with three guards from the radioactivity
literature (Sander et al., NeurIPS 2024):

* each distinct (window, token) counts once across all answers (global dedup);
* a window that occurs in the prompt is not scored: text copied from the prompt says nothing
  about training;
* optionally (the filter phi), only windows that occur in the teacher's watermarked corpus, the
  ``top_n`` most frequent ones, are scored: those are where a distilled student's habits show.

Answers are checkpointed as they arrive (:func:`~fingerprint.audit.clients.query_with_checkpoint`);
failed queries are listed in the result, never silently dropped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.audit.clients import Answer, SuspectClient, query_with_checkpoint
from fingerprint.audit.controls import AUDIT_NULL, AuditResult, control_warnings, run_controls
from fingerprint.audit.reading import TeacherText, split_out_of_vocab, vocab_warning
from fingerprint.core.contexts import tuple_keys
from fingerprint.detect.calibrate import ScoredBatch
from fingerprint.detect.corpus import Skipped
from fingerprint.detect.detector import Detector, DetectorConfig, pack_batches
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.detect.text import encode_text
from fingerprint.detect.tuples import TupleSet, in_row_set
from fingerprint.errors import ConfigError, InputError, TokenIdError
from fingerprint.keys import WatermarkKey


def window_filter(teacher: Sequence[TeacherText], h: int, top_n: int | None = None) -> TupleSet:
    """The filter phi: the windows of the teacher's completions (the ``top_n`` most frequent)."""
    seqs = [np.asarray(t.completion_ids, dtype=np.int64) for t in teacher]
    his, los = [], []
    for x, mask, _ in pack_batches(seqs, None):
        hi, lo = tuple_keys(x, h, with_token=False, mask=mask)
        keep = np.ones(x.shape, dtype=bool) if mask is None else mask
        his.append(hi[keep])
        los.append(lo[keep])
    if not his:
        raise InputError("the teacher corpus is empty: the filter phi needs its windows")
    hi, lo = np.concatenate(his), np.concatenate(los)
    keys = np.stack([hi, lo], axis=1)
    uniq, counts = np.unique(keys, axis=0, return_counts=True)
    if top_n is not None:
        if top_n < 1:
            raise ConfigError("top_n must be at least 1")
        order = np.argsort(-counts, kind="stable")[:top_n]
        uniq = uniq[order]
    out = TupleSet()
    out.add(uniq[:, 0], uniq[:, 1])
    return out


def _windows_in(reference: TupleSet, x: np.ndarray, h: int, mask: np.ndarray | None
                ) -> np.ndarray:
    hi, lo = tuple_keys(x, h, with_token=False, mask=mask)
    return reference.contains(hi, lo).reshape(x.shape)


def _prompt_windows(x: np.ndarray, mask: np.ndarray | None, h: int,
                    prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """[B, T] True where an answer's window is one made of its own prompt's tokens only."""
    width = max((len(p) for p in prompts), default=0) + 1
    lens = np.array([len(p) + 1 if len(p) else 0 for p in prompts])
    pm = np.zeros((x.shape[0], width), dtype=np.int64)
    for r, p in enumerate(prompts):  # rows, not tokens: each prompt plus one slot past its end
        pm[r, : len(p)] = p
    p_hi, p_lo = tuple_keys(pm, h, with_token=False)
    a_hi, a_lo = tuple_keys(x, h, with_token=False, mask=mask)
    members = np.zeros((x.shape[0], width + x.shape[1]), dtype=bool)
    members[:, :width] = np.arange(width)[None, :] < lens[:, None]
    hit = in_row_set(np.concatenate([p_hi, a_hi], axis=1), np.concatenate([p_lo, a_lo], axis=1),
                     members)
    return hit[:, width:]


def audit_closed(
    client: SuspectClient,
    prompts: Sequence[str],
    key: WatermarkKey | int | str,
    config: DetectorConfig | None = None,
    *,
    tokenizer: Any,
    checkpoint: str | Path,
    teacher: Sequence[TeacherText] | None = None,
    filter_top_n: int | None = None,
    normalize: NormalizeConfig | None = None,
    n_controls: int = 100,
    seed: int | None = None,
    progress: bool = False,
    inputs_info: dict[str, Any] | None = None,
) -> AuditResult:
    """Query ``client`` with ``prompts`` (resumable), then test its answers under ``key``.

    ``teacher`` enables the filter phi (only windows of the teacher's corpus are scored;
    ``filter_top_n`` keeps the most frequent ones).
    """
    cfg = config or DetectorConfig()
    h = cfg.h
    if n_controls < 1:
        raise ConfigError(f"n_controls must be at least 1, got {n_controls}")
    vocab = len(tokenizer)
    dropped: list[Skipped] = []
    if teacher is not None:
        teacher, dropped = split_out_of_vocab(teacher, vocab)
        if not teacher:
            raise TokenIdError(f"no teacher text has all its token ids inside [0, {vocab}), the "
                               "tokenizer's vocabulary: the filter phi has no windows")
    t0 = time.perf_counter()
    answers = query_with_checkpoint(client, list(prompts), Path(checkpoint), progress=progress)
    t_query = time.perf_counter() - t0
    failed = [a for a in answers if a.error is not None]
    phi = window_filter(teacher, h, filter_top_n) if teacher is not None else None
    det = Detector(key, cfg)
    state = det.new_state()
    scored: list[ScoredBatch] = []
    curve: list[tuple[int, float]] = []
    t1 = time.perf_counter()
    usable: list[Answer] = [a for a in answers if a.error is None and a.text.strip()]
    for i in range(0, len(usable), 256):
        part = usable[i : i + 256]
        comps = [encode_text(a.text, tokenizer, normalize=normalize).ids for a in part]
        offset = 0
        for x, mask, _ in pack_batches(comps, None):
            rows, offset = part[offset : offset + x.shape[0]], offset + x.shape[0]
            exclude = _prompt_windows(x, mask, h, [
                tokenizer(a.prompt, add_special_tokens=False)["input_ids"] for a in rows])
            if phi is not None:
                exclude |= ~_windows_in(phi, x, h, mask)
            out = det.update(state, x, mask=mask, exclude=exclude, vocab_size=vocab,
                             return_values=True)
            assert out is not None
            scored.append(ScoredBatch(x, mask, out[0]))
        curve.append((state.suff.n_scored, det.result(state).log10_pvalue))
    real = det.result(state)
    t2 = time.perf_counter()
    controls = run_controls(scored, cfg, real, n_keys=n_controls, seed=seed, progress=progress)
    warnings = control_warnings(controls) + ([vocab_warning(dropped)] if dropped else [])
    if failed:
        warnings.append(f"{len(failed)} of {len(answers)} queries failed after retries and are "
                        f"not scored: prompt indices {[a.index for a in failed][:50]}")
    empty = len(answers) - len(failed) - len(usable)
    info = {"prompts": len(prompts), "answers": len(answers), "failed_queries":
            [{"index": a.index, "error": a.error} for a in failed], "empty_answers": empty,
            "filter_phi": None if phi is None else {"windows": len(phi), "top_n": filter_top_n},
            **(inputs_info or {})}
    return AuditResult(
        mode="closed", null_hypothesis=AUDIT_NULL, detection=real, controls=controls,
        config={**cfg.to_dict(), "filter_top_n": filter_top_n,
                "exclude_prompt_windows": True},
        suspect=client.identity(), inputs=info, curve=curve,
        timing={"query_s": t_query, "scoring_s": t2 - t1,
                "controls_s": time.perf_counter() - t2},
        warnings=warnings)


__all__ = ["audit_closed", "window_filter"]
