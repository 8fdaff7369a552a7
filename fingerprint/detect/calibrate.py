"""Calibration: the detector's p-values under many random keys on text no key touched.

vLLM's own documentation warns that the real false-positive rate depends on the key and on
repeated structure in the text. This module measures it: score a corpus under ``M`` fresh random
keys, then report the empirical FPR at chosen levels (with a Clopper-Pearson interval) and a KS
test of the p-values against U(0, 1). The tuples scored (prompt, dedup) do not depend on the key,
so they are selected once and only the PRF values are recomputed per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from fingerprint import stats
from fingerprint.core import prf_class
from fingerprint.core.contexts import windows_at
from fingerprint.detect.detector import (
    DetectionResult,
    Detector,
    DetectorConfig,
    Sufficient,
    as_sequences,
    count_candidates,
    pack_batches,
)
from fingerprint.detect.tuples import TupleSet, select_positions
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey


@dataclass(frozen=True)
class CalibrationReport:
    """P-values of ``n_keys`` random keys on one corpus, and their calibration summary."""

    config: dict
    n_keys: int
    n_scored: int
    log10_pvalues: list[float]
    summary: stats.CalibrationResult

    @property
    def calibrated(self) -> bool:
        """Every level's empirical FPR is within its interval and KS does not reject."""
        return bool(self.summary.calibrated)

    def to_dict(self) -> dict:
        """Plain JSON-serializable form."""
        return {"config": self.config, "n_keys": self.n_keys, "n_scored": self.n_scored,
                "log10_pvalues": self.log10_pvalues, "summary": self.summary.to_dict(),
                "calibrated": self.calibrated}


@dataclass(frozen=True)
class ScoredBatch:
    """One batch of a corpus, ready for scoring under any key: the tuples are fixed.

    ``selected`` marks the positions to score (after prompt handling and dedup, which do not
    depend on the key); ``candidates`` are the scored tokens when they differ from ``tokens``.
    """

    tokens: np.ndarray
    mask: np.ndarray | None
    selected: np.ndarray
    candidates: np.ndarray | None = None


def selected_pairs(batches: Sequence[ScoredBatch], h: int) -> tuple[np.ndarray, np.ndarray]:
    """Every scored tuple of ``batches``, flat: (windows int64 [N, h], tokens int64 [N])."""
    ctxs, toks = [np.empty((0, h), dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for b in batches:
        sel = np.asarray(b.selected, dtype=bool)
        if not sel.any():
            continue
        ctx, tok = windows_at(b.tokens, h, b.mask, sel)
        ctxs.append(ctx)
        toks.append(tok if b.candidates is None else
                    np.asarray(b.candidates, dtype=np.int64).reshape(sel.shape)[sel])
    return np.concatenate(ctxs), np.concatenate(toks)


def results_under_keys(
    batches: Sequence[ScoredBatch],
    config: DetectorConfig,
    keys: Iterable[WatermarkKey],
    *,
    n_positions: int = 0,
    progress: str | None = None,
) -> list[DetectionResult]:
    """The exact test of the same tuples under each key (for calibration and audit controls).

    The tuples do not depend on the key, so they are gathered once; each key then scores only
    them, not the batches they came from.
    """
    ctx, tok = selected_pairs(batches, config.h)
    everything = np.ones(tok.shape[0], dtype=bool)
    out = []
    for key in tqdm(list(keys), desc=progress, disable=progress is None):
        det = Detector(key, config)
        total = det._reduce(det.pair_values(ctx, tok), everything, 0) if tok.size else Sufficient()
        total.n_positions = n_positions
        out.append(det.test(total))
    return out


def null_summary(results: Sequence[DetectionResult], config: DetectorConfig,
                 alphas: Sequence[float] = (0.01, 0.05), seed: int | None = None
                 ) -> stats.CalibrationResult:
    """Calibration summary (FPR per alpha, KS against U(0, 1)) of results under random keys.

    KGW's exact binomial p-value is discrete: under the null P(p <= a) <= a, with coarse steps
    when few tuples are scored, and a KS test against U(0, 1) then rejects a valid test. The
    check uses the randomized p-value P(X > g) + V P(X = g) instead, with V ~ U(0, 1) drawn
    independently (from ``seed``), which is exactly U(0, 1) under the null. Only the check
    uses it: reported p-values stay the exact, non-randomized ones. Gumbel's Gamma tail is
    continuous and is used as it is.
    """
    pvals = np.array([stats.log10_to_pvalue(r.log10_pvalue) for r in results])
    if config.scheme == "kgw" and len(results):
        gamma = prf_class(config.prf).green_probability(config.gamma)
        g = np.array([r.n_green or 0 for r in results])
        n = np.array([r.n_scored for r in results])
        import scipy.stats  # here: importing it costs most of a second, and workers never call this

        # P(X > g) = P(X >= g) - P(X = g): float64 is plenty for a uniformity check
        above = np.clip(pvals - scipy.stats.binom.pmf(g, n, gamma), 0.0, 1.0)
        v = np.random.default_rng(None if seed is None else [seed, 0x9A11]).random(len(results))
        pvals = np.clip(above + v * (pvals - above), 0.0, 1.0)
    return stats.calibration_summary(pvals, alphas=tuple(alphas))


def random_keys(n: int, seed: int | None = None) -> list[WatermarkKey]:
    """``n`` fresh random keys; a ``seed`` makes them reproducible (for tests and controls)."""
    if seed is None:
        return [WatermarkKey.generate() for _ in range(n)]
    rng = np.random.default_rng(seed)
    return [WatermarkKey(rng.bytes(32)) for _ in range(n)]


def calibrate(
    sequences: Iterable[Sequence[int] | np.ndarray],
    config: DetectorConfig | None = None,
    *,
    prompts: Iterable[Sequence[int] | np.ndarray] | None = None,
    n_keys: int = 500,
    alphas: Sequence[float] = (0.01, 0.05),
    seed: int | None = None,
    progress: bool = False,
) -> CalibrationReport:
    """Score ``sequences`` under ``n_keys`` random keys; summarize the p-values.

    ``seed`` makes the keys reproducible (testing only: real keys come from the OS CSPRNG).
    """
    cfg = config or DetectorConfig()
    if n_keys < 2:
        raise ConfigError("calibration needs at least 2 random keys")
    seqs = as_sequences(sequences, "sequences")
    proms = None if prompts is None else as_sequences(prompts, "prompts")
    batches = list(pack_batches(seqs, proms, cfg.prompt_gap))
    seen = TupleSet()
    selections = [select_positions(x, cfg.h, mask=m, score_from=s, dedup=cfg.dedup, seen=seen,
                                   skip_prompt_windows=cfg.skip_prompt_windows)
                  for x, m, s in batches]
    n_pos = sum(count_candidates(x, m, s) for x, m, s in batches)
    scored = [ScoredBatch(x, m, sel) for (x, m, _), sel in zip(batches, selections, strict=True)]
    results = results_under_keys(scored, cfg, random_keys(n_keys, seed), n_positions=n_pos,
                                 progress="calibration keys" if progress else None)
    n_scored = int(sum(int(s.sum()) for s in selections))
    return CalibrationReport(cfg.to_dict(), n_keys, n_scored, [r.log10_pvalue for r in results],
                             null_summary(results, cfg, alphas, seed))


__all__ = ["CalibrationReport", "ScoredBatch", "calibrate", "null_summary", "random_keys",
           "results_under_keys", "selected_pairs"]
