"""The exact Gumbel-max choice on the CPU for float64 uniforms, valuing only tokens that can win.

The choice is ``argmax(logits - log(-log u))`` per row, lowest index on ties; a NaN value never
wins and a row with nothing finite gives index 0 (as ``argmax`` over all ``-inf`` does). Most
tokens cannot win: token ``v`` reaches the best value so far only if its noise ``-log(-log u)``
is at least ``best - logits[v]``, i.e. if ``u[v] >= exp(-exp(logits[v] - best))``. That bound
is read from a table of thresholds at 1/16-nat steps, rounded down and lowered by a margin far
above rounding error, so no possible winner is ever skipped.

The row is screened in blocks of :data:`BLOCK` tokens: one vectorized compare of the block's
uniforms against the threshold of its largest logit finds whether any token may pass, and only
then are the block's tokens checked one by one. The best starts from the value of the row's
largest logit (:func:`row_start`), so screening is tight from the first block.

This module holds the arithmetic; the kernels that compute the uniforms live with their PRF
(:func:`fingerprint.core.siphash._gumbel_kernel`: a row's uniforms, then :func:`choose_row`).
The CUDA counterpart is :mod:`fingerprint.core.triton_prf`.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

BLOCK = 64  # tokens per screened block: uniforms for one block stay in registers / L1
_BINS_PER_NAT = 16
_D_LO, _D_HI = -8.0, 40.0  # below: every token is a candidate; above: none can be
_MARGIN = 1e-9  # nats: thresholds sit this much below the exact boundary


def _thresholds() -> np.ndarray:
    """``thr[k]``: the least uniform whose noise ``-log(-log u)`` reaches ``_D_LO + k / 16 -
    _MARGIN``; a token whose value gap to the best lies in bin ``k`` needs at least that. Bin 0
    holds every gap below ``_D_LO`` (threshold 0); the last, every gap from ``_D_HI`` up, which
    no noise reaches (a float64 uniform below 1 gives at most about 37 nats)."""
    d = _D_LO + np.arange(int((_D_HI - _D_LO) * _BINS_PER_NAT)) / _BINS_PER_NAT - _MARGIN
    return np.append(np.exp(-np.exp(-d)), 2.0)  # the last bin: no uniform reaches it


THRESHOLDS = _thresholds()


@nb.njit(inline="always")
def value(logit: float, u: float) -> float:
    """A token's Gumbel-max value, ``logit - log(-log u)``, in float64."""
    return logit - np.log(-np.log(u))


@nb.njit(inline="always")
def threshold(thr: Any, best: float, logit: float) -> float:
    """The least uniform with which a token of this logit could reach ``best`` (rounded down).
    A NaN gap (``best`` and ``logit`` both infinite) reads as bin 0: threshold 0."""
    gap = (best - _D_LO - logit) * _BINS_PER_NAT
    gap = gap if gap > 0.0 else 0.0
    last = thr.shape[0] - 1.0
    return thr[int(gap if gap < last else last)]


def order_bits(dtype: np.dtype) -> tuple[int, int]:
    """``(shift, mask)`` such that ``i ^ ((i >> shift) & mask)`` maps the bits ``i`` of a
    float of this dtype (read as a signed integer) to an integer in the float's order (NaN
    with the sign bit clear above +inf, with it set below -inf); the map is its own inverse."""
    bits = np.dtype(dtype).itemsize * 8
    return bits - 1, (1 << (bits - 1)) - 1


@nb.njit(inline="always")
def block_tops(lgi: Any, shift: int, mask: int, tops: Any) -> None:
    """``tops[k]`` = the bits of the largest logit of block ``k`` of ``lgi``.

    ``lgi`` is a stretch of a logits row read as integers, so the maximum vectorizes; a NaN may
    come out (then the block is screened as if its logits were high: conservative)."""
    n = lgi.shape[0]
    for k in range((n + BLOCK - 1) // BLOCK):
        blk = lgi[k * BLOCK:min(n, k * BLOCK + BLOCK)]
        top = np.int64(blk[0])
        top = top ^ ((top >> shift) & mask)
        for j in range(blk.shape[0]):  # local indices: numba proves them in range, LLVM vectorizes
            i = np.int64(blk[j])
            top = max(i ^ ((i >> shift) & mask), top)
        tops[k] = top ^ ((top >> shift) & mask)


@nb.njit(inline="always")
def row_start(lg_row: Any, tops: Any) -> tuple:
    """``(v, logit)``: the first token holding the largest block top (NaN ignored), whose value
    seeds the best; ``(0, logits[0])`` when no top is above -inf."""
    top = -np.inf
    at = 0
    for k in range(tops.shape[0]):
        x = np.float64(tops[k])
        if x > top:
            top = x
            at = k
    if top == -np.inf:
        return 0, np.float64(lg_row[0])
    for t in range(at * BLOCK, min(lg_row.shape[0], at * BLOCK + BLOCK)):
        if np.float64(lg_row[t]) == top:
            return t, top
    return 0, np.float64(lg_row[0])  # not reached: the top is one of the block's logits


@nb.njit(inline="always")
def seed(logit: float, u: float) -> float:
    """The starting best: just below the seed token's value, so that token (or an earlier one
    of equal value) is still taken when reached. -inf when that value is not a number."""
    val = value(logit, u)
    return np.nextafter(val, -np.inf) if val == val else -np.inf


@nb.njit(inline="always")
def choose_in_block(lg: Any, u: Any, t0: int, top: float, thr: Any, best: float,
                    best_i: int) -> tuple:
    """Update ``(best, best_i)`` with the tokens ``t0 + j`` of one block: logits ``lg[j]``,
    uniforms ``u[j]``, largest logit ``top``."""
    bound = threshold(thr, best, top)
    hits = 0
    for j in range(u.shape[0]):  # vectorized: no token below the block's bound can pass
        hits += u[j] >= bound
    if hits == 0:
        return best, best_i
    for j in range(u.shape[0]):
        x = np.float64(lg[j])
        if x == -np.inf:  # filtered out (top-k, top-p): it cannot win, nor tie first
            continue
        if u[j] < threshold(thr, best, x):
            continue
        val = value(x, u[j])
        if val > best:
            best = val
            best_i = t0 + j
    return best, best_i


@nb.njit(inline="always")
def choose_row(lg: Any, lgi: Any, shift: int, mask: int, u: Any, thr: Any, tops_i: Any,
               tops: Any) -> int:
    """The choice for one row: logits ``lg`` [V] (``lgi``: the same memory read as integers),
    float64 uniforms ``u`` [V]; ``tops_i`` / ``tops`` are scratch [ceil(V / BLOCK)] (one
    buffer viewed as integers / as the logits' float type)."""
    n_vocab = lg.shape[0]
    block_tops(lgi, shift, mask, tops_i)
    at, top = row_start(lg, tops)
    best = seed(top, u[at])
    best_i = at  # taken even if rounding were to screen it out
    for k in range(tops.shape[0]):
        t0, t1 = k * BLOCK, min(n_vocab, k * BLOCK + BLOCK)
        best, best_i = choose_in_block(lg[t0:t1], u[t0:t1], t0, np.float64(tops[k]), thr, best,
                                       best_i)
    return best_i


@nb.njit(cache=True)
def dense_choice_kernel(logits: Any, lgi: Any, shift: int, mask: int, tops_i: Any, tops: Any,
                        thr: Any, u: Any, out: Any) -> None:
    """:func:`choose_row` for each row of ``logits`` [B, V], ``u`` [B, V]; the arguments before
    ``u`` are what :func:`choice_args` returns.

    On the calling thread: waking a thread pool between the model's forward passes (whose own
    pool may still be spinning) costs more than this pass.
    """
    for b in range(u.shape[0]):
        out[b] = choose_row(logits[b], lgi[b], shift, mask, u[b], thr, tops_i[b], tops[b])


def logits_array(logits: Any) -> np.ndarray:
    """A torch CPU tensor of logits [B, V] as a C-contiguous float32 or float64 array (16-bit
    floats are widened to float32, exactly)."""
    lg = logits.detach()
    if lg.dtype.itemsize < 4:
        lg = lg.float()
    return lg.contiguous().numpy()


def choice_args(logits: np.ndarray) -> tuple[Any, ...]:
    """The kernels' leading arguments for ``logits`` [B, V] (float32 or float64, C-contiguous):
    the logits, the same memory read as integers, the order map's shift and mask, scratch block
    tops [B, ceil(V / BLOCK)] read as integers and as floats, and :data:`THRESHOLDS`."""
    ints = np.int32 if logits.dtype == np.float32 else np.int64
    tops_i = np.empty((logits.shape[0], -(-logits.shape[1] // BLOCK)), dtype=ints)
    return (logits, logits.view(ints), *order_bits(logits.dtype), tops_i,
            tops_i.view(logits.dtype), THRESHOLDS)


def dense_choice(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The choice [B] for float32 or float64 ``logits`` [B, V] and float64 uniforms [B, V]."""
    logits = np.ascontiguousarray(logits)
    out = np.empty(logits.shape[0], dtype=np.int64)
    dense_choice_kernel(*choice_args(logits), np.ascontiguousarray(u), out)
    return out


__all__ = ["BLOCK", "THRESHOLDS", "block_tops", "choice_args", "choose_in_block", "choose_row",
           "dense_choice", "dense_choice_kernel", "logits_array", "order_bits", "row_start",
           "seed", "threshold", "value"]
