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

from typing import Any, Literal

import numba as nb
import numpy as np

from fingerprint.core.contexts import _fmix, tuple_keys
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
    """The 64-bit hash of a key: non-linear in both words, so that no simple relation between
    them (such as ``hi == lo * c``) makes many keys collide. For one-word keys ``lo`` is a
    constant and its mix folds away."""
    return _fmix(hi ^ _fmix(lo ^ np.uint64(0x9E3779B97F4A7C15)))


_WORD_LO = np.uint64(0x2545F4914F6CDD1D)  # the low word hashed with one-word keys


@nb.njit(inline="always")
def _word_hash(w: np.uint64) -> np.uint64:
    """The hash of a key stored in one word."""
    return _mix(w, _WORD_LO)


# -- key layouts: 128-bit keys stored in one word when they fit exactly --------------------------
# A 128-bit tuple key holds up to four 32-bit words (see ``tuple_keys``): w0, w1 in ``hi``, w2, w3
# in ``lo``. Two one-word layouts are exact on the keys they accept:
#   "p16": every word w satisfies (w + 1) mod 2**32 < 2**16 (ids below 65535, the -1 pad, unused
#          words), packed as four 16-bit fields of w + 1;
#   "hi":  lo == 0 (at most two words), stored as hi.
# A set starts in the narrowest layout its first keys fit and widens, once, when a key does not.
_P16, _HI, _FULL = 0, 1, 2
_LAYOUT_NAMES = ("p16", "hi", "full")
_M16 = np.uint64(0xFFFF)
_ONE = np.uint64(1)


@nb.njit(inline="always")
def _p16_ok(hi: np.uint64, lo: np.uint64) -> bool:
    m = np.uint64(0xFFFFFFFF)
    return (((hi & m) + _ONE) & m) <= _M16 and (((hi >> np.uint64(32)) + _ONE) & m) <= _M16 \
        and (((lo & m) + _ONE) & m) <= _M16 and (((lo >> np.uint64(32)) + _ONE) & m) <= _M16


@nb.njit(parallel=True, cache=True)
def _best_layout(hi, lo):
    """The narrowest layout that holds every key: ``_P16``, ``_HI`` or ``_FULL``."""
    not_p16 = 0
    lo_used = 0
    for i in nb.prange(hi.shape[0]):  # counted in parallel (reductions), no early exit
        not_p16 += 0 if _p16_ok(hi[i], lo[i]) else 1
        lo_used += 1 if lo[i] != 0 else 0
    return _P16 if not_p16 == 0 else (_HI if lo_used == 0 else _FULL)


@nb.njit(parallel=True, cache=True)
def _fits(hi, lo, layout, out):
    """out[i]: key i can be stored in ``layout``."""
    for i in nb.prange(hi.shape[0]):
        if layout == _FULL:
            out[i] = True
        elif layout == _HI:
            out[i] = lo[i] == 0
        else:
            out[i] = _p16_ok(hi[i], lo[i])


@nb.njit(inline="always")
def _word(hi, lo, layout):
    """A key in a one-word layout (``_HI`` or ``_P16``)."""
    return hi if layout == _HI else _p16_encode(hi, lo)


@nb.njit(inline="always")
def _key_hash(hi, lo, layout):
    """:func:`_hash` of a key as it is stored in ``layout``."""
    if layout == _FULL:
        return _mix(hi, lo)
    return _word_hash(_word(hi, lo, layout))


@nb.njit(inline="always")
def _encode_one(hi, lo, layout, out, j):
    if layout == _FULL:
        out[j, 0] = hi
        out[j, 1] = lo
    else:
        out[j, 0] = _word(hi, lo, layout)


@nb.njit(parallel=True, cache=True)
def _encode(hi, lo, layout, out):
    """Keys [n] in ``layout``: out [n, 1] (one word) or [n, 2] (full)."""
    for i in nb.prange(hi.shape[0]):
        _encode_one(hi[i], lo[i], layout, out, i)
    return out


@nb.njit(inline="always")
def _p16_encode(hi: np.uint64, lo: np.uint64) -> np.uint64:
    m = np.uint64(0xFFFFFFFF)
    return (((hi + _ONE) & _M16) | ((((hi >> np.uint64(32)) + _ONE) & _M16) << np.uint64(16))
            | (((lo + _ONE) & _M16) << np.uint64(32))
            | ((((lo >> np.uint64(32)) & m) + _ONE) & _M16) << np.uint64(48))


@nb.njit(inline="always")
def _p16_word(k: np.uint64, j: int) -> np.uint64:
    f = (k >> np.uint64(16 * j)) & _M16  # field f = w + 1 (mod 2**16): 0 is the pad 0xFFFFFFFF
    return np.uint64(0xFFFFFFFF) if f == 0 else f - _ONE


@nb.njit(inline="always")
def _p16_decode(k: np.uint64) -> tuple[np.uint64, np.uint64]:
    return (_p16_word(k, 0) | (_p16_word(k, 1) << np.uint64(32)),
            _p16_word(k, 2) | (_p16_word(k, 3) << np.uint64(32)))


@nb.njit(parallel=True, cache=True)
def _decode(words, layout, hi, lo):
    for i in nb.prange(words.shape[0]):
        if layout == _P16:
            hi[i], lo[i] = _p16_decode(words[i])
        else:
            hi[i], lo[i] = words[i], np.uint64(0)


def compact_keys(hi: np.ndarray, lo: np.ndarray) -> tuple[str, np.ndarray | None]:
    """Keys in the narrowest exact one-word layout that holds them all: ``("p16" | "hi",
    words [n] uint64)``, or ``("full", None)`` when some key needs both words. The map is
    one-to-one on the keys it accepts; :func:`expand_keys` inverts it."""
    hi = np.ascontiguousarray(hi, dtype=np.uint64).ravel()
    lo = np.ascontiguousarray(lo, dtype=np.uint64).ravel()
    layout = int(_best_layout(hi, lo)) if hi.shape[0] else _P16
    if layout == _FULL:
        return "full", None
    return _LAYOUT_NAMES[layout], _encode(hi, lo, layout, np.empty((hi.shape[0], 1),
                                                                   dtype=np.uint64)).ravel()


def expand_keys(words: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit keys (hi, lo) of one-word keys in ``layout`` ("p16" or "hi")."""
    if layout not in _LAYOUT_NAMES[:2]:
        raise ValueError(f"one-word key layouts are 'p16' and 'hi', got {layout!r}")
    words = np.ascontiguousarray(words, dtype=np.uint64).ravel()
    hi, lo = np.empty_like(words), np.empty_like(words)
    _decode(words, _LAYOUT_NAMES.index(layout), hi, lo)
    return hi, lo


@nb.njit(inline="always")
def _hash(keys, j):
    if keys.shape[1] == 1:
        return _word_hash(keys[j, 0])
    return _mix(keys[j, 0], keys[j, 1])


@nb.njit(inline="always")
def _slot(z, cap):
    """A slot in [0, cap) from the hash's high bits (the low ones chose the partition)."""
    return np.int64(((z >> np.uint64(32)) * np.uint64(cap)) >> np.uint64(32))


@nb.njit(inline="always")
def _is_empty(t, s):
    for w in range(t.shape[1]):  # noqa: SIM110 (numba has no all() over generators)
        if t[s, w] != 0:
            return False
    return True


@nb.njit(inline="always")
def _same(t, s, keys, j):
    for w in range(t.shape[1]):  # noqa: SIM110
        if t[s, w] != keys[j, w]:
            return False
    return True


@nb.njit(inline="always")
def _limit(cap):
    return cap * 5 // 8  # the load factor stays below 5/8


_CHUNKS = 16  # input pieces counted and scattered in parallel


@nb.njit(parallel=True, cache=True)
def _partition(hi, lo, layout, k_sorted, origin, starts):
    """Encode the keys in ``layout`` and counting-sort them by sub-table, stably (first
    occurrences stay first), with their origin index; the inserting threads then read them
    sequentially and touch only their own sub-table. Pieces of the input are counted and
    scattered in parallel; piece c's keys of a sub-table land after piece c - 1's.
    """
    n = hi.shape[0]
    per = (n + _CHUNKS - 1) // _CHUNKS
    parts = np.empty(n, dtype=np.uint16)
    counts = np.zeros((_CHUNKS, _PARTS), dtype=np.int64)
    for c in nb.prange(_CHUNKS):
        for i in range(c * per, min(n, (c + 1) * per)):
            p = np.uint16(_key_hash(hi[i], lo[i], layout) & np.uint64(_PARTS - 1))
            parts[i] = p
            counts[c, p] += 1
    fill = np.empty((_CHUNKS, _PARTS), dtype=np.int64)
    total = 0
    for p in range(_PARTS):
        starts[p] = total
        for c in range(_CHUNKS):
            fill[c, p] = total
            total += counts[c, p]
    starts[_PARTS] = total
    for c in nb.prange(_CHUNKS):
        for i in range(c * per, min(n, (c + 1) * per)):
            j = fill[c, parts[i]]
            _encode_one(hi[i], lo[i], layout, k_sorted, j)
            origin[j] = i
            fill[c, parts[i]] += 1


_FOUND, _ADDED, _FULL_TABLE = 0, 1, 2
_LINE = 8  # slots per bucket when ordering keys by home slot


@nb.njit(inline="always")
def _place(t, keys, j, s, count, limit):
    """Find key ``j`` from slot ``s`` on (linear probing), or add it: (_FOUND | _ADDED |
    _FULL_TABLE, the new count). A table at its load limit takes no new key."""
    two = keys.shape[1] == 2
    a = keys[j, 0]
    b = keys[j, 1] if two else np.uint64(0)
    cap = t.shape[0]
    while True:
        ta = t[s, 0]
        tb = t[s, 1] if two else np.uint64(0)
        if ta == a and tb == b:
            return _FOUND, count
        if ta == 0 and tb == 0:
            if count >= limit:
                return _FULL_TABLE, count
            t[s, 0] = a
            if two:
                t[s, 1] = b
            return _ADDED, count + 1
        s += 1
        if s == cap:
            s = 0


@nb.njit(inline="always")
def _is_zero_key(keys, j):
    return keys[j, 0] == 0 and (keys.shape[1] == 1 or keys[j, 1] == 0)


@nb.njit(parallel=True, cache=True)
def _insert(tables, zero, counts, keys, origin, starts, resume, new, sweep_from):
    """Insert keys partition by partition, each thread owning whole sub-tables.

    An all-zero slot is empty; the all-zero key itself is tracked by ``zero[p]``. A partition
    that reaches its load limit stops; its keys not yet inserted are left, in input order, at
    the end of its range from ``resume[p]`` on, and the caller grows that sub-table and calls
    again. Sub-tables of ``sweep_from`` slots or more (beyond the caches) are swept: their keys
    are taken in order of home slot (a stable counting sort, so a key's first occurrence still
    comes first), so that the probes walk the table forward instead of missing the cache at
    random.
    """
    for p in nb.prange(_PARTS):
        t = tables[np.int64(p)]
        cap = t.shape[0]
        j0 = resume[p]
        end = starts[p + 1]
        if cap >= sweep_from and end - j0 > 1:
            resume[p] = _insert_swept(t, p, zero, counts, keys, origin, j0, end, new)
            continue
        limit = _limit(cap)
        if keys.shape[1] == 1:  # flat views: simpler indexing than the general [slot, word]
            resume[p], counts[p] = _insert_words(t.ravel(), keys.ravel(), origin, j0, end,
                                                 zero, p, counts[p], limit, new)
            continue
        count = counts[p]
        j = j0
        while j < end:
            if _is_zero_key(keys, j):
                new[origin[j]] = not zero[p]
                zero[p] = True
            else:
                status, count = _place(t, keys, j, _slot(_hash(keys, j), cap), count, limit)
                if status == _FULL_TABLE:
                    break  # resume here once the sub-table has grown
                new[origin[j]] = status == _ADDED
            j += 1
        counts[p] = count
        resume[p] = j


@nb.njit(inline="always")
def _place_word(t, a, s, count, limit):
    """:func:`_place` for a one-word key ``a`` in a flat table ``t``."""
    cap = t.shape[0]
    while True:
        v = t[s]
        if v == a:
            return _FOUND, count
        if v == 0:
            if count >= limit:
                return _FULL_TABLE, count
            t[s] = a
            return _ADDED, count + 1
        s += 1
        if s == cap:
            s = 0


@nb.njit(inline="always")
def _insert_words(t, k, origin, j, end, zero, p, count, limit, new):
    """:func:`_insert`'s direct path for one-word keys; returns (where to resume, count)."""
    cap = t.shape[0]
    while j < end:
        a = k[j]
        if a == 0:
            new[origin[j]] = not zero[p]
            zero[p] = True
        else:
            status, count = _place_word(t, a, _slot(_word_hash(a), cap), count, limit)
            if status == _FULL_TABLE:
                return j, count  # resume here once the sub-table has grown
            new[origin[j]] = status == _ADDED
        j += 1
    return j, count


@nb.njit(inline="always")
def _insert_swept(t, p, zero, counts, keys, origin, j0, end, new):
    """:func:`_insert` for sub-table ``p`` in order of home slot; returns where to resume."""
    cap = t.shape[0]
    limit = _limit(cap)
    m = end - j0
    home = np.empty(m, dtype=np.int64)
    for i in range(m):
        home[i] = _slot(_hash(keys, j0 + i), cap)
    order = _by_bucket(home, cap)
    done = np.zeros(m, dtype=np.bool_)
    count = counts[p]
    full = False
    flat, words = t.ravel(), keys.ravel()  # used for one-word keys: simpler indexing
    for r in range(m):
        i = order[r]
        j = j0 + i
        if _is_zero_key(keys, j):
            new[origin[j]] = not zero[p]
            zero[p] = True
        else:
            if keys.shape[1] == 1:
                status, count = _place_word(flat, words[j], home[i], count, limit)
            else:
                status, count = _place(t, keys, j, home[i], count, limit)
            if status == _FULL_TABLE:
                full = True
                break
            new[origin[j]] = status == _ADDED
        done[i] = True
    counts[p] = count
    return end - (_keep_pending(keys, origin, j0, done) if full else 0)


@nb.njit(inline="always")
def _by_bucket(home, cap):
    """Indices of ``home`` in order of bucket ``home // _LINE``, stable (a counting sort)."""
    n_b = (cap + _LINE - 1) // _LINE + 1
    cnt = np.zeros(n_b, dtype=np.int64)
    for i in range(home.shape[0]):
        cnt[home[i] // _LINE + 1] += 1
    for k in range(1, n_b):
        cnt[k] += cnt[k - 1]
    order = np.empty(home.shape[0], dtype=np.int64)
    for i in range(home.shape[0]):
        b = home[i] // _LINE
        order[cnt[b]] = i
        cnt[b] += 1
    return order


@nb.njit(inline="always")
def _keep_pending(keys, origin, j0, done):
    """Move the keys not ``done`` to the end of ``keys[j0 : j0 + len(done)]``, in input order;
    return how many."""
    k = j0 + done.shape[0]
    for i in range(done.shape[0] - 1, -1, -1):
        if not done[i]:
            k -= 1
            for w in range(keys.shape[1]):
                keys[k, w] = keys[j0 + i, w]
            origin[k] = origin[j0 + i]
    return j0 + done.shape[0] - k


@nb.njit(cache=True)
def _rehash(old, new):
    """Move every key of sub-table ``old`` into the larger, empty ``new``."""
    cap = new.shape[0]
    for s in range(old.shape[0]):
        if _is_empty(old, s):
            continue
        d = _slot(_hash(old, s), cap)
        while not _is_empty(new, d):
            d += 1
            if d == cap:
                d = 0
        for w in range(old.shape[1]):
            new[d, w] = old[s, w]


@nb.njit(cache=True)
def _new_tables(caps, width):
    tables = nb.typed.List()
    for p in range(_PARTS):
        tables.append(np.zeros((caps[p], width), dtype=np.uint64))
    return tables


@nb.njit(cache=True)
def _grow(tables, grow, caps):
    """Replace sub-tables ``grow[i]`` by rehashed ones of ``caps[i]`` slots (in parallel)."""
    fresh = nb.typed.List()
    for i in range(grow.shape[0]):
        fresh.append(np.zeros((caps[i], tables[grow[i]].shape[1]), dtype=np.uint64))
    _rehash_all(tables, grow, fresh)
    for i in range(grow.shape[0]):
        tables[grow[i]] = fresh[i]


@nb.njit(parallel=True, cache=True)
def _rehash_all(tables, grow, fresh):
    for i in nb.prange(grow.shape[0]):
        k = np.int64(i)  # typed-list indices must be signed
        _rehash(tables[grow[k]], fresh[k])


@nb.njit(parallel=True, cache=True)
def _lookup(tables, zero, keys, out):
    for i in nb.prange(keys.shape[0]):
        z = _hash(keys, i)
        p = np.int64(z & np.uint64(_PARTS - 1))
        if _is_empty(keys, i):
            out[i] = zero[p]
            continue
        t = tables[p]
        cap = t.shape[0]
        s = _slot(z, cap)
        found = False
        while not _is_empty(t, s):
            if _same(t, s, keys, i):
                found = True
                break
            s += 1
            if s == cap:
                s = 0
        out[i] = found


@nb.njit(cache=True)
def _decode_all(tables, zero, layout, hi, lo):
    """Every stored key back in 128-bit form (for widening the layout)."""
    n = 0
    for p in range(len(tables)):
        t = tables[p]
        if zero[p]:  # the key stored as 0 (two typed branches: numba would unify
            if layout == _P16:  # uint64 with int64 literals to float64, rounding the words)
                hi[n], lo[n] = _p16_decode(np.uint64(0))
            else:
                hi[n], lo[n] = np.uint64(0), np.uint64(0)
            n += 1
        for s in range(t.shape[0]):
            if _is_empty(t, s):
                continue
            if layout == _P16:
                hi[n], lo[n] = _p16_decode(t[s, 0])
            else:
                hi[n], lo[n] = t[s, 0], np.uint64(0)
            n += 1
    return n


class TupleSet:
    """An exact set of 128-bit tuple keys that grows as needed; insertion reports first sightings.

    The keys live in 4096 sub-tables (open addressing, load factor below 5/8), each grown on its
    own (doubled while most keys are new, by half again otherwise), so growing never holds two
    copies of the whole set. An empty set sizes each sub-table for its share of its first call's
    keys (as if all were new), so a one-shot detection never grows. Keys that fit exactly in 64
    bits (small vocabularies or short windows) are stored in one word: 8 bytes per slot instead
    of 16. Memory is therefore 13 to 26 bytes per distinct key in one word (about 16 typical),
    26 to 51 in two.
    """

    _INITIAL_CAP = 8
    _SWEEP_SLOTS = 2048  # sub-tables from this many slots (16 KiB of one-word keys) are swept

    def __init__(self) -> None:
        self._layout: int | None = None
        self._zero = np.zeros(_PARTS, dtype=np.bool_)
        self._counts = np.zeros(_PARTS, dtype=np.int64)
        self._tables: Any = None

    def _make_tables(self, width: int, caps: np.ndarray) -> None:
        self._tables = _new_tables(caps, width)
        self._caps = caps

    def __len__(self) -> int:
        return int(self._counts.sum() + self._zero.sum())

    @property
    def layout(self) -> str:
        """How keys are stored: ``"p16"`` or ``"hi"`` (one word each, exact) or ``"full"``."""
        return "empty" if self._layout is None else _LAYOUT_NAMES[self._layout]

    @property
    def nbytes(self) -> int:
        """Bytes held by the sub-tables."""
        if self._tables is None:
            return 0
        return int(self._caps.sum()) * 8 * (2 if self._layout == _FULL else 1)

    def _keys(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        assert self._layout is not None
        out = np.empty((hi.shape[0], 2 if self._layout == _FULL else 1), dtype=np.uint64)
        return _encode(hi, lo, self._layout, out)

    def _fit(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Choose the layout, or widen it to 128 bits once a key does not fit."""
        if self._tables is None:  # nothing stored yet: the tables come with the first insert
            self._layout = int(_best_layout(hi, lo))
            return
        if self._layout == _FULL or self._fitting(hi, lo).all():
            return
        n = len(self)
        old_hi, old_lo = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64)
        _decode_all(self._tables, self._zero, self._layout, old_hi, old_lo)
        self._zero[:] = False
        self._counts[:] = 0
        self._layout = _FULL
        self._tables = None
        self._insert(old_hi, old_lo)

    def _fitting(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        out = np.empty(hi.shape[0], dtype=np.bool_)
        _fits(hi, lo, self._layout, out)
        return out

    def add(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Insert keys in order; True where a key was never seen before (first occurrence)."""
        hi = np.ascontiguousarray(hi, dtype=np.uint64).ravel()
        lo = np.ascontiguousarray(lo, dtype=np.uint64).ravel()
        if hi.shape != lo.shape:
            raise ValueError("hi and lo must have the same number of keys")
        if hi.shape[0] == 0:
            return np.zeros(0, dtype=np.bool_)
        self._fit(hi, lo)
        return self._insert(hi, lo)

    def _insert(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        new = np.empty(hi.shape[0], dtype=np.bool_)
        step = 1 << 22  # bounded batches bound the scratch arrays
        for i0 in range(0, hi.shape[0], step):
            b_hi, b_lo = hi[i0 : i0 + step], lo[i0 : i0 + step]
            k_sorted = np.empty((b_hi.shape[0], 2 if self._layout == _FULL else 1),
                                dtype=np.uint64)
            origin = np.empty(b_hi.shape[0], dtype=np.int32)  # batches < 2**31 keys
            starts = np.empty(_PARTS + 1, dtype=np.int64)
            _partition(b_hi, b_lo, self._layout, k_sorted, origin, starts)
            if self._tables is None:  # a fresh set: size each sub-table for its share of
                # the whole call, as if every key were new
                share = np.diff(starts) * (hi.shape[0] / b_hi.shape[0])
                caps = np.maximum(self._INITIAL_CAP, np.ceil(share * 8 / 5) + 1).astype(np.int64)
                self._make_tables(k_sorted.shape[1], caps)
            resume = starts[:-1].copy()
            before = self._counts.copy()
            while True:
                _insert(self._tables, self._zero, self._counts, k_sorted, origin, starts,
                        resume, new[i0 : i0 + step], self._SWEEP_SLOTS)
                stopped = np.nonzero(resume < starts[1:])[0]
                if not stopped.size:
                    break
                later = max(0, hi.shape[0] - i0 - step)  # keys of this call's later batches
                self._grow_parts(stopped, before, starts, resume, later)
        return new

    def _grow_parts(self, parts: np.ndarray, before: np.ndarray, starts: np.ndarray,
                    resume: np.ndarray, later: int = 0) -> None:
        """Grow full sub-tables to hold what is left of this call at the rate seen so far: the
        rest of this batch, and each sub-table's expected share of the ``later`` keys."""
        done = resume[parts] - starts[parts]
        fresh = self._counts[parts] - before[parts]
        rate = (fresh + 1) / (done + 1)
        left = starts[parts + 1] - resume[parts] + later // _PARTS
        cap = self._caps[parts]
        # mostly new keys: double (amortized O(1) moves per key); mostly repeats: half again
        grown = (cap * np.where(rate > 0.5, 2.0, 1.5)).astype(np.int64)
        expect = np.ceil(2 * (self._counts[parts] + rate * left)).astype(np.int64)
        most = 2 * (self._counts[parts] + left) + 8  # every key left new: load 1/2
        caps = np.maximum(grown, np.minimum(expect, most))
        width = 2 if self._layout == _FULL else 1
        # grow a sixteenth of the set at a time once it is large: never two copies of it all
        step = _PARTS // 16 if 8 * width * int(caps.sum()) > 64 << 20 else _PARTS
        for i in range(0, parts.shape[0], step):
            _grow(self._tables, parts[i : i + step].astype(np.int64), caps[i : i + step])
        self._caps[parts] = caps

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """True where a key is in the set (nothing is inserted)."""
        hi = np.ascontiguousarray(hi, dtype=np.uint64).ravel()
        lo = np.ascontiguousarray(lo, dtype=np.uint64).ravel()
        out = np.zeros(hi.shape[0], dtype=np.bool_)
        if self._tables is None or not hi.shape[0]:
            return out
        ok = self._fitting(hi, lo)
        if not ok.all():  # keys the layout cannot hold are not members
            out[ok] = self.contains(hi[ok], lo[ok])
            return out
        _lookup(self._tables, self._zero, self._keys(hi, lo), out)
        return out


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
    keys_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The positions of ``tokens`` [B, T] to score: a bool [B, T] mask.

    * ``mask`` marks real tokens; ``score_from`` [B] is the first completion column of each row
      (the prompt before it only feeds windows); positions before it are never scored.
    * ``dedup`` drops repeats, globally when ``seen`` is shared across calls.
    * ``skip_prompt_windows`` also drops completion positions whose window occurs in the prompt
      (text copied from the prompt carries the prompt's provenance, not the model's).
    * ``exclude`` [B, T] drops more positions (their tokens still feed windows).
    * ``keys_out``: scratch for the dedup keys, as :func:`tuple_keys`' ``out``.
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
                        candidates=candidates, out=keys_out)
    store = seen if seen is not None else TupleSet()
    if sel.all():  # the common case (no padding, no prompt): no gathered copies
        return store.add(hi, lo).reshape(x.shape)
    out = np.zeros(x.shape, dtype=bool)
    out[sel] = store.add(hi[sel], lo[sel])
    return out


__all__ = ["DEDUP_POLICIES", "DedupPolicy", "TupleSet", "check_dedup", "compact_keys",
           "expand_keys", "first_in_row", "in_row_set", "select_positions"]
