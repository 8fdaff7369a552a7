"""Fused Triton kernels for both PRFs on CUDA tensors: one pass, everything in registers.

The eager torch ops of ``siphash.py`` / ``philox.py`` launch a hundred-odd kernels per call and
move every intermediate word through GPU memory; these kernels read the token ids (or the logits)
once and write the result once. They compute the same integer words and the same float mapping
as the numba kernels, bit for bit (``tests/test_cuda.py`` checks it on a GPU, and under
``TRITON_INTERPRET=1`` on any machine):

* :func:`score`: the value of every position of ``x`` [B, T] in its own window (``PRF.score``,
  ``PRF.pairs``);
* :func:`row`: the value of every vocabulary entry after each window [B, h] (``PRF.row``);
* :func:`green_add`: ``logits + delta`` where the value is below ``gamma`` (KGW's step), without
  writing the values;
* :func:`gumbel_argmax`: ``argmax(logits - log(-log u))`` per row (the Gumbel step), reduced in
  the kernel, without writing the values.

KGW's comparison is done on the PRF's integer level (``level < threshold``, with the threshold
found once from the float mapping), which is the same test as ``u < gamma`` in ``u``'s dtype.
The Gumbel noise uses CUDA's ``log`` (libdevice), the function torch's CUDA ``log`` calls.

Kinds: ``0`` is ``siphash24-v1`` (uint64 words, float64 values), ``1`` is ``philox4x32-10-v1``
(uint32 words, float32 values). Key words travel in a small device tensor, never as constants
of a compiled kernel.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

SIPHASH, PHILOX = 0, 1
# the interpreter (CPU) has no libdevice; compiled, libdevice's log is the one torch's CUDA uses
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

# (vocabulary entries, or Philox's groups of four, per program; warps) of the row kernel, by
# (PRF kind, mode), tuned on an H100 at B = 256, V = 152,064
_ROW_SHAPES = {(0, 0): (1024, 4), (0, 1): (2048, 4), (0, 2): (1024, 4),
               (1, 0): (1024, 4), (1, 1): (256, 2), (1, 2): (1024, 8)}
_SCORE_BLOCK = 1024  # positions per program
_SIP_TOP = tl.constexpr(1.0 - 2.0**-53)  # the largest float64 below 1: SipHash's top level


# -- SipHash-2-4 (uint64) ----------------------------------------------------------------------
@triton.jit
def _rotl(x, b: tl.constexpr):
    return (x << b) | (x >> (64 - b))


@triton.jit
def _sip_round(v0, v1, v2, v3):
    v0 = v0 + v1
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = v2 + v3
    v3 = _rotl(v3, 16) ^ v2
    v0 = v0 + v3
    v3 = _rotl(v3, 21) ^ v0
    v2 = v2 + v1
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@triton.jit
def _sip_compress(v0, v1, v2, v3, m):
    v3 = v3 ^ m
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ m, v1, v2, v3


@triton.jit
def _sip_finalize(v0, v1, v2, v3):
    v2 = v2 ^ 0xFF
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@triton.jit
def _sip_init(key_ptr):
    k0 = tl.load(key_ptr).to(tl.uint64, bitcast=True)
    k1 = tl.load(key_ptr + 1).to(tl.uint64, bitcast=True)
    return k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, \
        k1 ^ 0x7465646279746573


@triton.jit
def _sip_uniform(x):
    """``min(((x >> 11) + 0.5) * 2**-53, 1 - 2**-53)`` in float64
    (:func:`fingerprint.core.siphash.level_to_uniform`)."""
    half = tl.full([], 0.5, tl.float64)
    u = ((x >> 11).to(tl.float64) + half) * tl.full([], 2.0**-53, tl.float64)
    return tl.minimum(u, tl.full([], _SIP_TOP, tl.float64))


# -- Philox4x32-10 (uint32) --------------------------------------------------------------------
@triton.jit
def _u32(value: tl.constexpr):
    return tl.full([], value, tl.uint32)


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    for _r in tl.static_range(10):
        lo0 = c0 * _u32(0xD2511F53)
        hi0 = tl.umulhi(c0, _u32(0xD2511F53))
        lo1 = c2 * _u32(0xCD9E8D57)
        hi1 = tl.umulhi(c2, _u32(0xCD9E8D57))
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _u32(0x9E3779B9)
        k1 = k1 + _u32(0xBB67AE85)
    return c0, c1, c2, c3


@triton.jit
def _philox_uniform(y):
    """``float32(((y >> 8) + 1) / (2**24 + 1))`` (the division in float64), without float64.

    With ``n = (y >> 8) + 1`` in [1, 2**24], ``a = n / 2**24`` is exact in float32 and the
    quotient lies between 1/2 and 1 unit in the last place below ``a``, so it rounds to the
    float32 just below ``a`` (checked for all 2**24 values in the tests).
    """
    a = ((y >> 8) + 1).to(tl.float32) * tl.full([], 2.0**-24, tl.float32)
    return (a.to(tl.uint32, bitcast=True) - 1).to(tl.float32, bitcast=True)


@triton.jit
def _philox_keys(key_ptr):
    return (tl.load(key_ptr).to(tl.uint32), tl.load(key_ptr + 1).to(tl.uint32))


# -- window words ------------------------------------------------------------------------------
@triton.jit
def _window_word(x_row, v_row, t, lane, k: tl.constexpr, H: tl.constexpr,
                 HAS_VALID: tl.constexpr):
    """Word ``k`` of the window before position ``t`` (uint64 holding 32 bits); -1 past the
    start or where the mask hides the token."""
    idx = t - H + k
    inside = lane & (idx >= 0)
    w = tl.load(x_row + idx, mask=inside, other=-1)
    if HAS_VALID:
        ok = tl.load(v_row + idx, mask=inside, other=1)
        w = tl.where(ok != 0, w, -1)
    return w.to(tl.int64).to(tl.uint64, bitcast=True) & 0xFFFFFFFF


@triton.jit
def _message_word(x_row, v_row, t, lane, cand, k: tl.constexpr, H: tl.constexpr,
                  HAS_VALID: tl.constexpr):
    if k == H:
        return cand
    else:
        return _window_word(x_row, v_row, t, lane, k, H, HAS_VALID)


@triton.jit
def _philox_pad_word(k: tl.constexpr):
    """Philox's window block word ``k`` past the window's end (the spec's padding)."""
    return _u32(0xFFFFFFFF - k % 4)


@triton.jit
def _philox_block_word(x_row, v_row, t, lane, k: tl.constexpr, H: tl.constexpr,
                       HAS_VALID: tl.constexpr):
    if k < H:
        return _window_word(x_row, v_row, t, lane, k, H, HAS_VALID).to(tl.uint32)
    else:
        return _philox_pad_word(k)


# -- score: every position of a [B, T] matrix ---------------------------------------------------
@triton.jit
def _score_kernel(x_ptr, cand_ptr, valid_ptr, out_ptr, key_ptr, T, first,
                  stride_x, stride_c, stride_v, stride_o,
                  H: tl.constexpr, KIND: tl.constexpr, HAS_VALID: tl.constexpr,
                  BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = (t < T) & (t >= first)
    x_row = x_ptr + b * stride_x
    v_row = valid_ptr + b * stride_v
    cand = tl.load(cand_ptr + b * stride_c + t, mask=lane, other=0)
    cand = cand.to(tl.int64).to(tl.uint64, bitcast=True) & 0xFFFFFFFF
    if KIND == 0:
        v0, v1, v2, v3 = _sip_init(key_ptr)
        for j in tl.static_range((H + 1) // 2):
            lo = _message_word(x_row, v_row, t, lane, cand, 2 * j, H, HAS_VALID)
            hi = _message_word(x_row, v_row, t, lane, cand, 2 * j + 1, H, HAS_VALID)
            v0, v1, v2, v3 = _sip_compress(v0, v1, v2, v3, lo | (hi << 32))
        last = tl.full([], ((4 * (H + 1)) & 0xFF) << 56, tl.uint64)
        if (H + 1) % 2 == 1:
            last = last | cand
        v0, v1, v2, v3 = _sip_compress(v0, v1, v2, v3, last)
        u = _sip_uniform(_sip_finalize(v0, v1, v2, v3))
    else:
        k0, k1 = _philox_keys(key_ptr)
        s0 = tl.full([BLOCK], 0x574D4358, tl.uint32)
        s1 = tl.full([BLOCK], H, tl.uint32)
        s2 = tl.full([BLOCK], 0, tl.uint32)
        s3 = tl.full([BLOCK], 0, tl.uint32)
        for o in tl.static_range(0, H, 4):
            s0, s1, s2, s3 = _philox(
                s0 ^ _philox_block_word(x_row, v_row, t, lane, o, H, HAS_VALID),
                s1 ^ _philox_block_word(x_row, v_row, t, lane, o + 1, H, HAS_VALID),
                s2 ^ _philox_block_word(x_row, v_row, t, lane, o + 2, H, HAS_VALID),
                s3 ^ _philox_block_word(x_row, v_row, t, lane, o + 3, H, HAS_VALID),
                k0 ^ _u32(o), k1)
        v = cand.to(tl.uint32)
        y0, y1, y2, y3 = _philox(v >> 2, s0, s1, s2, k0 ^ s3, k1 ^ _u32(0x574D544B))
        i = v & 3
        y = tl.where(i == 1, y1, y0)
        y = tl.where(i == 2, y2, y)
        y = tl.where(i == 3, y3, y)
        u = _philox_uniform(y)
    if HAS_VALID:
        ok = tl.load(valid_ptr + b * stride_v + t, mask=lane, other=0)
        u = tl.where(ok != 0, u, float("nan"))
    tl.store(out_ptr + b * stride_o + t, u, mask=lane)


# -- rows: every vocabulary entry after a window -------------------------------------------------
@triton.jit
def _sip_row_state(ctx_row, key_ptr, H: tl.constexpr):
    """The SipHash state after the window's full message blocks, and the pending odd word."""
    v0, v1, v2, v3 = _sip_init(key_ptr)
    for j in tl.static_range(H // 2):
        lo = tl.load(ctx_row + 2 * j).to(tl.int64).to(tl.uint64, bitcast=True) & 0xFFFFFFFF
        hi = tl.load(ctx_row + 2 * j + 1).to(tl.int64).to(tl.uint64, bitcast=True) & 0xFFFFFFFF
        v0, v1, v2, v3 = _sip_compress(v0, v1, v2, v3, lo | (hi << 32))
    pending = tl.load(ctx_row + H - 1).to(tl.int64).to(tl.uint64, bitcast=True) & 0xFFFFFFFF
    return v0, v1, v2, v3, pending


@triton.jit
def _sip_row_level(v0, v1, v2, v3, pending, tok, H: tl.constexpr):
    """The 64-bit SipHash output word of candidate tokens ``tok`` (uint64)."""
    length = tl.full([], ((4 * (H + 1)) & 0xFF) << 56, tl.uint64)
    if H % 2 == 1:
        w0, w1, w2, w3 = _sip_compress(v0, v1, v2, v3, pending | (tok << 32))
        w0, w1, w2, w3 = _sip_compress(w0, w1, w2, w3, length)
    else:
        w0, w1, w2, w3 = _sip_compress(v0, v1, v2, v3, length | tok)
    return _sip_finalize(w0, w1, w2, w3)


@triton.jit
def _philox_row_state(ctx_row, key_ptr, H: tl.constexpr):
    """Philox's context state after absorbing the window, and the token-call keys."""
    k0, k1 = _philox_keys(key_ptr)
    s0 = _u32(0x574D4358)
    s1 = _u32(H)
    s2 = _u32(0)
    s3 = _u32(0)
    for o in tl.static_range(0, H, 4):
        s0, s1, s2, s3 = _philox(
            s0 ^ _philox_ctx_word(ctx_row, o, H), s1 ^ _philox_ctx_word(ctx_row, o + 1, H),
            s2 ^ _philox_ctx_word(ctx_row, o + 2, H), s3 ^ _philox_ctx_word(ctx_row, o + 3, H),
            k0 ^ _u32(o), k1)
    return s0, s1, s2, k0 ^ s3, k1 ^ _u32(0x574D544B)


@triton.jit
def _philox_ctx_word(ctx_row, k: tl.constexpr, H: tl.constexpr):
    if k < H:
        return tl.load(ctx_row + k).to(tl.uint32)
    else:
        return _philox_pad_word(k)


@triton.jit(do_not_specialize=["threshold"])
def _row_kernel(ctx_ptr, key_ptr, logits_ptr, out_ptr, idx_ptr, param_ptr, threshold, V,
                stride_ctx, stride_logits, stride_out, n_blocks,
                H: tl.constexpr, KIND: tl.constexpr, MODE: tl.constexpr,
                BLOCK: tl.constexpr):
    """MODE 0: store the values [B, V]; 1: store ``logits + delta`` where green; 2: store each
    block's best Gumbel value and its index (reduced across blocks by the caller)."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    ctx_row = ctx_ptr + b * stride_ctx
    if KIND == 0:
        v0, v1, v2, v3, pending = _sip_row_state(ctx_row, key_ptr, H)
        tok = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        lane = tok < V
        x = _sip_row_level(v0, v1, v2, v3, pending, tok.to(tl.uint64), H)
        _row_apply(x >> 11, _sip_uniform(x), tok, lane, b, logits_ptr, out_ptr, idx_ptr,
                   param_ptr, threshold, stride_logits, stride_out, n_blocks, blk, MODE)
    else:  # one Philox call per group of four tokens, laid out back in token order
        s0, s1, s2, kk0, kk1 = _philox_row_state(ctx_row, key_ptr, H)
        group = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        y0, y1, y2, y3 = _philox(group.to(tl.uint32), s0, s1, s2, kk0, kk1)
        y = tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), [4 * BLOCK])
        tok = blk.to(tl.int64) * (4 * BLOCK) + tl.arange(0, 4 * BLOCK)
        _row_apply(y >> 8, _philox_uniform(y), tok, tok < V, b, logits_ptr, out_ptr, idx_ptr,
                   param_ptr, threshold, stride_logits, stride_out, n_blocks, blk, MODE)


@triton.jit
def _log(x):
    if _INTERPRET:
        return tl.log(x)
    else:
        return libdevice.log(x)


@triton.jit
def _gumbel_value(u, tok, lane, b, logits_ptr, stride_logits):
    """``logit - log(-log u)`` in ``u``'s dtype; -inf outside the vocabulary."""
    lg = tl.load(logits_ptr + b * stride_logits + tok, mask=lane, other=float("-inf"))
    return lg.to(u.dtype) - _log(-_log(u))


@triton.jit
def _row_apply(level, u, tok, lane, b, logits_ptr, out_ptr, idx_ptr, param_ptr, threshold,
               stride_logits, stride_out, n_blocks, blk, MODE: tl.constexpr):
    if MODE == 0:
        tl.store(out_ptr + b * stride_out + tok, u, mask=lane)
    elif MODE == 1:
        lg = tl.load(logits_ptr + b * stride_logits + tok, mask=lane, other=0.0)
        delta = tl.load(param_ptr)
        green = level < threshold.to(level.dtype)
        res = lg.to(delta.dtype) + tl.where(green, delta, 0.0)
        if lg.dtype == tl.bfloat16:  # round to nearest even, spelled out (as CUDA rounds)
            bits = res.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            res = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(out_ptr + b * stride_out + tok, res.to(lg.dtype), mask=lane)
    else:
        val = _gumbel_value(u, tok, lane, b, logits_ptr, stride_logits)
        m = tl.max(val, axis=0)
        best_tok = tl.min(tl.where((val == m) & lane, tok, 2**62), axis=0)
        tl.store(out_ptr + b * n_blocks + blk, m)
        tl.store(idx_ptr + b * n_blocks + blk, best_tok)


@triton.jit
def _pick_kernel(best_ptr, idx_ptr, out_ptr, n_blocks, BLOCK: tl.constexpr):
    """Each row's choice from its blocks' best values, as ``argmax`` picks: the first block
    holding the maximum, or the first NaN."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    inside = j < n_blocks
    vals = tl.load(best_ptr + b * n_blocks + j, mask=inside, other=float("-inf"))
    nan = inside & (vals != vals)
    m = tl.max(tl.where(nan, float("-inf"), vals), axis=0)
    first = tl.min(tl.where(inside & (vals == m), j, BLOCK), axis=0)
    first_nan = tl.min(tl.where(nan, j, BLOCK), axis=0)
    first = tl.where(first_nan < BLOCK, first_nan, first)
    tl.store(out_ptr + b, tl.load(idx_ptr + b * n_blocks + first))


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (``triton.cdiv`` costs microseconds a call from Python)."""
    return -(-a // b)


# -- launchers -----------------------------------------------------------------------------------
def key_tensor(words: tuple[int, ...], device: Any) -> torch.Tensor:
    """The key words as a signed int64 device tensor (read by the kernels, never compiled in)."""
    signed = [int(w) - (1 << 64) if int(w) >= 1 << 63 else int(w) for w in words]
    return torch.tensor(signed, dtype=torch.int64, device=device)


def score(kind: int, keys: torch.Tensor, x: torch.Tensor, cand: torch.Tensor,
          valid: torch.Tensor | None, h: int, first: int = 0) -> torch.Tensor:
    """Values of positions ``t >= first`` of int64 ``x`` [B, T] (``cand`` scored in the windows
    of ``x``; ``valid`` bool marks real tokens, NaN elsewhere); others are left unset."""
    out = torch.empty(x.shape, dtype=_value_dtype(kind), device=x.device)
    if x.numel() == 0:
        return out
    v = valid if valid is not None else x
    grid = (x.shape[0], cdiv(x.shape[1], _SCORE_BLOCK))
    _score_kernel[grid](x, cand, v, out, keys, x.shape[1], first, x.stride(0), cand.stride(0),
                        v.stride(0), out.stride(0), H=h, KIND=kind,
                        HAS_VALID=valid is not None, BLOCK=_SCORE_BLOCK)
    return out


def _value_dtype(kind: int) -> torch.dtype:
    """The dtype of the PRF's values: float64 (SipHash) or float32 (Philox)."""
    return torch.float64 if kind == SIPHASH else torch.float32


def _n_blocks(kind: int, vocab: int, mode: int) -> int:
    """Programs per row of the row kernel (a Philox program covers four tokens a lane)."""
    return cdiv(vocab, _ROW_SHAPES[kind, mode][0] * (4 if kind == PHILOX else 1))


def _row_launch(kind: int, keys: torch.Tensor, ctx: torch.Tensor, vocab: int, mode: int,
                logits: torch.Tensor | None, out: torch.Tensor, idx: torch.Tensor | None,
                params: torch.Tensor | None, threshold: int, n_blocks: int | None = None) -> None:
    if n_blocks is None:
        n_blocks = _n_blocks(kind, vocab, mode)
    if ctx.shape[0] == 0 or vocab == 0:
        return
    lg = logits if logits is not None else out
    block, warps = _ROW_SHAPES[kind, mode]
    _row_kernel[(ctx.shape[0], n_blocks)](
        ctx, keys, lg, out, idx if idx is not None else out,
        params if params is not None else keys, threshold, vocab, ctx.stride(0), lg.stride(0),
        out.stride(0), n_blocks, H=ctx.shape[1], KIND=kind, MODE=mode, BLOCK=block,
        num_warps=warps)


_CONSTANTS: dict[tuple[float, torch.dtype, Any], torch.Tensor] = {}


def _constant(value: float, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A one-element device tensor, made once: a step must not wait on a host-to-device copy."""
    key = (value, dtype, device)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 64:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.tensor([value], dtype=dtype, device=device)
    return t


def row(kind: int, keys: torch.Tensor, ctx: torch.Tensor, vocab: int) -> torch.Tensor:
    """Values [B, V] of every token after each window ``ctx`` [B, h] (contiguous int64)."""
    out = torch.empty((ctx.shape[0], vocab), dtype=_value_dtype(kind), device=ctx.device)
    _row_launch(kind, keys, ctx, vocab, 0, None, out, None, None, 0)
    return out


def green_add(kind: int, keys: torch.Tensor, ctx: torch.Tensor, logits: torch.Tensor,
              threshold: int, delta: float) -> torch.Tensor:
    """``logits + delta`` where the token's level is below ``threshold`` (KGW), in one pass.

    The sum is done as torch's ``add(logits, green, alpha=delta)`` does it: in float32 for
    16- and 32-bit logits (rounded back), in float64 for float64 logits.
    """
    logits = logits.contiguous()
    wide = torch.float64 if logits.dtype == torch.float64 else torch.float32
    params = _constant(delta, wide, logits.device)
    out = torch.empty_like(logits)
    _row_launch(kind, keys, ctx, logits.shape[1], 1, logits, out, None, params, threshold)
    return out


def gumbel_argmax(kind: int, keys: torch.Tensor, ctx: torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor:
    """``argmax(logits - log(-log u))`` per row, in the values' dtype; ties to the lowest index."""
    logits = logits.contiguous()
    b, vocab = logits.shape
    n_blocks = _n_blocks(kind, vocab, 2)
    best = torch.empty((b, n_blocks), dtype=_value_dtype(kind), device=logits.device)
    best_idx = torch.empty((b, n_blocks), dtype=torch.int64, device=logits.device)
    choice = torch.empty(b, dtype=torch.int64, device=logits.device)
    if b == 0:
        return choice
    _row_launch(kind, keys, ctx, vocab, 2, logits, best, best_idx, None, 0, n_blocks)
    _pick_kernel[(b,)](best, best_idx, choice, n_blocks,
                       BLOCK=max(16, triton.next_power_of_2(n_blocks)))
    return choice
