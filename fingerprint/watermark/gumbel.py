"""The Gumbel-max watermark (Aaronson, 2022), bit-compatible with vLLM 0.33's ``GumbelWatermarker``.

At each step the token is ``argmax(logits - log(-log u))`` where ``u`` [B, V] is the PRF row of
the window: over random keys this is an exact sample of ``softmax(logits)`` (distortion-free),
yet it is a deterministic function of (key, window, logits) that the detector can check.

The logits must be the *processed* ones: after temperature, top-k and top-p. So the processor has
to run last, and sampling must be on. :class:`GumbelLogitsProcessor` returns logits where only the
chosen token is finite; whatever samples from them afterwards picks that token. Two ways in:

* with transformers' ``generate``, pass :class:`GumbelWatermarkingConfig` as
  ``watermarking_config=``: transformers then places the processor after every warper;
* in a custom loop, apply your warpers, then the processor (or call :meth:`GumbelLogitsProcessor.
  choose` on the processed logits directly).

Misuse is refused: when transformers calls the processor, it checks (once per generation) that no
processor runs after it (a ``logits_processor=`` list puts temperature/top-k/top-p *after* it) and
that sampling is on (greedy decoding cannot carry this watermark), and raises
:class:`~fingerprint.errors.ConfigError` otherwise.

vLLM compatibility (with ``prf="philox4x32-10-v1"`` and an integer key): the same float32
arithmetic, ``u.clamp_min(finfo(float32).tiny)``, ``noise = -log(-log u)``,
``argmax(logits + noise)``; the same windows (``prompt_context=False``: generated tokens only,
``-1`` before the first one); the same ``single_turn`` context deduplication.
"""

from __future__ import annotations

import bisect
import inspect
import os
from typing import Any

import numba as nb
import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import LogitNormalization

from fingerprint.core import DEFAULT_PRF, PRF, get_prf, gumbel_max
from fingerprint.core.prf import routes_to_triton
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey
from fingerprint.watermark.config import (
    VLLM_DEDUP_MAX_HISTORY,
    ContextTracker,
    DedupMode,
    GumbelConfig,
    KeyedWatermarkingConfig,
    column_slices,
)

_FRAMES_TO_SEARCH = 12


def gumbel_argmax(logits: torch.Tensor, uniforms: torch.Tensor, *,
                  clamp: bool = True) -> torch.Tensor:
    """``argmax(logits - log(-log u))`` per row, computed in the uniforms' dtype.

    For ``philox4x32-10-v1`` (float32 uniforms) every value equals vLLM's bit for bit: the same
    torch operations in float32, ``u.clamp_min(finfo.tiny)`` then ``-log(-log u)``; its final
    ``logits + noise`` is done as ``logits - (-noise)``, which IEEE arithmetic makes identical.
    ``clamp=False`` skips the clamp, exact when no uniform can be below ``finfo.tiny`` (true of
    every registered PRF). Ties go to the lowest index. ``uniforms`` is overwritten.
    """
    tiny = torch.finfo(uniforms.dtype).tiny
    best_val: torch.Tensor | None = None
    best_idx = torch.zeros(())
    for cols in column_slices(*uniforms.shape, uniforms.device):
        u = uniforms[:, cols]
        log_neg_log = (u.clamp_min_(tiny) if clamp else u).log_().neg_().log_()  # -noise
        lg = logits[:, cols]
        if torch.promote_types(lg.dtype, u.dtype) != u.dtype:
            lg = lg.to(u.dtype)  # float64 logits with float32 uniforms: vLLM's float32
        val, idx = torch.sub(lg, log_neg_log).max(dim=-1)  # mixed dtypes: promoted exactly
        if best_val is None:
            best_val, best_idx = val, idx
        else:  # a later piece wins only when strictly greater: ties keep the lowest index
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + (cols.start or 0), best_idx)
    return best_idx


# -- the CPU choice for float64 uniforms (fingerprint.core.gumbel_max) -------------------------
def _pruned_choice(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """:func:`gumbel_argmax` for float64 uniforms on the CPU, valuing only possible winners."""
    return torch.from_numpy(gumbel_max.dense_choice(gumbel_max.logits_array(logits),
                                                    uniforms.numpy()))


_SPARSE_SHARE = 16  # value only the live tokens when at most 1/16 of them are live
_PROBE_STRIDE = 16  # columns sampled to tell whether that is worth counting exactly


def _mostly_masked(logits: torch.Tensor) -> bool:
    """Whether a sample of the columns suggests that top-k / top-p left few tokens live (only
    the speed depends on it: both choices are exact)."""
    probe = logits[:, ::_PROBE_STRIDE]
    return int((probe > -torch.inf).sum()) <= 2 * probe.numel() // _SPARSE_SHARE


def _sparse_choice(prf: PRF, logits: torch.Tensor, windows: torch.Tensor,
                   live: torch.Tensor) -> torch.Tensor:
    """The choice when most logits are -inf: uniforms of the live tokens only (``PRF.pairs``),
    valued with the same float64 operations as :func:`_choice_kernel`. A row with no live token
    gets index 0, as argmax over all -inf does."""
    rows, cols = (t.numpy() for t in torch.nonzero(live, as_tuple=True))  # row-major order
    lg = logits.detach()[live].to(torch.float64).numpy()
    u = prf.pairs(windows.cpu().numpy()[rows], cols)
    out = np.zeros(logits.shape[0], dtype=np.int64)
    _sparse_kernel(rows, cols, lg, u, out)
    return torch.from_numpy(out)


@nb.njit(cache=True)
def _sparse_kernel(rows: Any, cols: Any, lg: Any, u: Any, out: Any) -> None:
    best = np.full(out.shape[0], -np.inf)
    for i in range(rows.shape[0]):  # cols ascend within a row: ties keep the lowest index
        val = gumbel_max.value(lg[i], u[i])
        if val > best[rows[i]]:
            best[rows[i]] = val
            out[rows[i]] = cols[i]


class GumbelLogitsProcessor(LogitsProcessor):
    """Gumbel-max watermarked sampling; must run last, on the processed logits, with sampling on.

    Args:
        key: a :class:`~fingerprint.keys.WatermarkKey`, a vLLM-style integer or a key file path.
        context_width: the window width ``h``, 1..16 (vLLM's default is 4).
        prf: the PRF name; ``"philox4x32-10-v1"`` with an integer key reproduces vLLM.
        prompt_context: let windows reach into the prompt (default False: vLLM's convention).
        deduplicate_contexts: ``"single_turn"`` (default, vLLM's): a window already used at an
            earlier step of the same completion samples without the watermark; ``"none"``.
        dedup_max_history: how many of the latest steps that check looks back (vLLM: 8192).
        pad_token_id: the left-padding id (only read when ``prompt_context`` is True).
        check_placement: refuse misplacement and greedy decoding inside transformers' generate.
    """

    def __init__(
        self,
        key: WatermarkKey | int | str | os.PathLike[str],
        context_width: int = GumbelConfig.context_width,
        prf: str = DEFAULT_PRF,
        *,
        prompt_context: bool = False,
        deduplicate_contexts: DedupMode = "single_turn",
        dedup_max_history: int | None = VLLM_DEDUP_MAX_HISTORY,
        pad_token_id: int | None = None,
        check_placement: bool = True,
    ) -> None:
        settings = GumbelConfig(context_width=context_width, prf=prf,
                                prompt_context=prompt_context,
                                deduplicate_contexts=deduplicate_contexts,
                                dedup_max_history=dedup_max_history)
        prf_obj = get_prf(settings.prf, key, GumbelConfig.scheme)  # type: ignore[arg-type]
        self._setup(settings, prf_obj, pad_token_id, check_placement)

    @classmethod
    def _from_prf(cls, settings: GumbelConfig, prf: PRF, pad_token_id: int | None,
                  check_placement: bool = True) -> GumbelLogitsProcessor:
        self = cls.__new__(cls)
        self._setup(settings, prf, pad_token_id, check_placement)
        return self

    def _setup(self, settings: GumbelConfig, prf: PRF, pad_token_id: int | None,
               check_placement: bool) -> None:
        self.settings = settings
        self._prf = prf
        lowest = type(prf).level_uniform(np.zeros(1, dtype=np.uint64))[0]
        self._needs_clamp = bool(lowest < np.finfo(type(prf).uniform_dtype).tiny)
        self._tracker = ContextTracker(settings.context_width, settings.prompt_context,
                                       pad_token_id)
        self.check_placement = bool(check_placement)
        self._seen: list[dict[tuple[int, ...], int]] = []
        self._history: _WindowHistory | None = None  # the same check on the GPU, without syncs
        self._n_watermarked = 0
        self._n_repeated = 0

    @property
    def n_watermarked(self) -> int:
        """Steps x rows sampled with the watermark (for reports)."""
        self._collect_counts()
        return self._n_watermarked

    @property
    def n_repeated(self) -> int:
        """Steps x rows sampled plainly because the window repeated."""
        self._collect_counts()
        return self._n_repeated

    def _collect_counts(self) -> None:
        if self._history is not None:
            checked, rep = self._history.take_counts()
            self._n_repeated += rep
            self._n_watermarked += checked - rep

    def __repr__(self) -> str:
        return f"GumbelLogitsProcessor({self.config})"

    def __reduce__(self) -> tuple:
        raise TypeError("a watermark processor holds a keyed PRF and cannot be pickled; "
                        "rebuild it from its key in each process")

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration (scheme, h, PRF, key id, context convention). Never the key."""
        return self.settings.public(self._prf.key_id)

    def reset(self) -> None:
        """Forget the current generation (it is also detected automatically)."""
        self._collect_counts()
        self._tracker.reset()
        self._seen = []
        self._history = None

    def choose(self, logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """The watermarked token [B] for processed ``logits`` [B, V] after ``windows`` [B, h]."""
        return self._choose(logits, windows, False)

    def _choose(self, logits: torch.Tensor, windows: torch.Tensor, checked: bool) -> torch.Tensor:
        if not self._needs_clamp:
            float64_cpu = (logits.device.type == "cpu"
                           and type(self._prf).uniform_dtype is np.float64)
            if float64_cpu and _mostly_masked(logits):  # after top-k / top-p
                live = logits > -torch.inf
                if int(live.sum()) <= logits.numel() // _SPARSE_SHARE:
                    return _sparse_choice(self._prf, logits, windows, live)
            # CUDA, or float64 on the CPU
            fused = self._prf.fused_gumbel_argmax(windows, logits, checked=checked)
            if fused is not None:
                return fused
            if float64_cpu:
                return _pruned_choice(logits, self._prf.row(windows, logits.shape[-1]))
        return gumbel_argmax(logits, self._prf.row(windows, logits.shape[-1]),
                             clamp=self._needs_clamp)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice, windows, new = self._tracker.step(
            input_ids, lambda w: self._choose(scores, w, self._tracker.windows_checked))
        if new:
            self._collect_counts()
            self._seen = [{} for _ in range(input_ids.shape[0])]
            self._history = None
            if self.check_placement:
                self._check_placement()
        if _gpu_style(scores):  # one pass over the logits, and no wait on the GPU
            repeated = None
            if self.settings.deduplicate_contexts != "none":
                repeated = self._repeated_on_device(windows)
            if routes_to_triton(scores):
                from fingerprint.watermark import triton_steps

                return triton_steps.keep_only(scores, choice, repeated)
            keep = torch.arange(scores.shape[1], device=scores.device)[None, :] == choice[:, None]
            if repeated is not None:
                keep |= repeated[:, None].bool()
            return torch.where(keep, scores, -torch.inf)
        choice = choice[:, None]
        out = torch.full_like(scores, -torch.inf).scatter_(1, choice, scores.gather(1, choice))
        if self.settings.deduplicate_contexts != "none":
            repeated = self._repeated(windows)
            if repeated is not None:
                out = torch.where(repeated.to(scores.device)[:, None], scores, out)
        return out

    def _repeated(self, windows: torch.Tensor) -> torch.Tensor | None:
        """Rows whose window was used at an earlier step of the same completion (then record)."""
        step = self._tracker.step_index
        limit = self.settings.dedup_max_history
        oldest = 0 if limit is None else max(0, step - limit)
        flags = []
        for seen, w in zip(self._seen, map(tuple, windows.tolist()), strict=True):
            last = seen.get(w)  # the latest earlier step that used this window
            flags.append(last is not None and last >= oldest)
            seen[w] = step
        n_rep = sum(flags)
        self._n_repeated += n_rep
        self._n_watermarked += len(flags) - n_rep
        return torch.tensor(flags) if n_rep else None

    def _repeated_on_device(self, windows: torch.Tensor) -> torch.Tensor:
        """:meth:`_repeated` with the windows kept on their device: [B] bool, never synced."""
        if self._history is None:
            self._history = _WindowHistory(windows.shape[0], windows.shape[1], windows.device)
        limit = self.settings.dedup_max_history
        step = self._tracker.step_index
        return self._history.check_and_add(windows, 0 if limit is None else step - limit, step)

    def _check_placement(self) -> None:
        """Inside transformers' generate: refuse processors after this one, and greedy search."""
        processors, gen_config = _find_generation_frames(self)
        if processors is not None:
            mine = next(i for i, p in enumerate(processors) if p is self)
            after = [type(p).__name__ for p in processors[mine + 1:]
                     if not isinstance(p, LogitNormalization)]
            if after:
                raise ConfigError(
                    f"the Gumbel watermark must be the last logits processor, but "
                    f"{', '.join(after)} run after it, on logits it has already sampled from, "
                    "so they would have no effect. With transformers' generate, pass "
                    "GumbelWatermarkingConfig(...) as watermarking_config= instead of putting the "
                    "processor in logits_processor=: transformers then runs it after temperature, "
                    "top-k and top-p")
        if gen_config is not None:
            if not gen_config.do_sample:
                raise ConfigError(
                    "greedy decoding (do_sample=False) cannot carry a Gumbel watermark: pass "
                    "do_sample=True (and a temperature > 0), or use the KGW scheme, which biases "
                    "greedy decoding too")
            if (gen_config.num_beams or 1) > 1:
                raise ConfigError("beam search cannot carry a Gumbel watermark; use num_beams=1")


def _gpu_style(scores: torch.Tensor) -> bool:
    """Whether a step takes the accelerator's code (no host syncs); the tests switch it on for
    CPU tensors too."""
    return scores.device.type != "cpu"


class _WindowHistory:
    """The windows each row used at earlier steps of one generation, on the device."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        self.windows = torch.empty((rows, 64, width), dtype=torch.int64, device=device)
        self.steps: list[int] = []
        self.repeated = torch.zeros((rows, 64), dtype=torch.int32, device=device)  # per step
        self.counted = 0  # steps whose repeats were counted

    def check_and_add(self, windows: torch.Tensor, oldest: int, step: int) -> torch.Tensor:
        """Rows [B] (int32, 1 or 0) whose window was used at a recorded step >= ``oldest``;
        then records ``windows`` as used at ``step``."""
        start = bisect.bisect_left(self.steps, oldest)  # steps only grow
        n = len(self.steps)
        if n == self.windows.shape[1]:
            self.windows = torch.cat([self.windows, torch.empty_like(self.windows)], dim=1)
            self.repeated = torch.cat([self.repeated, torch.zeros_like(self.repeated)], dim=1)
        if routes_to_triton(windows):
            from fingerprint.watermark import triton_steps

            triton_steps.seen_before(self.windows, self.repeated, windows, start, n)
        else:
            seen = (self.windows[:, start:n] == windows[:, None, :]).all(dim=2).any(dim=1)
            self.windows[:, n] = windows
            self.repeated[:, n] = seen
        self.steps.append(step)
        return self.repeated[:, n]

    def take_counts(self) -> tuple[int, int]:
        """(rows x steps checked, how many of them repeated) since the last call (one wait on
        the device when there are any)."""
        n = len(self.steps)
        checked = self.repeated.shape[0] * (n - self.counted)
        repeats = int(self.repeated[:, self.counted:n].sum()) if checked else 0
        self.counted = n
        return checked, repeats


def _find_generation_frames(
    proc: LogitsProcessor,
) -> tuple[LogitsProcessorList | None, GenerationConfig | None]:
    """The processor list holding ``proc`` and the generation config, from the calling frames.

    transformers calls ``LogitsProcessorList.__call__`` from its decoding loop, whose local
    ``generation_config`` holds ``do_sample``. Called elsewhere, both are None (nothing checked).
    """
    processors: LogitsProcessorList | None = None
    frame = inspect.currentframe()
    try:
        f = frame.f_back if frame is not None else None
        for _ in range(_FRAMES_TO_SEARCH):
            if f is None:
                break
            local = f.f_locals
            owner = local.get("self")
            if (processors is None and isinstance(owner, LogitsProcessorList)
                    and any(p is proc for p in owner)):
                processors = owner
            gen = local.get("generation_config")
            if isinstance(gen, GenerationConfig):
                return processors, gen
            f = f.f_back
        return processors, None
    finally:
        del frame


class GumbelWatermarkingConfig(KeyedWatermarkingConfig):
    """The Gumbel watermark for ``model.generate(..., watermarking_config=...)``.

    transformers appends the processor this builds after temperature, top-k and top-p, which is
    where Gumbel-max sampling belongs. Generate with ``do_sample=True``::

        wm = GumbelWatermarkingConfig(key, context_width=4)
        model.generate(**inputs, watermarking_config=wm, do_sample=True, temperature=0.7)

    Its dict and JSON forms are the public configuration (no key), so it is safe to log. It
    cannot be rebuilt from that dict (the key is not in it): keep the key file.
    """

    def __init__(
        self,
        key: WatermarkKey | int | str | os.PathLike[str],
        context_width: int = GumbelConfig.context_width,
        prf: str = DEFAULT_PRF,
        *,
        prompt_context: bool = False,
        deduplicate_contexts: DedupMode = "single_turn",
        dedup_max_history: int | None = VLLM_DEDUP_MAX_HISTORY,
        pad_token_id: int | None = None,
    ) -> None:
        self._settings = GumbelConfig(context_width=context_width, prf=prf,
                                      prompt_context=prompt_context,
                                      deduplicate_contexts=deduplicate_contexts,
                                      dedup_max_history=dedup_max_history)
        self._prf = get_prf(self._settings.prf, key, GumbelConfig.scheme)  # type: ignore[arg-type]
        self._pad_token_id = pad_token_id
        self.last_processor: GumbelLogitsProcessor | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration. Never the key."""
        return self._settings.public(self._prf.key_id)

    def construct_processor(self, vocab_size: int, device: Any = None) -> GumbelLogitsProcessor:
        """A fresh processor for one generate call (the vocabulary size is read from logits)."""
        self.last_processor = GumbelLogitsProcessor._from_prf(self._settings, self._prf,
                                                              self._pad_token_id)
        return self.last_processor


__all__ = ["GumbelLogitsProcessor", "GumbelWatermarkingConfig", "gumbel_argmax"]
