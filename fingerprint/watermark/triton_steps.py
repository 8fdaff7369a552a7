"""Triton kernels for the processors' bookkeeping on CUDA: one launch each, no host round trips.

A generation step on the GPU is dominated by small operations, not by the PRF: with torch ops,
checking that the sequence only grew, building the windows, the Gumbel dedup history and the
output assembly took a dozen launches and two waits on the GPU. These kernels do that work:

* :func:`continuation`: whether every row of ``input_ids`` extends the previous step's row by
  one token, and whether those tokens' ids are in range (the tracker's one wait per step);
* :func:`seen_before`: the Gumbel dedup check against each row's window history, which also
  records the window and flags the repeat on the device;
* :func:`keep_only`: the Gumbel step's output: the chosen token's logit, ``-inf`` elsewhere
  (or the whole row where the window repeated).

They run compiled on CUDA, and under ``TRITON_INTERPRET=1`` on the CPU in the tests.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from fingerprint.core.triton_prf import cdiv

_COLUMNS = 1024  # columns compared per iteration of the continuation check
_STEPS = 64  # history steps compared per iteration of the dedup check
_KEEP_BLOCK = 2048  # vocabulary entries per program of the output assembly


@triton.jit
def _continuation_kernel(ids_ptr, prev_ptr, out_ptr, n, stride_ids, stride_prev, n_blocks, lo,
                         hi, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    col = j.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    old = col < n - 1
    a = tl.load(ids_ptr + b * stride_ids + col, mask=col < n, other=0).to(tl.int64)
    p = tl.load(prev_ptr + b * stride_prev + col, mask=old, other=0).to(tl.int64)
    differ = tl.max((old & (a != p)).to(tl.int32), axis=0)
    bad = tl.max(((col == n - 1) & ((a < lo) | (a > hi))).to(tl.int32), axis=0)
    tl.store(out_ptr + b * n_blocks + j, (differ + 2 * bad).to(tl.int8))


def continuation(input_ids: torch.Tensor, prev: torch.Tensor, lo: int, hi: int) -> int:
    """One wait on the GPU for two bits: 1 if a row of ``input_ids[:, :-1]`` differs from
    ``prev``, 2 if a row's last id lies outside [lo, hi]."""
    b, n = input_ids.shape
    n_blocks = cdiv(n, _COLUMNS)
    out = torch.empty((b, n_blocks), dtype=torch.int8, device=input_ids.device)
    if b and n:
        ids = input_ids if input_ids.stride(1) == 1 else input_ids.contiguous()
        old = prev if prev.stride(1) == 1 or prev.shape[1] == 0 else prev.contiguous()
        _continuation_kernel[(b, n_blocks)](ids, old, out, n, ids.stride(0), old.stride(0),
                                            n_blocks, lo, hi, BLOCK=_COLUMNS)
    return int(np.bitwise_or.reduce(out.cpu().numpy(), axis=None))


@triton.jit
def _seen_kernel(hist_ptr, win_ptr, flag_ptr, start, n, h, stride_hb, stride_hs, stride_w,
                 stride_f, STEPS: tl.constexpr, WIDTH: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    k = tl.arange(0, WIDTH)
    used = k < h
    w = tl.load(win_ptr + b * stride_w + k, mask=used, other=0)
    s = start + j * STEPS + tl.arange(0, STEPS)
    live = s < n
    past = tl.load(hist_ptr + b * stride_hb + s[:, None] * stride_hs + k[None, :],
                   mask=live[:, None] & used[None, :], other=0)
    differ = tl.sum((used[None, :] & (past != w[None, :])).to(tl.int32), axis=1)
    found = tl.max((live & (differ == 0)).to(tl.int32), axis=0)
    tl.atomic_or(flag_ptr + b * stride_f + n, found)
    tl.store(hist_ptr + b * stride_hb + n * stride_hs + k, w, mask=used & (j == 0))


def seen_before(history: torch.Tensor, flags: torch.Tensor, windows: torch.Tensor, start: int,
                n: int) -> None:
    """Sets ``flags[b, n]`` (int32, zero before) to 1 where row b's window equals one of
    ``history[b, start:n]`` ([B, S, h] int64), and records the windows at ``history[:, n]``."""
    b, h = windows.shape
    if b:
        win = windows if windows.stride(1) == 1 else windows.contiguous()
        chunks = max(1, cdiv(n - start, _STEPS))
        _seen_kernel[(b, chunks)](history, win, flags, start, n, h, history.stride(0),
                                  history.stride(1), win.stride(0), flags.stride(0),
                                  STEPS=_STEPS, WIDTH=max(2, triton.next_power_of_2(h)))


@triton.jit
def _keep_kernel(scores_ptr, out_ptr, choice_ptr, rep_ptr, vocab, stride_s, stride_o, stride_r,
                 HAS_REP: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    tok = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = tok < vocab
    keep = tok == tl.load(choice_ptr + b)
    if HAS_REP:
        keep = keep | (tl.load(rep_ptr + b * stride_r) != 0)
    s = tl.load(scores_ptr + b * stride_s + tok, mask=lane & keep, other=float("-inf"))
    tl.store(out_ptr + b * stride_o + tok, s, mask=lane)


def keep_only(scores: torch.Tensor, choice: torch.Tensor,
              repeated: torch.Tensor | None) -> torch.Tensor:
    """``scores`` [B, V] with ``-inf`` everywhere but at ``choice`` [B] (and, in rows where
    ``repeated`` [B] is nonzero, nowhere): ``torch.where(keep, scores, -inf)`` in one pass that
    reads only the kept logits."""
    out = torch.empty_like(scores, memory_format=torch.contiguous_format)
    b, vocab = scores.shape
    if b and vocab:
        src = scores if scores.stride(1) == 1 else scores.contiguous()
        _keep_kernel[(b, cdiv(vocab, _KEEP_BLOCK))](
            src, out, choice, repeated if repeated is not None else choice, vocab,
            src.stride(0), out.stride(0), 0 if repeated is None else repeated.stride(0),
            HAS_REP=repeated is not None, BLOCK=_KEEP_BLOCK)
    return out
