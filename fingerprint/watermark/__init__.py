"""Watermarking at generation time: KGW green lists and Gumbel-max sampling.

Both schemes get every keyed value from the shared core (``fingerprint/core``), so what they
embed is exactly what the detector checks. See ``docs/watermark.md``.

* :class:`KGWLogitsProcessor`: a transformers logits processor (``logits_processor=``, before
  temperature/top-k/top-p); :class:`KGWWatermarkingConfig` places it after them
  (``watermarking_config=``).
* :class:`GumbelWatermarkingConfig`: Gumbel-max for ``model.generate(watermarking_config=...)``;
  :class:`GumbelLogitsProcessor` is the processor it builds (it must run last).
* :func:`generate`: batched watermarked generation of a list of prompts.
* :func:`generate_jsonl`: the same over a prompts file, resumable (``fingerprint generate``).
"""

from fingerprint.watermark.config import GumbelConfig, KGWConfig
from fingerprint.watermark.generate import (
    GenerationResult,
    generate,
    generate_jsonl,
    iter_generate,
    make_watermark,
    read_prompts,
)
from fingerprint.watermark.gumbel import (
    GumbelLogitsProcessor,
    GumbelWatermarkingConfig,
    gumbel_argmax,
)
from fingerprint.watermark.kgw import KGWLogitsProcessor, KGWWatermarkingConfig

__all__ = [
    "GenerationResult",
    "GumbelConfig",
    "GumbelLogitsProcessor",
    "GumbelWatermarkingConfig",
    "KGWConfig",
    "KGWLogitsProcessor",
    "KGWWatermarkingConfig",
    "generate",
    "generate_jsonl",
    "gumbel_argmax",
    "iter_generate",
    "make_watermark",
    "read_prompts",
]
