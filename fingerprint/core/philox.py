"""``philox4x32-10-v1``: bit-exact with vLLM 0.33's ``PhiloxPRF`` (its Gumbel watermark's PRF).

Definition (``docs/prf.md`` has the full spec and test vectors), with ``P(c, k)`` the Random123
Philox4x32-10 block function (Salmon et al., SC 2011) on a 4x32-bit counter and 2x32-bit key:

* key words ``(k0, k1)``: the 64-bit key's low and high halves;
* context absorption: ``s = (0x574D4358, h, 0, 0)``; for each block of four window words
  ``w[o..o+3]`` (``o = 0, 4, ...``; missing words of the last block are ``0xFFFFFFFF - i``),
  ``s = P(s ^ w[o..o+3], (k0 ^ o, k1))``;
* candidate ``v``: ``y = P((v >> 2, s0, s1, s2), (k0 ^ s3, k1 ^ 0x574D544B))``, output word
  ``y[v & 3]``;
* uniform ``u = float32(((y >> 8) + 1) / (2**24 + 1))``.

Philox is a fast counter-based generator, not a cryptographic PRF, and its key is 64 bits: use it
for vLLM interoperability; the default ``siphash24-v1`` is the stronger choice.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from fingerprint.core.prf import PRF, register_prf
from fingerprint.keys import KeyPurpose, WatermarkKey

U64 = np.uint64
_M32 = U64(0xFFFFFFFF)
_M0 = U64(0xD2511F53)
_M1 = U64(0xCD9E8D57)
_W0 = U64(0x9E3779B9)
_W1 = U64(0xBB67AE85)
CONTEXT_DOMAIN = 0x574D4358
TOKEN_DOMAIN = 0x574D544B
SEGMENT = 1 << 15


# -- the scalar algorithm (numba); every value is a uint64 holding 32 bits ----------------------
@nb.njit(inline="always")
def _philox(c0: Any, c1: Any, c2: Any, c3: Any, k0: Any, k1: Any) -> tuple:
    for _ in range(10):  # the key bump after the last round is never used, so it is harmless
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> U64(32)) ^ c1 ^ k0, p1 & _M32,
                          (p0 >> U64(32)) ^ c3 ^ k1, p0 & _M32)
        k0 = (k0 + _W0) & _M32
        k1 = (k1 + _W1) & _M32
    return c0, c1, c2, c3


@nb.njit(inline="always")
def _pick(y0: Any, y1: Any, y2: Any, y3: Any, i: Any) -> Any:
    r = y0
    r = y1 if i == U64(1) else r
    r = y2 if i == U64(2) else r
    return y3 if i == U64(3) else r


@nb.njit(inline="always")
def _to_uniform(y: Any) -> np.float32:
    return np.float32((np.float64(y >> U64(8)) + 1.0) / 16777217.0)


@nb.njit(inline="always")
def _entry(x: Any, valid: Any, b: int, p: int, k: int, h: int) -> Any:
    """Window word ``k`` (0-based) of a window that starts at column ``p``; padding past h."""
    if k >= h:
        return _M32 - U64(k % 4)
    w = U64(x[b, p + k]) & _M32
    if valid is not None:
        w = w if valid[b, p + k] else _M32
    return w


@nb.njit(inline="always")
def _absorb(x: Any, valid: Any, b: int, p: int, h: int, k0: Any, k1: Any) -> tuple:
    s0, s1, s2, s3 = U64(CONTEXT_DOMAIN), U64(h), U64(0), U64(0)
    for o in range(0, h, 4):
        s0, s1, s2, s3 = _philox(
            s0 ^ _entry(x, valid, b, p, o, h), s1 ^ _entry(x, valid, b, p, o + 1, h),
            s2 ^ _entry(x, valid, b, p, o + 2, h), s3 ^ _entry(x, valid, b, p, o + 3, h),
            k0 ^ U64(o), k1)
    return s0, s1, s2, s3


@nb.njit(parallel=True, cache=True)
def _score_kernel(x: Any, cand: Any, valid: Any, first: int, maxid: int, hspec: tuple,
                  k0: Any, k1: Any, out: Any) -> int:
    """Values of positions ``t >= max(first, h)``; ``len(hspec)`` is the (constant) width."""
    h = len(hspec)
    n_rows, n_pos = x.shape
    n_seg = (n_pos + SEGMENT - 1) // SEGMENT
    bad = 0
    for item in nb.prange(n_rows * n_seg):
        b = item // n_seg
        t0 = max((item % n_seg) * SEGMENT, first, h)
        t1 = min(n_pos, (item % n_seg) * SEGMENT + SEGMENT)
        for t in range(t0, t1):
            s0, s1, s2, s3 = _absorb(x, valid, b, t - h, h, k0, k1)
            c = cand[b, t]
            v = U64(c) & _M32
            y0, y1, y2, y3 = _philox(v >> U64(2), s0, s1, s2, k0 ^ s3, k1 ^ U64(TOKEN_DOMAIN))
            u = _to_uniform(_pick(y0, y1, y2, y3, v & U64(3)))
            if valid is None:
                bad += (c < 0) | (c > maxid)
                out[b, t] = u
            else:
                bad += ((c < 0) | (c > maxid)) & valid[b, t]
                out[b, t] = u if valid[b, t] else np.float32(np.nan)
    return bad


@nb.njit(parallel=True, cache=True)
def _row_kernel(ctx: Any, hspec: tuple, k0: Any, k1: Any, out: Any) -> None:
    """Every token's value after each window; one Philox call yields four tokens."""
    h = len(hspec)
    n_rows, n_vocab = out.shape
    n_groups = (n_vocab + 3) // 4
    n_seg = (n_groups + SEGMENT - 1) // SEGMENT
    for item in nb.prange(n_rows * n_seg):
        b = item // n_seg
        g0 = (item % n_seg) * SEGMENT
        g1 = min(n_groups, g0 + SEGMENT)
        s0, s1, s2, s3 = _absorb(ctx, None, b, 0, h, k0, k1)
        kk0 = k0 ^ s3
        kk1 = k1 ^ U64(TOKEN_DOMAIN)
        for g in range(g0, min(g1, n_vocab // 4)):
            y0, y1, y2, y3 = _philox(U64(g), s0, s1, s2, kk0, kk1)
            out[b, 4 * g] = _to_uniform(y0)
            out[b, 4 * g + 1] = _to_uniform(y1)
            out[b, 4 * g + 2] = _to_uniform(y2)
            out[b, 4 * g + 3] = _to_uniform(y3)
        if g1 == n_groups and n_vocab % 4:
            g = n_groups - 1
            y0, y1, y2, y3 = _philox(U64(g), s0, s1, s2, kk0, kk1)
            for v in range(4 * g, n_vocab):
                out[b, v] = _to_uniform(_pick(y0, y1, y2, y3, U64(v & 3)))


# -- the same algorithm as torch int64 ops ------------------------------------------------------
_MASK = 0xFFFFFFFF


def _t_philox(c: list, k0: Any, k1: Any) -> list:
    c0, c1, c2, c3 = c
    for r in range(10):
        p0 = c0 * int(_M0)  # < 2**64: wraps in int64, and the bits we keep are exact
        p1 = c2 * int(_M1)
        c0, c1, c2, c3 = (((p1 >> 32) & _MASK) ^ c1 ^ k0, p1 & _MASK,
                          ((p0 >> 32) & _MASK) ^ c3 ^ k1, p0 & _MASK)
        if r != 9:
            k0 = (k0 + int(_W0)) & _MASK
            k1 = (k1 + int(_W1)) & _MASK
    return [c0, c1, c2, c3]


def torch_uniform(windows: Any, tokens: Any, words: tuple[int, ...]) -> Any:
    """Philox uniforms with torch int64 ops; windows [..., h], tokens broadcast to [...]."""
    import torch

    h = windows.shape[-1]
    k0, k1 = int(words[0]), int(words[1])
    prefix = windows.shape[:-1]
    dev = windows.device
    ctx = windows.long() & _MASK
    s = [torch.full(prefix, v, dtype=torch.int64, device=dev) for v in (CONTEXT_DOMAIN, h, 0, 0)]
    for o in range(0, h, 4):
        block = [ctx[..., o + i] if o + i < h else _MASK - i for i in range(4)]
        s = _t_philox([s[i] ^ block[i] for i in range(4)], k0 ^ o, k1)
    tok = tokens.long() & _MASK
    shape = torch.broadcast_shapes(prefix, tok.shape)
    y = _t_philox([(tok >> 2).expand(shape)] + [w.expand(shape) for w in s[:3]],
                  (s[3] ^ k0).expand(shape), k1 ^ TOKEN_DOMAIN)
    idx = (tok & 3).expand(shape)
    word = torch.where(idx == 1, y[1], y[0])
    word = torch.where(idx == 2, y[2], word)
    word = torch.where(idx == 3, y[3], word)
    return (((word >> 8).double() + 1.0) / 16777217.0).float()


@register_prf
class PhiloxPRF(PRF):
    """Philox4x32-10 as vLLM 0.33 defines it: vLLM-compatible, 64-bit key, not cryptographic."""

    name = "philox4x32-10-v1"
    aliases = ("philox",)
    uniform_dtype = np.float32
    levels = 2**24

    def _derive_words(self, key: WatermarkKey, scheme: str) -> tuple[int, ...]:
        if key.kind == "int64":  # vLLM interoperability: the integer is the Philox key, raw
            value = key.int64_value()
        else:
            value = int.from_bytes(key.subkey(KeyPurpose(self.name, scheme), 8), "little")
        return U64(value & 0xFFFFFFFF), U64(value >> 32)

    _kind = 1  # fingerprint.core.triton_prf.PHILOX
    _score_kernel = staticmethod(_score_kernel)
    _row_kernel = staticmethod(_row_kernel)

    @classmethod
    def _torch_uniform(cls, windows: Any, tokens: Any, words: tuple[int, ...]) -> Any:
        return torch_uniform(windows, tokens, words)

    @classmethod
    def level_uniform(cls, level: np.ndarray) -> np.ndarray:
        m = np.asarray(level, dtype=np.uint64).astype(np.float64)
        return ((m + 1.0) / 16777217.0).astype(np.float32)


def philox_words(key: int, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Raw Philox output words (uint32 values) for explicit windows [N, h] and tokens [N].

    Plain-Python reference used by the spec's vectors; slow, for checking only.
    """
    m = 0xFFFFFFFF

    def block(c: list[int], k: list[int]) -> list[int]:
        k0, k1 = k
        for r in range(10):
            p0 = 0xD2511F53 * c[0]
            p1 = 0xCD9E8D57 * c[2]
            c = [((p1 >> 32) ^ c[1] ^ k0) & m, p1 & m, ((p0 >> 32) ^ c[3] ^ k1) & m, p0 & m]
            if r != 9:
                k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
        return c

    out = []
    k0, k1 = key & m, key >> 32
    for ctx, tok in zip(np.asarray(contexts).tolist(), np.asarray(tokens).tolist(), strict=True):
        h = len(ctx)
        s = [CONTEXT_DOMAIN, h, 0, 0]
        for o in range(0, h, 4):
            w = [(ctx[o + i] & m) if o + i < h else m - i for i in range(4)]
            s = block([s[i] ^ w[i] for i in range(4)], [k0 ^ o, k1])
        v = tok & m
        y = block([v >> 2, s[0], s[1], s[2]], [k0 ^ s[3], k1 ^ TOKEN_DOMAIN])
        out.append(y[v & 3])
    return np.array(out, dtype=np.uint64)


__all__ = ["PhiloxPRF", "philox_words"]
