"""Testing one text or corpus against several keys (rotation, several deployments).

Each key gets its own exact test; the smallest p-value is reported with a family-wise
correction for the number of keys tried. Bonferroni is used: it is valid whatever the
dependence between the tests (they share the text), and for independent keys it is within a
factor ``1 + O(mp)`` of the exact Sidak value, which is also reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fingerprint import stats
from fingerprint.detect.detector import DetectionResult, Detector, DetectorConfig
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey


@dataclass(frozen=True)
class MultiKeyResult:
    """Per-key results, the key that matched best, and a family-wise corrected p-value."""

    pvalue: float
    log10_pvalue: float
    sidak_log10_pvalue: float
    best_index: int
    best_key_id: str
    n_keys: int
    correction: str
    results: list[DetectionResult]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        return asdict(self)


def detect_multikey(
    keys: Sequence[WatermarkKey | int | str],
    sequences: Iterable[Sequence[int] | np.ndarray],
    config: DetectorConfig | None = None,
    *,
    prompts: Iterable[Sequence[int] | np.ndarray] | None = None,
    vocab_size: int | None = None,
) -> MultiKeyResult:
    """Test ``sequences`` under every key; report the best key with a corrected p-value."""
    if not keys:
        raise ConfigError("give at least one key")
    seqs = list(sequences)
    proms = None if prompts is None else list(prompts)
    results = [Detector(k, config).detect(seqs, prompts=proms, vocab_size=vocab_size)
               for k in keys]
    best = int(np.argmin([r.log10_pvalue for r in results]))
    lp = results[best].log10_pvalue
    corrected = stats.combine_bonferroni_log10(lp, len(keys))
    return MultiKeyResult(
        pvalue=stats.log10_to_pvalue(corrected), log10_pvalue=corrected,
        sidak_log10_pvalue=stats.combine_sidak_log10(lp, len(keys)), best_index=best,
        best_key_id=results[best].key_id, n_keys=len(keys),
        correction=f"bonferroni over {len(keys)} keys", results=results)


__all__ = ["MultiKeyResult", "detect_multikey"]
