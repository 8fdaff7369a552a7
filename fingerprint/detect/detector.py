"""The watermark detector: token ids in, an exact hypothesis test out.

    det = Detector(key, DetectorConfig(scheme="kgw", gamma=0.25, context_width=2))
    res = det.detect(list_of_token_id_arrays)          # or det.detect_text(text, tokenizer)
    res.pvalue, res.log10_pvalue, res.n_scored, res.n_green

Flow: token ids -> windows (``core``) -> which positions count (:mod:`.tuples`: prompt, dedup)
-> uniforms (``core``) -> sufficient statistics -> exact test (:mod:`fingerprint.stats`).
Sufficient statistics add up, so a corpus can be fed in any number of batches: with one shared
:class:`DetectionState`, dedup and the statistics are global to the corpus.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any, Literal

import numpy as np

from fingerprint import stats
from fingerprint.core import DEFAULT_PRF, check_gamma, get_prf, prf_class
from fingerprint.core.contexts import check_context_width
from fingerprint.detect.tuples import DedupPolicy, TupleSet, check_dedup, select_positions
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey, as_key, vllm_derived_key

Scheme = Literal["kgw", "gumbel", "dual_key_gumbel"]
SCHEMES: tuple[str, ...] = ("kgw", "gumbel", "dual_key_gumbel")
DEFAULT_DEDUP: dict[str, DedupPolicy] = {"kgw": "tuple", "gumbel": "context",
                                         "dual_key_gumbel": "context"}
DEFAULT_CONTEXT_WIDTH: dict[str, int] = {"kgw": 2, "gumbel": 4, "dual_key_gumbel": 4}
# whether the first completion tokens' windows read the prompt: as the generators' defaults
# (KGW here and in the KGW paper's code; Gumbel here and in vLLM, whose windows never do)
DEFAULT_PROMPT_CONTEXT: dict[str, bool] = {"kgw": True, "gumbel": False,
                                           "dual_key_gumbel": False}
ROW_BATCH = 1 << 22
VLLM_LOOP_LIMIT = 100_000  # tokens per internal batch: bounds memory on large corpora


@dataclass(frozen=True)
class DetectorConfig:
    """The public configuration of a detection test. Never holds the key.

    ``dedup=None`` takes the scheme's default from the literature: each distinct (window, token)
    once for KGW, each distinct window once for Gumbel (vLLM's ``deduplicate_contexts``).
    ``prompt_context`` must match the generation's: when True, given prompts fill the windows of
    the first completion tokens; when False they read ``-1`` (prompts then serve only
    ``skip_prompt_windows``). ``None`` takes the generators' default: True for KGW, False for
    the Gumbel schemes (as vLLM).
    """

    scheme: Scheme = "kgw"
    prf: str = DEFAULT_PRF
    context_width: int | None = None
    gamma: float = 0.25
    alpha: float = 0.1
    dedup: DedupPolicy | None = None
    skip_prompt_windows: bool = False
    prompt_context: bool | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if not isinstance(self.prf, str):
            raise ConfigError(f"prf must be a PRF name, got {self.prf!r}")
        object.__setattr__(self, "prf", prf_class(self.prf).name)  # aliases recorded versioned
        if self.context_width is None:
            object.__setattr__(self, "context_width", DEFAULT_CONTEXT_WIDTH[self.scheme])
        check_context_width(self.context_width)
        for name in ("gamma", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Real) or math.isnan(v):
                raise ConfigError(f"{name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))  # numpy scalars too
        if self.scheme == "kgw":  # some, not all, of the PRF's values must be green
            check_gamma(self.gamma, self.prf)
        elif not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"gamma must lie strictly between 0 and 1, got {self.gamma}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.dedup is None:
            object.__setattr__(self, "dedup", DEFAULT_DEDUP[self.scheme])
        check_dedup(self.dedup)
        if self.prompt_context is None:
            object.__setattr__(self, "prompt_context", DEFAULT_PROMPT_CONTEXT[self.scheme])
        if not isinstance(self.prompt_context, bool | np.bool_):
            raise ConfigError(f"prompt_context must be True or False, got {self.prompt_context!r}")
        object.__setattr__(self, "prompt_context", bool(self.prompt_context))

    @property
    def h(self) -> int:
        """The context width."""
        return int(self.context_width)  # type: ignore[arg-type]

    @property
    def prompt_gap(self) -> int:
        """Masked columns between a prompt and its completion (:func:`pack_batches`): ``h``
        when the windows of the first completion tokens read ``-1``, not the prompt."""
        return 0 if self.prompt_context else self.h

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Build from a dict such as a watermark's public config (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Sufficient:
    """Sufficient statistics of a detection test; they add up across batches and shards."""

    n_positions: int = 0  # candidate positions before dedup
    n_scored: int = 0
    n_green: int = 0
    score_sum: float = 0.0

    def __add__(self, other: Sufficient) -> Sufficient:
        return Sufficient(self.n_positions + other.n_positions, self.n_scored + other.n_scored,
                          self.n_green + other.n_green, self.score_sum + other.score_sum)


@dataclass
class DetectionState:
    """What a detection pass carries between batches: the dedup set and running statistics."""

    seen: TupleSet = field(default_factory=TupleSet)
    suff: Sufficient = field(default_factory=Sufficient)


@dataclass(frozen=True)
class DetectionResult:
    """A detection outcome in scipy's style, JSON-serializable through :meth:`to_dict`."""

    statistic: float
    pvalue: float
    log10_pvalue: float
    n_scored: int
    n_green: int | None
    score_sum: float | None
    n_positions: int
    no_evidence: bool
    null_hypothesis: str
    test: str
    config: dict[str, Any]
    key_id: str
    vllm_pvalue: float | None = None
    zscore: float | None = None
    token_flags: list[dict[str, Any]] | None = None

    @property
    def green_rate(self) -> float | None:
        """Green tokens per scored token (KGW)."""
        if self.n_green is None or self.n_scored == 0:
            return None
        return self.n_green / self.n_scored

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form."""
        out = asdict(self)
        out["green_rate"] = self.green_rate
        return out


class Detector:
    """Exact watermark tests for one key.

    Null hypothesis of every test: the scored tokens were chosen independently of this key.
    """

    def __init__(self, key: WatermarkKey | int | str, config: DetectorConfig | None = None,
                 **overrides: Any) -> None:
        if config is None:  # defaults (h, dedup, prompt context) follow the scheme given
            cfg = DetectorConfig(**overrides)
        elif overrides:  # the config's values stand where not overridden
            cfg = DetectorConfig(**{**config.to_dict(), **overrides})
        else:
            cfg = config
        self.config = cfg
        key = as_key(key)
        self.key_id = key.key_id
        if cfg.scheme == "dual_key_gumbel":
            if key.kind == "int64":  # vLLM's derivation of keys A and B
                self._prfs = [get_prf(cfg.prf, vllm_derived_key(key, d), "gumbel")
                              for d in (b"key_a", b"key_b")]
            else:
                self._prfs = [get_prf(cfg.prf, key, f"dual_key_gumbel/{s}") for s in "ab"]
        else:
            self._prfs = [get_prf(cfg.prf, key, cfg.scheme)]
        self._gamma_exact = self._prfs[0].green_probability(cfg.gamma)
        self._scratch = threading.local()  # per-thread value buffers (see _values)

    def __repr__(self) -> str:
        return f"Detector(key_id={self.key_id!r}, config={self.config})"

    # -- streaming ----------------------------------------------------------------------------
    def new_state(self) -> DetectionState:
        """A fresh state: pass it to :meth:`update` for every batch of one corpus."""
        return DetectionState()

    def update(
        self,
        state: DetectionState,
        tokens: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        score_from: np.ndarray | Sequence[int] | None = None,
        candidates: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        vocab_size: int | None = None,
        return_values: bool = False,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Score one batch [B, T] into ``state``; optionally return (selected, values) [B, T].

        ``score_from[b]`` is row b's first completion column: earlier (prompt) tokens only feed
        windows. ``candidates`` scores other tokens in the text's windows (reading-mode audit).
        ``exclude`` drops positions from scoring without removing their tokens from windows.
        """
        cfg = self.config
        x = np.asarray(tokens)
        x = x[None, :] if x.ndim == 1 else x
        keys = None if cfg.dedup == "none" else (self._buffer(3, x.shape, np.uint64),
                                                 self._buffer(4, x.shape, np.uint64))
        sel = select_positions(
            x, cfg.h, mask=mask, score_from=score_from, dedup=cfg.dedup, seen=state.seen,
            candidates=candidates, skip_prompt_windows=cfg.skip_prompt_windows, exclude=exclude,
            keys_out=keys)
        candidates_sel = None if candidates is None else np.asarray(candidates)
        values = self._values(x, mask, candidates_sel, vocab_size, scratch=not return_values)
        n_pos = count_candidates(x, mask, score_from)
        state.suff = state.suff + self._reduce(values, sel, n_pos)
        return (sel, values) if return_values else None

    def _values(self, x: np.ndarray, mask: Any, cand: Any, vocab_size: int | None,
                scratch: bool = False) -> np.ndarray:
        """Per-position score contributions: uniforms (KGW) or -log(1 - u) (Gumbel).

        ``scratch``: write into this thread's reusable buffers (the result is then only valid
        until the next call), which spares the page faults of fresh memory on every batch.
        """
        if not scratch:
            return combine_scores(self.config, [
                p.score(x, self.config.h, mask=mask, candidates=cand, vocab_size=vocab_size)
                for p in self._prfs])
        return combine_scores(self.config, [
            p.score(x, self.config.h, mask=mask, candidates=cand, vocab_size=vocab_size,
                    out=self._buffer(i, x.shape, p.uniform_dtype))
            for i, p in enumerate(self._prfs)], out=self._buffer(2, x.shape, np.float64))

    def _buffer(self, slot: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A per-thread scratch array of ``shape`` (grown as needed, reused across calls)."""
        store = self._scratch.__dict__
        size = int(np.prod(shape))
        buf = store.get((slot, np.dtype(dtype)))
        if buf is None or buf.size < size:
            buf = store[(slot, np.dtype(dtype))] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size].reshape(shape)

    def pair_values(self, contexts: np.ndarray, tokens: np.ndarray,
                    vocab_size: int | None = None) -> np.ndarray:
        """Score contributions of explicit tuples: ``tokens`` [N] after ``contexts`` [N, h]."""
        return combine_scores(self.config, [p.pairs(contexts, tokens, vocab_size=vocab_size)
                                            for p in self._prfs])

    def _reduce(self, values: np.ndarray, sel: np.ndarray, n_pos: int) -> Sufficient:
        v = values.ravel() if n_pos == sel.size and sel.all() else values[sel]
        if self.config.scheme == "kgw":
            return Sufficient(n_pos, int(v.size), int(np.count_nonzero(v < self.config.gamma)))
        return Sufficient(n_pos, int(v.size), 0, float(np.sum(v, dtype=np.float64)))

    def result(self, state: DetectionState | Sufficient) -> DetectionResult:
        """The exact test on everything fed into ``state`` so far."""
        s = state.suff if isinstance(state, DetectionState) else state
        return self.test(s)

    def test(self, s: Sufficient, token_flags: list[dict[str, Any]] | None = None
             ) -> DetectionResult:
        """The exact test for given sufficient statistics."""
        cfg = self.config
        extra: dict[str, Any] = {}
        if cfg.scheme == "kgw":
            r = stats.binomial_test(s.n_green, s.n_scored, self._gamma_exact)
            extra["zscore"] = r.zscore
        elif cfg.scheme == "gumbel":
            r = stats.gumbel_test(s.score_sum, s.n_scored)
            # vLLM's number is this same Gamma tail summed term by term (O(n)); beyond
            # VLLM_LOOP_LIMIT tokens the exact value stands in for it (equal up to rounding)
            extra["vllm_pvalue"] = (
                stats.vllm_compat_pvalue(s.score_sum, s.n_scored, 0.0)
                if 0 < s.n_scored <= VLLM_LOOP_LIMIT else r.pvalue)
        else:
            r = stats.dual_key_gumbel_test(s.score_sum, s.n_scored, cfg.alpha)
            extra["vllm_pvalue"] = r.vllm_pvalue
        return DetectionResult(
            statistic=r.statistic, pvalue=r.pvalue, log10_pvalue=r.log10_pvalue,
            n_scored=s.n_scored, n_green=s.n_green if cfg.scheme == "kgw" else None,
            score_sum=None if cfg.scheme == "kgw" else s.score_sum,
            n_positions=s.n_positions, no_evidence=r.no_evidence,
            null_hypothesis=r.null_hypothesis, test=r.test, config=cfg.to_dict(),
            key_id=self.key_id, token_flags=token_flags, **extra)

    # -- convenience --------------------------------------------------------------------------
    def detect(
        self,
        sequences: Iterable[Sequence[int] | np.ndarray] | np.ndarray,
        *,
        prompts: Iterable[Sequence[int] | np.ndarray] | None = None,
        vocab_size: int | None = None,
        flags: bool = False,
    ) -> DetectionResult:
        """Test a corpus of token-id sequences (completions), deduplicated globally.

        With ``prompts`` (one per sequence), windows of the first completion tokens reach into
        the prompt, as at generation; without, they are padded with -1 (vLLM's convention).
        ``flags=True`` adds per-token flags (for a single short text: highlighting).
        """
        seqs = as_sequences(sequences, "sequences")
        proms = None if prompts is None else as_sequences(prompts, "prompts")
        if proms is not None and len(proms) != len(seqs):
            raise InputError(f"got {len(proms)} prompts for {len(seqs)} sequences")
        state = self.new_state()
        token_flags: list[dict[str, Any]] = [] if flags else None  # type: ignore[assignment]
        for x, mask, start in pack_batches(seqs, proms, self.config.prompt_gap):
            out = self.update(state, x, mask=mask, score_from=start, vocab_size=vocab_size,
                              return_values=flags)
            if flags and out is not None:
                token_flags.extend(self._flags(x, mask, start, *out))
        return self.test(state.suff, token_flags)

    def _flags(self, x: np.ndarray, mask: np.ndarray | None, start: np.ndarray | None,
               sel: np.ndarray, values: np.ndarray) -> list[dict[str, Any]]:
        mask = np.ones(x.shape, dtype=bool) if mask is None else mask
        start = np.zeros(x.shape[0], dtype=np.int64) if start is None else start
        out = []
        for r in range(x.shape[0]):
            cols = np.nonzero(mask[r])[0]
            cols = cols[cols >= start[r]]
            for i, c in enumerate(cols):
                v = float(values[r, c])
                item: dict[str, Any] = {"index": i, "token": int(x[r, c]),
                                        "scored": bool(sel[r, c])}
                if self.config.scheme == "kgw":
                    item["green"] = v < self.config.gamma
                else:
                    item["score"] = v
                out.append(item)
        return out


def combine_scores(config: DetectorConfig, uniforms: Sequence[np.ndarray],
                   out: np.ndarray | None = None) -> np.ndarray:
    """Per-position score contributions from each PRF's uniforms: the uniform itself (KGW),
    ``-log(1 - u)`` (Gumbel), or vLLM's weighted sum of the two keys' (dual-key Gumbel).

    Torch tensors (any device) are brought to numpy first, so the scores, and the sums made of
    them, are the same bits whichever device computed the uniforms. ``out`` (float64, the
    uniforms' shape) receives the first key's Gumbel score instead of fresh memory.
    """
    us = [u.cpu().numpy() if hasattr(u, "cpu") else np.asarray(u) for u in uniforms]
    if config.scheme == "kgw":
        return us[0]
    fits = out is not None and out.shape == us[0].shape
    scores = [_gumbel_score(u, out if i == 0 and fits else np.empty(u.shape, np.float64))
              for i, u in enumerate(us)]
    if config.scheme == "gumbel":
        return scores[0]
    a = config.alpha
    return (1.0 - a) * scores[0] + a * scores[1]


def _gumbel_score(u: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``-log1p(-u)`` in float64, written into ``out``."""
    np.negative(u, out=out, dtype=np.float64, casting="same_kind")
    np.log1p(out, out=out)
    return np.negative(out, out=out)


_DTYPE, _NDIM = operator.attrgetter("dtype"), operator.attrgetter("ndim")
_INT64 = np.dtype(np.int64)


def as_sequences(seqs: Any, what: str) -> list[np.ndarray]:
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        return list(seqs.astype(np.int64, copy=False))
    if isinstance(seqs, np.ndarray) and seqs.ndim == 1 and seqs.dtype != object:
        return [seqs]
    items = seqs if isinstance(seqs, list) else list(seqs)
    if (set(map(type, items)) == {np.ndarray} and set(map(_DTYPE, items)) == {_INT64}
            and set(map(_NDIM, items)) == {1}):
        return items  # already what the kernels read (checked without a Python-level loop)
    out = []
    for i, s in enumerate(items):
        a = np.asarray(s)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise InputError(f"{what}[{i}] must be a 1-D sequence of integer token ids")
        out.append(a.astype(np.int64, copy=False))
    return out


def pack_batches(
    seqs: list[np.ndarray], prompts: list[np.ndarray] | None, prompt_gap: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """[B, T] batches of prompt+completion: (tokens, mask or None, completion starts or None).

    Rows are right-padded and masked; a batch of one unprompted sequence is passed as it is.
    ``prompt_gap`` masked columns between a prompt and its completion make the completion's
    first windows read ``-1`` instead of the prompt (``DetectorConfig.prompt_gap``), while the
    prompt's own windows stay whole. A batch closes once it holds ``ROW_BATCH`` tokens. No
    Python loop runs per token, nor per row beyond one gather of the row arrays (corpora of
    many short sequences stay fast).
    """
    n = len(seqs)
    if n == 0:
        return
    lens_s = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
    lens_p = (np.zeros(n, dtype=np.int64) if prompts is None
              else np.fromiter(map(len, prompts), dtype=np.int64, count=n))
    ends = np.cumsum(lens_p + lens_s)
    i = 0
    while i < n:
        # rows i..j-1: up to and including the row that brings the batch to ROW_BATCH tokens
        before = ends[i - 1] if i else 0
        j = min(n, int(np.searchsorted(ends, before + ROW_BATCH, side="left")) + 1)
        ls, lp = lens_s[i:j], lens_p[i:j]
        if j - i == 1 and lp[0] == 0 and ls[0]:
            yield np.ascontiguousarray(seqs[i], dtype=np.int64)[None, :], None, None
        elif not lp.any() and (ls == ls[0]).all() and ls[0]:
            # equal lengths and no prompts: the kernels' fast path, no mask
            yield np.concatenate(seqs[i:j]).astype(np.int64, copy=False).reshape(j - i, -1), \
                None, None
        else:
            yield insert_prompt_gap(*_padded(seqs[i:j], None if prompts is None
                                             else prompts[i:j], lp, ls), prompt_gap)
        i = j


def _padded(seqs: list[np.ndarray], prompts: list[np.ndarray] | None, lp: np.ndarray,
            ls: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Right-padded [B, T] prompt+completion rows, their mask and completion starts."""
    rows = lp + ls
    width = max(int(rows.max()), 1)
    parts = seqs if prompts is None else [a for pair in zip(prompts, seqs, strict=True)
                                          for a in pair]
    flat = np.concatenate(parts).astype(np.int64, copy=False) if parts else \
        np.empty(0, dtype=np.int64)
    row = np.repeat(np.arange(len(rows)), rows)
    col = np.arange(len(flat)) - np.repeat(np.cumsum(rows) - rows, rows)
    x = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros(x.shape, dtype=bool)
    x[row, col] = flat
    mask[row, col] = True
    return x, (None if mask.all() else mask), (lp.copy() if lp.any() else None)


def insert_prompt_gap(x: np.ndarray, mask: np.ndarray | None, start: np.ndarray | None,
                      gap: int, *more: np.ndarray) -> tuple[Any, ...]:
    """A packed batch with ``gap`` masked columns between each row's prompt (``start`` > 0)
    and completion, so the completion's first windows read ``-1`` while the prompt's own
    windows stay whole. ``more`` [B, T, ...] arrays (predictions, exclusions) move with the
    tokens; the gap holds zeros. Returns (x, mask, start, *more)."""
    if gap == 0 or start is None or not np.asarray(start).any():
        return (x, mask, start, *more)
    b, t = x.shape
    first = np.asarray(start, dtype=np.int64).reshape(-1, 1)
    shift = np.where(first > 0, gap, 0)
    cols = np.arange(t)[None, :]
    new_cols = cols + np.where(cols >= first, shift, 0)  # [B, T]
    rows = np.arange(b)[:, None]

    def moved(a: np.ndarray) -> np.ndarray:
        out = np.zeros((b, t + gap, *a.shape[2:]), dtype=a.dtype)
        out[rows, new_cols] = a
        return out

    m = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return (moved(x), moved(m), (first + shift).ravel(), *(moved(np.asarray(a)) for a in more))


def count_candidates(x: np.ndarray, mask: Any, score_from: Any) -> int:
    """The number of completion positions (before dedup)."""
    if mask is None and score_from is None:
        return int(np.asarray(x).size)
    m = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    m = m[None, :] if m.ndim == 1 else m
    if score_from is not None:
        m = m & (np.arange(x.shape[1])[None, :] >= np.asarray(score_from).reshape(-1, 1))
    return int(m.sum())


__all__ = [
    "DEFAULT_CONTEXT_WIDTH",
    "DEFAULT_DEDUP",
    "DEFAULT_PROMPT_CONTEXT",
    "SCHEMES",
    "DetectionResult",
    "DetectionState",
    "Detector",
    "DetectorConfig",
    "Sufficient",
    "combine_scores",
    "insert_prompt_gap",
    "pack_batches",
]
