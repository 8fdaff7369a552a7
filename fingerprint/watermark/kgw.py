"""The KGW green-list watermark (Kirchenbauer et al., 2023) as a transformers logits processor.

At each step, token ``v`` is *green* when ``u(key, window, v) < gamma``, with ``u`` the keyed PRF
of the shared core (``fingerprint/core``) and ``window`` the ``h`` tokens before the one being
sampled; every green logit gets ``+delta``. One :meth:`~fingerprint.core.PRF.row` call per step
gives the values of the whole vocabulary for all rows at once (the fused numba kernel on CPU),
then one masked add; on CUDA one Triton kernel does both without writing the values.

Two placements in transformers' ``generate``, both also valid for greedy decoding:

* ``watermarking_config=KGWWatermarkingConfig(key, ...)``: after temperature, top-k and top-p,
  so ``delta`` is the bias of the distribution actually sampled from (where transformers' own
  and vLLM's KGW put it; :func:`fingerprint.watermark.generate` uses this);
* ``logits_processor=LogitsProcessorList([KGWLogitsProcessor(key, ...)])``: before them, on the
  model's logits (the original KGW code's placement); temperature ``T`` then makes the
  effective bias ``delta / T``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import LogitsProcessor

from fingerprint.core import DEFAULT_PRF, PRF, get_prf
from fingerprint.keys import WatermarkKey
from fingerprint.watermark.config import (
    ContextTracker,
    KeyedWatermarkingConfig,
    KGWConfig,
    column_slices,
)


class KGWLogitsProcessor(LogitsProcessor):
    """Adds ``delta`` to the logits of green tokens (``u < gamma``) at every step.

    Args:
        key: a :class:`~fingerprint.keys.WatermarkKey`, a vLLM-style integer or a key file path.
        gamma: the green fraction, in (0, 1).
        delta: the bias, >= 0.
        context_width: the window width ``h``, 1..16.
        prf: the PRF name (``"siphash24-v1"`` by default).
        prompt_context: windows of the first generated tokens reach into the prompt (default).
        pad_token_id: the id that left-pads a batch; the leading run of it in each row reads as
            ``-1``, so a padded row gets the same windows as its prompt alone.

    The vocabulary size is the logits' width at each step (models often pad the vocabulary).
    """

    def __init__(
        self,
        key: WatermarkKey | int | str | os.PathLike[str],
        gamma: float = 0.25,
        delta: float = 2.0,
        context_width: int = KGWConfig.context_width,
        prf: str = DEFAULT_PRF,
        *,
        prompt_context: bool = True,
        pad_token_id: int | None = None,
    ) -> None:
        settings = KGWConfig(gamma=gamma, delta=delta, context_width=context_width, prf=prf,
                             prompt_context=prompt_context)
        prf_obj = get_prf(settings.prf, key, KGWConfig.scheme)  # type: ignore[arg-type]
        self._setup(settings, prf_obj, pad_token_id)

    @classmethod
    def _from_prf(cls, settings: KGWConfig, prf: PRF,
                  pad_token_id: int | None) -> KGWLogitsProcessor:
        self = cls.__new__(cls)
        self._setup(settings, prf, pad_token_id)
        return self

    def _setup(self, settings: KGWConfig, prf: PRF, pad_token_id: int | None) -> None:
        self.settings = settings
        self._prf = prf
        self._tracker = ContextTracker(settings.context_width, settings.prompt_context,
                                       pad_token_id)

    def __repr__(self) -> str:
        return f"KGWLogitsProcessor({self.config})"

    def __reduce__(self) -> tuple:
        raise TypeError("a watermark processor holds a keyed PRF and cannot be pickled; "
                        "rebuild it from its key in each process")

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration (scheme, gamma, delta, h, PRF, key id). Never the key."""
        return self.settings.public(self._prf.key_id)

    def reset(self) -> None:
        """Forget the current generation (it is also detected automatically)."""
        self._tracker.reset()

    def green_mask(self, windows: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Green tokens [B, V] (bool) after each window [B, h]."""
        u = self._prf.row(windows, vocab_size)
        return u < self.settings.gamma  # compared in u's dtype, as the detector compares

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out, _, _ = self._tracker.step(input_ids, lambda windows: self._green_add(windows, scores))
        return out

    def _green_add(self, windows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        gamma, delta = self.settings.gamma, self.settings.delta
        fused = self._prf.fused_green_add(  # CUDA: one kernel
            windows, scores, gamma, delta, checked=self._tracker.windows_checked)
        if fused is not None:
            return fused
        u = self._prf.row(windows, scores.shape[-1])
        out = torch.empty_like(scores)
        for cols in column_slices(*scores.shape, scores.device):
            # + delta where green (u < gamma, compared in u's dtype as the detector compares)
            torch.add(scores[:, cols], u[:, cols] < gamma, alpha=delta, out=out[:, cols])
        return out


class KGWWatermarkingConfig(KeyedWatermarkingConfig):
    """KGW for ``model.generate(..., watermarking_config=...)``: the bias goes on the processed
    logits, after temperature, top-k and top-p (as in transformers' and vLLM's KGW)::

        wm = KGWWatermarkingConfig(key, gamma=0.25, delta=2.0, pad_token_id=tok.pad_token_id)
        model.generate(**inputs, watermarking_config=wm, do_sample=True, temperature=0.7)

    Arguments as :class:`KGWLogitsProcessor`. Its dict and JSON forms are the public
    configuration (no key).
    """

    def __init__(
        self,
        key: WatermarkKey | int | str | os.PathLike[str],
        gamma: float = 0.25,
        delta: float = 2.0,
        context_width: int = KGWConfig.context_width,
        prf: str = DEFAULT_PRF,
        *,
        prompt_context: bool = True,
        pad_token_id: int | None = None,
    ) -> None:
        self._settings = KGWConfig(gamma=gamma, delta=delta, context_width=context_width,
                                   prf=prf, prompt_context=prompt_context)
        self._prf = get_prf(self._settings.prf, key, KGWConfig.scheme)  # type: ignore[arg-type]
        self._pad_token_id = pad_token_id
        self.last_processor: KGWLogitsProcessor | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration. Never the key."""
        return self._settings.public(self._prf.key_id)

    def construct_processor(self, vocab_size: int, device: Any = None) -> KGWLogitsProcessor:
        """A fresh processor for one generate call (the vocabulary size is read from logits)."""
        self.last_processor = KGWLogitsProcessor._from_prf(self._settings, self._prf,
                                                           self._pad_token_id)
        return self.last_processor


__all__ = ["KGWLogitsProcessor", "KGWWatermarkingConfig"]
