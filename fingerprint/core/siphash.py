"""``siphash24-v1``: the project's default PRF, SipHash-2-4 keyed with a 128-bit HKDF subkey.

Definition (``docs/prf.md`` has the full spec and test vectors). For a window
``(c_1, ..., c_h)`` and candidate token ``v``:

* message = ``c_1 || ... || c_h || v``, each a little-endian 32-bit word (``-1`` -> ``0xFFFFFFFF``),
  so ``4 (h + 1)`` bytes; the width ``h`` is bound through SipHash's length byte;
* ``x = SipHash-2-4(k, message)`` (Aumasson and Bernstein, 2012), a 64-bit word, with
  ``k = HKDF-SHA256(master, info = "siphash24-v1" + scheme)`` (16 bytes, little-endian k0, k1);
* uniform ``u = min(((x >> 11) + 0.5) * 2**-53, 1 - 2**-53)`` in float64 (:func:`level_to_uniform`),
  strictly inside (0, 1).

SipHash-2-4 is a pseudo-random function under a secret 128-bit key, which is what a watermark
needs: without the key, the green lists and Gumbel draws are indistinguishable from random.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from fingerprint.core import gumbel_max as gm
from fingerprint.core.prf import PRF, register_prf
from fingerprint.keys import KeyPurpose, WatermarkKey

U64 = np.uint64
_M32 = U64(0xFFFFFFFF)
_C0 = U64(0x736F6D6570736575)
_C1 = U64(0x646F72616E646F6D)
_C2 = U64(0x6C7967656E657261)
_C3 = U64(0x7465646279746573)
_SCALE = 1.0 / 9007199254740992.0  # 2**-53
_TOP = 1.0 - _SCALE  # 1 - 2**-53, the largest float64 below 1: the top level's uniform
SEGMENT = 1 << 15  # positions per parallel work item


# -- the scalar algorithm (numba) ---------------------------------------------------------------
@nb.njit(inline="always")
def _rotl(x: Any, b: int) -> Any:
    return (x << U64(b)) | (x >> U64(64 - b))


@nb.njit(inline="always")
def _round(v0: Any, v1: Any, v2: Any, v3: Any) -> tuple:
    v0 += v1
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16) ^ v2
    v0 += v3
    v3 = _rotl(v3, 21) ^ v0
    v2 += v1
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@nb.njit(inline="always")
def _compress(v0: Any, v1: Any, v2: Any, v3: Any, m: Any) -> tuple:
    v3 ^= m
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ m, v1, v2, v3


@nb.njit(inline="always")
def _finalize(v0: Any, v1: Any, v2: Any, v3: Any) -> Any:
    v2 ^= U64(0xFF)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@nb.njit(inline="always")
def _to_uniform(x: Any) -> float:
    """The uniform of the 64-bit word ``x``, as :func:`level_to_uniform` maps level ``x >> 11``."""
    return min((np.float64(x >> U64(11)) + 0.5) * _SCALE, _TOP)


@nb.njit(inline="always")
def _word(x: Any, cand: Any, valid: Any, b: int, t: int, k: int, h: int) -> Any:
    """Message word ``k`` of position ``t``: window entries, then the candidate (k == h)."""
    if k == h:
        return U64(cand[b, t]) & _M32
    w = U64(x[b, t - h + k]) & _M32
    if valid is not None:
        w = w if valid[b, t - h + k] else _M32
    return w


@nb.njit(inline="always")
def _value(x: Any, cand: Any, valid: Any, b: int, t: int, h: int, k0: Any, k1: Any) -> float:
    n_words = h + 1
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    for j in range(n_words // 2):
        m = _word(x, cand, valid, b, t, 2 * j, h) | (
            _word(x, cand, valid, b, t, 2 * j + 1, h) << U64(32))
        v0, v1, v2, v3 = _compress(v0, v1, v2, v3, m)
    last = U64((4 * n_words) & 0xFF) << U64(56)
    if n_words % 2:
        last |= _word(x, cand, valid, b, t, h, h)
    v0, v1, v2, v3 = _compress(v0, v1, v2, v3, last)
    return _to_uniform(_finalize(v0, v1, v2, v3))


@nb.njit(parallel=True, cache=True)
def _score_kernel(x: Any, cand: Any, valid: Any, first: int, maxid: int, hspec: tuple,
                  k0: Any, k1: Any, out: Any) -> int:
    """Values of positions ``t >= max(first, h)`` of every row; returns the bad-token count.

    ``hspec`` is a tuple of length ``h``: its length is a compile-time constant for numba, so
    each width gets its own fully unrolled, vectorized (and disk-cached) kernel.
    """
    h = len(hspec)
    n_rows, n_pos = x.shape
    n_seg = (n_pos + SEGMENT - 1) // SEGMENT
    bad = 0
    for item in nb.prange(n_rows * n_seg):
        b = item // n_seg
        t0 = max((item % n_seg) * SEGMENT, first, h)
        t1 = min(n_pos, (item % n_seg) * SEGMENT + SEGMENT)
        for t in range(t0, t1):
            c = cand[b, t]
            u = _value(x, cand, valid, b, t, h, k0, k1)
            if valid is None:
                bad += (c < 0) | (c > maxid)
                out[b, t] = u
            else:
                bad += ((c < 0) | (c > maxid)) & valid[b, t]
                out[b, t] = u if valid[b, t] else np.nan
    return bad


@nb.njit(inline="always")
def _absorb(ctx: Any, b: int, h: int, k0: Any, k1: Any) -> tuple:
    """The state after the whole-word pairs of window ``ctx[b]``, and its pending last word."""
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    for j in range(h // 2):
        m = (U64(ctx[b, 2 * j]) & _M32) | ((U64(ctx[b, 2 * j + 1]) & _M32) << U64(32))
        v0, v1, v2, v3 = _compress(v0, v1, v2, v3, m)
    return v0, v1, v2, v3, U64(ctx[b, h - 1]) & _M32


@nb.njit(inline="always")
def _row_values(state: tuple, h: int, t0: int, out: Any) -> None:
    """``out[j]`` = the value of token ``t0 + j``, after ``_absorb``."""
    v0, v1, v2, v3, pending = state
    length_byte = U64((4 * (h + 1)) & 0xFF) << U64(56)
    for j in range(out.shape[0]):  # local indices: proven in range, so the loop vectorizes
        t = t0 + j
        if h % 2:
            w0, w1, w2, w3 = _compress(v0, v1, v2, v3, pending | (U64(t) << U64(32)))
            w0, w1, w2, w3 = _compress(w0, w1, w2, w3, length_byte)
        else:
            w0, w1, w2, w3 = _compress(v0, v1, v2, v3, length_byte | U64(t))
        out[j] = _to_uniform(_finalize(w0, w1, w2, w3))


@nb.njit(parallel=True, cache=True)
def _row_kernel(ctx: Any, hspec: tuple, k0: Any, k1: Any, out: Any) -> None:
    """Values of every token ``0..V-1`` after each window ``ctx[b]``; context absorbed once."""
    h = len(hspec)
    n_rows, n_vocab = out.shape
    n_seg = (n_vocab + SEGMENT - 1) // SEGMENT
    for item in nb.prange(n_rows * n_seg):
        b = item // n_seg
        t0 = (item % n_seg) * SEGMENT
        _row_values(_absorb(ctx, b, h, k0, k1), h, t0, out[b, t0:min(n_vocab, t0 + SEGMENT)])


@nb.njit(parallel=True, cache=True)
def _gumbel_kernel(ctx: Any, hspec: tuple, k0: Any, k1: Any, logits: Any, lgi: Any, shift: int,
                   mask: int, tops_i: Any, tops: Any, thr: Any, out: Any) -> None:
    """The Gumbel-max choice of each row (:func:`fingerprint.core.gumbel_max.choose_row`), a
    row per work item: its uniforms stay in the core's cache, and the choice runs in parallel.
    The arguments after the key words are what :func:`fingerprint.core.gumbel_max.choice_args`
    returns."""
    h = len(hspec)
    n_rows, n_vocab = logits.shape
    for b in nb.prange(n_rows):
        u = np.empty(n_vocab)
        _row_values(_absorb(ctx, b, h, k0, k1), h, 0, u)
        out[b] = gm.choose_row(logits[b], lgi[b], shift, mask, u, thr, tops_i[b], tops[b])


# -- the same algorithm as torch tensor ops (CUDA, or CPU when asked) ---------------------------
def _signed(w: int) -> int:
    w = int(w)
    return w - (1 << 64) if w >= 1 << 63 else w


def _t_rotl(x: Any, b: int) -> Any:
    return (x << b) | ((x >> (64 - b)) & ((1 << b) - 1))


def _t_round(v: list) -> None:
    v[0] = v[0] + v[1]
    v[1] = _t_rotl(v[1], 13) ^ v[0]
    v[0] = _t_rotl(v[0], 32)
    v[2] = v[2] + v[3]
    v[3] = _t_rotl(v[3], 16) ^ v[2]
    v[0] = v[0] + v[3]
    v[3] = _t_rotl(v[3], 21) ^ v[0]
    v[2] = v[2] + v[1]
    v[1] = _t_rotl(v[1], 17) ^ v[2]
    v[2] = _t_rotl(v[2], 32)


def _t_compress(v: list, m: Any) -> None:
    v[3] = v[3] ^ m
    _t_round(v)
    _t_round(v)
    v[0] = v[0] ^ m


def torch_uniform(windows: Any, tokens: Any, words: tuple[int, ...]) -> Any:
    """SipHash-2-4 uniforms with torch int64 ops; windows [..., h], tokens broadcast to [...]."""
    import torch

    h = windows.shape[-1]
    k0, k1 = _signed(words[0]), _signed(words[1])
    prefix = windows.shape[:-1]
    full = lambda c: torch.full(prefix, c, dtype=torch.int64, device=windows.device)  # noqa: E731
    v = [full(k0 ^ int(_C0)), full(k1 ^ int(_C1)), full(k0 ^ int(_C2)), full(k1 ^ int(_C3))]
    ctx = windows.long() & 0xFFFFFFFF
    for j in range(h // 2):
        _t_compress(v, ctx[..., 2 * j] | (ctx[..., 2 * j + 1] << 32))
    tok = tokens.long() & 0xFFFFFFFF
    shape = torch.broadcast_shapes(prefix, tok.shape)
    v = [t.expand(shape) for t in v]
    length_byte = ((4 * (h + 1)) & 0xFF) << 56
    length_byte = _signed(length_byte)
    if h % 2:
        _t_compress(v, ctx[..., h - 1] | (tok << 32))
        _t_compress(v, torch.full_like(v[0], length_byte))
    else:
        _t_compress(v, tok | length_byte)
    v[2] = v[2] ^ 0xFF
    for _ in range(4):
        _t_round(v)
    return torch_word_uniform(v[0] ^ v[1] ^ v[2] ^ v[3])


def torch_word_uniform(x: Any) -> Any:
    """The float64 uniforms of the 64-bit words ``x`` (a torch int64 tensor holding the bits), as
    :func:`level_to_uniform` maps their levels ``x >> 11``."""
    return ((((x >> 11) & ((1 << 53) - 1)).double() + 0.5) * _SCALE).clamp_(max=_TOP)


def level_to_uniform(level: np.ndarray) -> np.ndarray:
    """The float64 uniform of each level ``k`` in ``[0, 2**53)``: ``min((k + 0.5) * 2**-53,
    1 - 2**-53)``, every operation in float64.

    Below ``2**52`` this is ``(k + 0.5) / 2**53`` exactly. From ``2**52`` on, ``k + 0.5`` is a tie
    that rounds to the even one of ``k`` and ``k + 1``, so levels ``2m - 1`` and ``2m`` share the
    value ``2m / 2**53`` (level ``2**52`` alone gives 0.5). The top level ``2**53 - 1`` would round
    to 1; the ``min`` makes it ``1 - 2**-53``, a value no other level takes.
    """
    return np.minimum((np.asarray(level, dtype=np.uint64).astype(np.float64) + 0.5) * _SCALE,
                      _TOP)


@register_prf
class SipHashPRF(PRF):
    """SipHash-2-4 under a 128-bit HKDF subkey: the default, a real keyed PRF."""

    name = "siphash24-v1"
    aliases = ("siphash",)
    uniform_dtype = np.float64
    levels = 2**53

    def _derive_words(self, key: WatermarkKey, scheme: str) -> tuple[int, ...]:
        raw = key.subkey(KeyPurpose(self.name, scheme), 16)
        return U64(int.from_bytes(raw[:8], "little")), U64(int.from_bytes(raw[8:], "little"))

    _kind = 0  # fingerprint.core.triton_prf.SIPHASH
    _score_kernel = staticmethod(_score_kernel)
    _row_kernel = staticmethod(_row_kernel)
    _gumbel_kernel = staticmethod(_gumbel_kernel)

    @classmethod
    def _torch_uniform(cls, windows: Any, tokens: Any, words: tuple[int, ...]) -> Any:
        return torch_uniform(windows, tokens, words)

    @classmethod
    def level_uniform(cls, level: np.ndarray) -> np.ndarray:
        return level_to_uniform(level)


def siphash24(key16: bytes, message: bytes) -> int:
    """Plain-Python SipHash-2-4 of ``message`` under a 16-byte key: the spec's reference."""
    mask = (1 << 64) - 1

    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & mask

    def rnd(v: list[int]) -> None:
        v[0] = (v[0] + v[1]) & mask
        v[1] = rotl(v[1], 13) ^ v[0]
        v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & mask
        v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & mask
        v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & mask
        v[1] = rotl(v[1], 17) ^ v[2]
        v[2] = rotl(v[2], 32)

    k0 = int.from_bytes(key16[:8], "little")
    k1 = int.from_bytes(key16[8:16], "little")
    v = [k0 ^ int(_C0), k1 ^ int(_C1), k0 ^ int(_C2), k1 ^ int(_C3)]
    n_full = len(message) // 8
    blocks = [int.from_bytes(message[8 * i : 8 * i + 8], "little") for i in range(n_full)]
    tail = message[8 * n_full :]
    blocks.append(((len(message) & 0xFF) << 56) | int.from_bytes(tail, "little"))
    for m in blocks:
        v[3] ^= m
        rnd(v)
        rnd(v)
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        rnd(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


__all__ = ["SipHashPRF", "level_to_uniform", "siphash24"]
