"""Which (window, token) tuples get scored: prompt-aware selection and exact global dedup.

Repeated text repeats its PRF values, so its scores are not independent evidence: a corpus that
quotes one watermarked sentence a thousand times is one piece of evidence, not a thousand. The
literature's fix (Kirchenbauer et al. 2023; Fernandez et al. 2023, "three bricks"; Sander et al.
2024) is to score each distinct tuple once. Policies:

* ``"tuple"``: each distinct (window, token) once (the default for KGW);
* ``"context"``: each distinct window once, whatever token follows (the default for Gumbel, as
  in vLLM: a repeated window reuses one keyed vector of noise);
* ``"none"``: every position (invalid p-values on repetitive text; kept to show why).

Dedup is global: a :class:`TupleSet` remembers every tuple it has seen, across batches, files
and shards, so "first occurrence" means first in the whole corpus.
"""

from __future__ import annotations

from typing import Literal

import numba as nb
import numpy as np

from fingerprint.core.contexts import tuple_keys
from fingerprint.errors import ConfigError

DedupPolicy = Literal["none", "context", "tuple"]
DEDUP_POLICIES: tuple[str, ...] = ("none", "context", "tuple")
_PARTS = 4096  # sub-tables: small enough to stay in cache while a thread fills one


def check_dedup(policy: str) -> str:
    """Validate a dedup policy name."""
    if policy not in DEDUP_POLICIES:
        raise ConfigError(f"dedup must be one of {DEDUP_POLICIES}, got {policy!r}")
    return policy


@nb.njit(inline="always")
def _mix(hi: np.uint64, lo: np.uint64) -> np.uint64:
    z = hi ^ (lo * np.uint64(0x9E3779B97F4A7C15))
    z ^= z >> np.uint64(33)
    z *= np.uint64(0xFF51AFD7ED558CCD)
    z ^= z >> np.uint64(33)
    z *= np.uint64(0xC4CEB9FE1A85EC53)
    return z ^ (z >> np.uint64(33))


@nb.njit(cache=True)
def _partition(hi, lo, k_hi, k_lo, origin, starts):
    """A stable counting sort of the keys by sub-table: first occurrences stay first.

    The keys themselves are scattered (with their origin index), so the inserting threads then
    read them sequentially and touch only their own sub-table.
    """
    n = hi.shape[0]
    parts = np.empty(n, dtype=np.uint16)
    counts = np.zeros(_PARTS, dtype=np.int64)
    for i in range(n):
        p = np.uint16(_mix(hi[i], lo[i]) & np.uint64(_PARTS - 1))
        parts[i] = p
        counts[p] += 1
    starts[0] = 0
    for p in range(_PARTS):
        starts[p + 1] = starts[p] + counts[p]
    fill = starts[:-1].copy()
    for i in range(n):
        j = fill[parts[i]]
        k_hi[j] = hi[i]
        k_lo[j] = lo[i]
        origin[j] = i
        fill[parts[i]] += 1


@nb.njit(parallel=True, cache=True)
def _insert(table, zero, counts, k_hi, k_lo, origin, starts, resume, new):
    """Insert keys partition by partition, each thread owning whole sub-tables.

    ``table[p, slot] = (hi, lo)``, with (0, 0) marking an empty slot; the key (0, 0) itself is
    tracked by ``zero[p]``. One probe touches one cache line. A partition that reaches half its
    capacity stops; ``resume[p]`` says where, and the caller grows the table and calls again.
    """
    cap = table.shape[1]
    limit = cap // 2
    for p in nb.prange(table.shape[0]):
        j = resume[p]
        while j < starts[p + 1]:
            a = k_hi[j]
            b = k_lo[j]
            if a == 0 and b == 0:
                new[origin[j]] = not zero[p]
                zero[p] = True
                j += 1
                continue
            slot = np.int64((_mix(a, b) >> np.uint64(12)) & np.uint64(cap - 1))
            while True:
                ta = table[p, slot, 0]
                tb = table[p, slot, 1]
                if ta == 0 and tb == 0:
                    if counts[p] >= limit:
                        break
                    table[p, slot, 0] = a
                    table[p, slot, 1] = b
                    counts[p] += 1
                    new[origin[j]] = True
                    break
                if ta == a and tb == b:
                    new[origin[j]] = False
                    break
                slot = (slot + 1) & (cap - 1)
            if counts[p] >= limit and (table[p, slot, 0] == 0 and table[p, slot, 1] == 0):
                break  # full: stop before this key, resume after growing
            j += 1
        resume[p] = j


@nb.njit(parallel=True, cache=True)
def _rehash(old, new):
    """Move every key of ``old`` into the larger, empty ``new`` (same partitions)."""
    cap = new.shape[1]
    for p in nb.prange(old.shape[0]):
        for s in range(old.shape[1]):
            a = old[p, s, 0]
            b = old[p, s, 1]
            if a == 0 and b == 0:
                continue
            slot = np.int64((_mix(a, b) >> np.uint64(12)) & np.uint64(cap - 1))
            while new[p, slot, 0] != 0 or new[p, slot, 1] != 0:
                slot = (slot + 1) & (cap - 1)
            new[p, slot, 0] = a
            new[p, slot, 1] = b


@nb.njit(parallel=True, cache=True)
def _lookup(table, zero, hi, lo, out):
    cap = table.shape[1]
    for i in nb.prange(hi.shape[0]):
        a = hi[i]
        b = lo[i]
        z = _mix(a, b)
        p = np.int64(z & np.uint64(_PARTS - 1))
        if a == 0 and b == 0:
            out[i] = zero[p]
            continue
        slot = np.int64((z >> np.uint64(12)) & np.uint64(cap - 1))
        found = False
        while table[p, slot, 0] != 0 or table[p, slot, 1] != 0:
            if table[p, slot, 0] == a and table[p, slot, 1] == b:
                found = True
                break
            slot = (slot + 1) & (cap - 1)
        out[i] = found


class TupleSet:
    """An exact set of 128-bit tuple keys that grows as needed; insertion reports first sightings.

    Memory is 16 bytes per slot at a load factor of at most one half.
    """

    def __init__(self) -> None:
        self._alloc(16)

    def _alloc(self, cap: int) -> None:
        self._table = np.zeros((_PARTS, cap, 2), dtype=np.uint64)
        self._zero = np.zeros(_PARTS, dtype=np.bool_)
        self._counts = np.zeros(_PARTS, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._counts.sum() + self._zero.sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the table."""
        return self._table.nbytes

    def add(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Insert keys in order; True where a key was never seen before (first occurrence)."""
        hi = np.ascontiguousarray(hi, dtype=np.uint64).ravel()
        lo = np.ascontiguousarray(lo, dtype=np.uint64).ravel()
        new = np.empty(hi.shape[0], dtype=np.bool_)
        step = 1 << 22  # bounded batches bound the scratch arrays
        for i0 in range(0, hi.shape[0], step):
            b_hi, b_lo = hi[i0 : i0 + step], lo[i0 : i0 + step]
            k_hi, k_lo = np.empty_like(b_hi), np.empty_like(b_lo)
            origin = np.empty(b_hi.shape[0], dtype=np.int64)
            starts = np.empty(_PARTS + 1, dtype=np.int64)
            _partition(b_hi, b_lo, k_hi, k_lo, origin, starts)
            resume = starts[:-1].copy()
            while True:
                _insert(self._table, self._zero, self._counts, k_hi, k_lo, origin, starts,
                        resume, new[i0 : i0 + step])
                if np.array_equal(resume, starts[1:]):
                    break
                self._grow()
        return new

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """True where a key is in the set (nothing is inserted)."""
        hi = np.ascontiguousarray(hi, dtype=np.uint64).ravel()
        lo = np.ascontiguousarray(lo, dtype=np.uint64).ravel()
        out = np.empty(hi.shape[0], dtype=np.bool_)
        _lookup(self._table, self._zero, hi, lo, out)
        return out

    def _grow(self) -> None:
        """Double every sub-table (they share one capacity) and re-insert their keys."""
        old = self._table
        self._table = np.zeros((_PARTS, 2 * old.shape[1], 2), dtype=np.uint64)
        _rehash(old, self._table)


def _row_groups(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group equal keys within each row of [B, T] keys: (group id, first-of-its-group), flat.

    One stable sort of (row, key) serves every row at once: no per-row tables.
    """
    b, t = hi.shape
    rows = np.repeat(np.arange(b, dtype=np.int64), t)
    h, lo_ = hi.ravel(), lo.ravel()
    order = np.lexsort((lo_, h, rows))  # stable: equal keys keep their column order
    hs, ls, rs = h[order], lo_[order], rows[order]
    starts = np.ones(order.shape[0], dtype=bool)
    starts[1:] = (hs[1:] != hs[:-1]) | (ls[1:] != ls[:-1]) | (rs[1:] != rs[:-1])
    gid = np.empty(order.shape[0], dtype=np.int64)
    gid[order] = np.cumsum(starts) - 1
    first = np.empty(order.shape[0], dtype=bool)
    first[order] = starts
    return gid, first


def first_in_row(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """True where a key of [B, T] keys occurs for the first time in its row."""
    return _row_groups(hi, lo)[1].reshape(hi.shape)


def in_row_set(hi: np.ndarray, lo: np.ndarray, members: np.ndarray) -> np.ndarray:
    """True where a key equals the key of some ``members`` position of the same row."""
    gid = _row_groups(hi, lo)[0]
    hit = np.bincount(gid, weights=np.asarray(members, dtype=bool).ravel(),
                      minlength=int(gid.max(initial=-1)) + 1) > 0
    return hit[gid].reshape(hi.shape)


def select_positions(
    tokens: np.ndarray,
    context_width: int,
    *,
    mask: np.ndarray | None = None,
    score_from: np.ndarray | None = None,
    dedup: DedupPolicy = "tuple",
    seen: TupleSet | None = None,
    candidates: np.ndarray | None = None,
    skip_prompt_windows: bool = False,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """The positions of ``tokens`` [B, T] to score: a bool [B, T] mask.

    * ``mask`` marks real tokens; ``score_from`` [B] is the first completion column of each row
      (the prompt before it only feeds windows); positions before it are never scored.
    * ``dedup`` drops repeats, globally when ``seen`` is shared across calls.
    * ``skip_prompt_windows`` also drops completion positions whose window occurs in the prompt
      (text copied from the prompt carries the prompt's provenance, not the model's).
    * ``exclude`` [B, T] drops more positions (their tokens still feed windows).
    """
    check_dedup(dedup)
    x = np.asarray(tokens)
    x = x[None, :] if x.ndim == 1 else x
    if mask is None:
        sel = np.ones(x.shape, dtype=bool)
    else:
        sel = np.array(mask, dtype=bool, copy=True)
        sel = sel[None, :] if sel.ndim == 1 else sel
    if score_from is not None:
        cols = np.arange(x.shape[1])[None, :]
        start = np.asarray(score_from, dtype=np.int64).reshape(-1, 1)
        in_prompt = cols < start
        if skip_prompt_windows:  # per row: a window seen in this row's own prompt
            whi, wlo = tuple_keys(x, context_width, with_token=False, mask=mask)
            # windows made of prompt tokens only: those of positions up to the first completion one
            sel &= ~in_row_set(whi, wlo, cols <= start)
        sel &= ~in_prompt
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        sel &= ~(ex[None, :] if ex.ndim == 1 else ex)
    if dedup == "none":
        return sel
    hi, lo = tuple_keys(x, context_width, with_token=dedup == "tuple", mask=mask,
                        candidates=candidates)
    store = seen if seen is not None else TupleSet()
    first = store.add(hi[sel], lo[sel])
    out = np.zeros(x.shape, dtype=bool)
    out[sel] = first
    return out


__all__ = ["DEDUP_POLICIES", "DedupPolicy", "TupleSet", "check_dedup", "first_in_row", "in_row_set",
           "select_positions"]
