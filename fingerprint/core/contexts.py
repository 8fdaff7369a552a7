"""The context convention shared by every PRF, the watermark and the detector.

The value of a candidate token ``v`` at position ``t`` of a sequence ``x`` depends on the
*window* ``(x[t-h], ..., x[t-1])`` (oldest first) of the ``h`` tokens before it:

* positions before the start of the sequence read as :data:`PAD` (``-1``), as in vLLM;
* a token whose ``mask`` entry is false (left or right padding, or a token the caller wants
  hidden) reads as :data:`PAD` in every later window, and its own value is not computed (NaN);
* when a prompt is known, pass ``prompt + completion`` as one sequence and keep only the
  completion's values: its first windows then reach into the prompt, as they did at generation.
  Scoring a completion alone pads its first windows with ``-1`` (vLLM's detector convention).

Token ids are non-negative integers below ``2**31`` (and below the vocabulary size when known).
On the wire every window entry is a 32-bit word: ``-1`` becomes ``0xFFFFFFFF``.
"""

from __future__ import annotations

import numpy as np

from fingerprint.errors import ConfigError, ShapeError, TokenIdError

PAD = -1
MAX_CONTEXT_WIDTH = 64
MAX_TOKEN_ID = 2**31 - 1


def check_context_width(h: object) -> int:
    """Validate a context width (an int in 1..64)."""
    if isinstance(h, bool) or not isinstance(h, int | np.integer):
        raise ConfigError(f"context width must be an integer, got {type(h).__name__}")
    if not 1 <= int(h) <= MAX_CONTEXT_WIDTH:
        raise ConfigError(f"context width must be between 1 and {MAX_CONTEXT_WIDTH}, got {h}")
    return int(h)


def max_token_id(vocab_size: int | None) -> int:
    """The largest token id accepted for a vocabulary of ``vocab_size`` (None: any 31-bit id)."""
    if vocab_size is None:
        return MAX_TOKEN_ID
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise ConfigError(f"vocab_size must be an integer, got {type(vocab_size).__name__}")
    if not 1 <= int(vocab_size) <= MAX_TOKEN_ID + 1:
        raise ConfigError(f"vocab_size must be between 1 and 2**31, got {vocab_size}")
    return int(vocab_size) - 1


def check_integer_dtype(dtype: object, what: str) -> None:
    """Refuse floats, bools and anything else that is not a plain integer dtype."""
    kind = getattr(dtype, "kind", None)
    if kind is None:  # a torch dtype
        name = str(dtype)
        ok = any(name.endswith(t) for t in ("int8", "int16", "int32", "int64", "uint8"))
        ok = ok and "uint16" not in name and "uint32" not in name and "uint64" not in name
    else:
        ok = kind in "iu" and np.dtype(dtype).itemsize <= 8
    if not ok:
        raise TokenIdError(
            f"{what} must be an integer array (int32 or int64), got dtype {dtype}; "
            "convert token ids with .astype(np.int64) / .long() first"
        )


def check_out(out: object, shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """A caller's output buffer, which must be a C-contiguous ``dtype`` array of ``shape``."""
    if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype
            or not out.flags.c_contiguous):
        raise ShapeError(f"out must be a C-contiguous {np.dtype(dtype)} array of shape {shape}")
    return out


def as_token_matrix(tokens: np.ndarray, what: str = "tokens") -> np.ndarray:
    """A C-contiguous int64 [B, T] view or copy of a 1-D or 2-D integer array."""
    arr = np.asarray(tokens)
    check_integer_dtype(arr.dtype, what)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"{what} must have shape [T] or [B, T], got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def windows(tokens: np.ndarray, context_width: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Materialize every position's window: int64 [B, T, h], oldest first, padded with -1.

    This is the reference statement of the convention (and what the dedup logic keys on); the
    fused kernels compute the same windows on the fly without materializing them.
    """
    h = check_context_width(context_width)
    x = as_token_matrix(tokens)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 1:
            m = m[None, :]
        if m.shape != x.shape:
            raise ShapeError(f"mask shape {m.shape} does not match tokens shape {x.shape}")
        x = np.where(m, x, PAD)
    b, t = x.shape
    padded = np.concatenate([np.full((b, h), PAD, dtype=np.int64), x], axis=1)
    view = np.lib.stride_tricks.sliding_window_view(padded, h, axis=1)
    return np.ascontiguousarray(view[:, :t, :])



def windows_at(tokens: np.ndarray, context_width: int, mask: np.ndarray | None,
               selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The explicit (window int64 [N, h], token [N]) of the ``selected`` [B, T] positions.

    The same windows as :func:`windows`, gathered for the selected positions only.
    """
    h = check_context_width(context_width)
    x = as_token_matrix(tokens)
    sel = np.asarray(selected, dtype=bool).reshape(x.shape)
    xw = x if mask is None else np.where(np.asarray(mask, dtype=bool).reshape(x.shape), x, PAD)
    padded = np.concatenate([np.full((x.shape[0], h), PAD, dtype=np.int64), xw], axis=1)
    rows, cols = np.nonzero(sel)
    ctx = padded[rows[:, None], cols[:, None] + np.arange(h)[None, :]]
    return ctx, x[rows, cols]


# -- tuple keys: what dedup compares ------------------------------------------------------------
import numba as nb  # noqa: E402

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)


@nb.njit(inline="always")
def _fmix(z: object) -> object:
    z ^= z >> _U64(33)
    z *= _U64(0xFF51AFD7ED558CCD)
    z ^= z >> _U64(33)
    z *= _U64(0xC4CEB9FE1A85EC53)
    return z ^ (z >> _U64(33))


@nb.njit(inline="always")
def _key_at(x, cand, valid, b, t, h, with_token, checked):
    n_words = h + (1 if with_token else 0)
    a = _U64(0)
    c = _U64(0)
    s1 = _U64(0x9E3779B97F4A7C15)
    s2 = _U64(0xD1B54A32D192ED03)
    for k in range(n_words):
        if k < h:
            p = t - h + k
            w = _M32
            if (not checked or p >= 0) and (valid is None or valid[b, p]):
                w = _U64(x[b, p]) & _M32
        else:
            w = _U64(cand[b, t]) & _M32
        if n_words <= 4:  # exact: the words themselves, packed
            if k < 2:
                a |= w << _U64(32 * k)
            else:
                c |= w << _U64(32 * (k - 2))
        else:  # two independent 64-bit chains: a 128-bit hash
            s1 = _fmix(s1 ^ (w + _U64(k) * _U64(0x100000001)))
            s2 = _fmix(s2 + (w ^ (_U64(k) << _U64(40))))
    if n_words > 4:
        a = _fmix(s1 ^ _U64(n_words))
        c = _fmix(s2 + _U64(n_words))
    return a, c


@nb.njit(parallel=True, cache=True)
def _tuple_keys_kernel(x, cand, valid, hspec, with_token, hi, lo):
    h = len(hspec)
    n_rows, n_pos = x.shape
    seg = 1 << 15
    n_seg = (n_pos + seg - 1) // seg
    for item in nb.prange(n_rows * n_seg):
        b = item // n_seg
        t0 = (item % n_seg) * seg
        t1 = min(n_pos, t0 + seg)
        for t in range(t0, min(t1, h)):
            hi[b, t], lo[b, t] = _key_at(x, cand, valid, b, t, h, with_token, True)
        for t in range(max(t0, h), t1):
            hi[b, t], lo[b, t] = _key_at(x, cand, valid, b, t, h, with_token, False)


def tuple_keys(
    tokens: np.ndarray,
    context_width: int,
    *,
    with_token: bool = True,
    mask: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """128-bit keys (hi, lo) [B, T] identifying each position's (window, token) or window alone.

    Two positions get equal keys exactly when their windows (and tokens) are equal, under the
    window convention of this module. Up to four 32-bit words (``h + 1 <= 4`` with the token,
    ``h <= 4`` without) are packed as they are, so equality is exact; longer tuples are hashed to
    128 bits, where two different tuples collide with probability about ``2**-128`` per pair.
    ``out``: two C-contiguous uint64 arrays of the tokens' [B, T] shape to write into (a caller
    scoring batch after batch reuses them, sparing fresh memory's page faults).
    """
    h = check_context_width(context_width)
    x = as_token_matrix(tokens)
    cand = x if candidates is None else as_token_matrix(candidates, "candidates")
    valid = None if mask is None else np.ascontiguousarray(np.asarray(mask, dtype=bool))
    if valid is not None and valid.ndim == 1:
        valid = valid[None, :]
    if cand.shape != x.shape or (valid is not None and valid.shape != x.shape):
        raise ShapeError("tokens, candidates and mask must have the same shape")
    if out is None:
        hi = np.empty(x.shape, dtype=np.uint64)
        lo = np.empty(x.shape, dtype=np.uint64)
    else:
        hi, lo = (check_out(a, x.shape, np.uint64) for a in out)
    _tuple_keys_kernel(x, cand, valid, (0,) * h, with_token, hi, lo)
    return hi, lo


__all__ = [
    "MAX_CONTEXT_WIDTH",
    "MAX_TOKEN_ID",
    "PAD",
    "as_token_matrix",
    "check_context_width",
    "check_integer_dtype",
    "check_out",
    "max_token_id",
    "tuple_keys",
    "windows",
    "windows_at",
]
