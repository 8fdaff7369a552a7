"""Windowed detection: find a watermarked passage inside a longer, partly human text.

The whole-text test dilutes a watermarked paragraph with the human text around it. The windowed
test scans every contiguous run of scored tokens of each length in a geometric ladder
(``min_size``, 2 ``min_size``, ..., the whole text) and reports the most significant one. Since
the best of ``m`` windows is reported, its p-value is corrected for all ``m`` windows searched
(Bonferroni, valid whatever the dependence between overlapping windows).

For a fixed window length the exact p-value is monotone in the window's statistic (green count,
or score sum), so only the best window of each length needs an exact tail computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fingerprint import stats
from fingerprint.detect.detector import DetectionResult, Detector, Sufficient
from fingerprint.errors import ConfigError


@dataclass(frozen=True)
class WindowedResult:
    """The most significant window of a text, with its p-value corrected for the search."""

    pvalue: float
    log10_pvalue: float
    best_log10_pvalue: float  # uncorrected, for the best window alone
    start: int  # index of the window's first token in the scored sequence (completion)
    end: int  # one past its last token
    n_windows: int
    sizes: list[int]
    correction: str
    window: DetectionResult
    whole: DetectionResult

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        return asdict(self)


def detect_windowed(
    detector: Detector,
    tokens: Sequence[int] | np.ndarray,
    *,
    prompt: Sequence[int] | np.ndarray | None = None,
    min_size: int = 32,
    vocab_size: int | None = None,
) -> WindowedResult:
    """Scan ``tokens`` (one text) for its most watermarked window; Bonferroni-corrected p."""
    if min_size < 1:
        raise ConfigError("min_size must be at least 1")
    ids = np.asarray(tokens, dtype=np.int64)
    p = np.asarray([] if prompt is None else prompt, dtype=np.int64)
    gap = detector.config.prompt_gap if len(p) else 0  # see pack_batches
    x = np.concatenate([p, np.zeros(gap, np.int64), ids])[None, :]
    start = len(p) + gap  # the completion's first column
    cols_all = np.arange(x.shape[1])
    mask = None if gap == 0 else (cols_all < len(p)) | (cols_all >= start)
    state = detector.new_state()
    out = detector.update(state, x, mask=mask, score_from=[start], vocab_size=vocab_size,
                          return_values=True)
    assert out is not None
    sel, values = out
    whole = detector.result(state)
    cols = np.flatnonzero(sel[0])  # scored positions, in order
    kgw = detector.config.scheme == "kgw"
    contrib = (values[0, cols] < detector.config.gamma).astype(np.float64) if kgw \
        else values[0, cols].astype(np.float64)
    n = len(cols)
    if n == 0:
        return WindowedResult(1.0, 0.0, 0.0, 0, 0, 0, [], "none: nothing scored", whole, whole)
    sizes = sorted({min(n, min_size * 2**k) for k in range(64) if min_size * 2 ** (k - 1) < n})
    csum = np.concatenate([[0.0], np.cumsum(contrib)])
    best = None
    m = 0
    for w in sizes:
        sums = csum[w:] - csum[:-w]
        i = int(np.argmax(sums))
        m += len(sums)
        s = Sufficient(w, w, round(sums[i]) if kgw else 0, 0.0 if kgw else float(sums[i]))
        r = detector.test(s)
        if best is None or r.log10_pvalue < best[0].log10_pvalue:
            best = (r, i, w)
    assert best is not None
    r, i, w = best
    corrected = stats.combine_bonferroni_log10(r.log10_pvalue, m)
    first = int(cols[i]) - start
    last = int(cols[i + w - 1]) - start + 1
    return WindowedResult(
        pvalue=stats.log10_to_pvalue(corrected), log10_pvalue=corrected,
        best_log10_pvalue=r.log10_pvalue, start=first, end=last, n_windows=m, sizes=sizes,
        correction=f"bonferroni over {m} windows of sizes {sizes}", window=r, whole=whole)


__all__ = ["WindowedResult", "detect_windowed"]
