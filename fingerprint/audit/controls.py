"""Built-in controls: the audit's tuples scored under random keys, and the audit result.

A radioactivity audit's p-value is only as good as its null. Every audit therefore scores the
very same tuples under ``M`` random keys (default 100). Under H0 the real key is just one more
random key, so:

* the control p-values must look uniform (KS test) and their FPR must sit at its level: if not,
  the tuples are not independent evidence (repetition, a dedup policy that is off) and the audit
  says so loudly;
* the rank of the real key's statistic among the controls gives an empirical p-value,
  ``(1 + #{controls >= real}) / (M + 1)``, valid without any distributional assumption
  (though it cannot go below ``1 / (M + 1)``).

The keys come from a seed, drawn when none is given and recorded with the result, so that the
controls can always be recomputed (``fingerprint verify``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fingerprint.detect.calibrate import (
    ScoredBatch,
    null_summary,
    random_keys,
    results_under_keys,
)
from fingerprint.detect.detector import DetectionResult, DetectorConfig
from fingerprint.errors import ConfigError


@dataclass(frozen=True)
class ControlsResult:
    """Where the real key's statistic falls among ``n_keys`` random keys on the same tuples."""

    n_keys: int
    statistics: list[float]
    log10_pvalues: list[float]
    empirical_pvalue: float
    ks_statistic: float
    ks_pvalue: float
    fpr_at_001: float
    calibrated: bool
    seed: int | None = None  # the seed of the control keys (random_keys(n_keys, seed))


@dataclass(frozen=True)
class AuditResult:
    """The outcome of a radioactivity audit, ready to be rendered and signed as a report."""

    mode: str  # "open" (reading the teacher's text through the suspect) or "closed" (querying)
    null_hypothesis: str
    detection: DetectionResult
    controls: ControlsResult
    config: dict[str, Any]
    suspect: dict[str, Any]
    inputs: dict[str, Any]
    curve: list[tuple[int, float]]  # (tuples scored so far, log10 p) after each batch
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def pvalue(self) -> float:
        """The exact p-value of the real key's test."""
        return self.detection.pvalue

    @property
    def log10_pvalue(self) -> float:
        """log10 of :attr:`pvalue`, exact even where the p-value underflows."""
        return self.detection.log10_pvalue

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        return asdict(self)


# Fewest control keys an audit run from the command line accepts. Below it the controls say
# little: the empirical p-value cannot go below 1 / (M + 1) (0.05 at M = 19), and the KS test of
# the controls' p-values against U(0, 1) at level 0.01 (the calibration check) misses all but
# gross dependence. 100 (the default) or more is the advice.
MIN_CONTROLS = 20

AUDIT_NULL = ("the suspect model was not trained on text carrying this watermark key: its "
              "predictions are independent of the key")


def run_controls(
    batches: Sequence[ScoredBatch],
    config: DetectorConfig,
    real: DetectionResult,
    *,
    n_keys: int = 100,
    seed: int | None = None,
    progress: bool = False,
) -> ControlsResult:
    """Score ``batches`` under ``n_keys`` random keys and compare the real key's statistic.

    The keys are drawn from ``seed``; without one a seed is drawn and recorded in the result.
    """
    if n_keys < 1:
        raise ConfigError(f"the controls need at least one random key, got n_keys={n_keys}")
    if seed is None:
        seed = secrets.randbits(63)
    results = results_under_keys(batches, config, random_keys(n_keys, seed),
                                 progress="control keys" if progress else None)
    stat = np.array([r.statistic for r in results])
    logps = [r.log10_pvalue for r in results]
    emp = (1 + int(np.count_nonzero(stat >= real.statistic))) / (n_keys + 1)
    summary = null_summary(results, config, (0.01,), seed)
    return ControlsResult(
        n_keys=n_keys, statistics=stat.tolist(), log10_pvalues=logps, empirical_pvalue=emp,
        ks_statistic=float(summary.ks_statistic), ks_pvalue=float(summary.ks_pvalue),
        fpr_at_001=float(summary.fpr[0]), calibrated=bool(summary.calibrated), seed=seed)


def control_warnings(controls: ControlsResult) -> list[str]:
    """Loud, plain-language warnings when the controls fail calibration."""
    if controls.calibrated:
        return []
    return [
        f"CONTROLS FAILED CALIBRATION: under {controls.n_keys} random keys the p-values are not "
        f"uniform (KS p = {controls.ks_pvalue:.2g}, FPR at 0.01 = {controls.fpr_at_001:.3f}). "
        "The scored tuples are not independent evidence; do not rely on this audit's p-value "
        "(check dedup and repeated text)."
    ]


__all__ = ["AUDIT_NULL", "MIN_CONTROLS", "AuditResult", "ControlsResult", "control_warnings",
           "run_controls"]
