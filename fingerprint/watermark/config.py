"""Public scheme configurations and the generation-time window convention.

A configuration holds everything about a watermark except the key: it is what a result records
and what a detector needs (:meth:`KGWConfig.public` adds the public key id). Field names match
:class:`fingerprint.detect.detector.DetectorConfig`, so ``DetectorConfig.from_dict(public)`` works.

Windows at generation (``docs/watermark.md``): the window of the token being sampled is the
``h`` tokens before it, oldest first (``fingerprint/core/contexts.py``). Where those tokens come
from is the ``prompt_context`` switch:

* ``prompt_context=True`` (the KGW default): the windows of the first generated tokens reach into
  the prompt; positions before the real start of a left-padded row read as ``-1``;
* ``prompt_context=False`` (the Gumbel default, vLLM's convention): only generated tokens fill
  windows; positions before the first generated token read as ``-1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar, Literal, TypeVar

import torch
from transformers.generation.configuration_utils import BaseWatermarkingConfig

from fingerprint.core import DEFAULT_PRF, check_gamma, prf_class
from fingerprint.core.contexts import MAX_TOKEN_ID, PAD, check_context_width
from fingerprint.core.prf import check_id_range, routes_to_triton
from fingerprint.errors import ConfigError, InputError

MAX_GENERATION_CONTEXT_WIDTH = 16
_T = TypeVar("_T")
# ATen runs an element-wise op of at most this many elements on the calling thread; a larger one
# forks its thread team, and on a busy machine each fork can wait a whole scheduler slice for a
# second core. A step of small work (up to SERIAL_CHUNKS such pieces) is therefore run piecewise.
ATEN_GRAIN_SIZE = 32_768
SERIAL_CHUNKS = 8
DEFAULT_CONTEXT_WIDTH: dict[str, int] = {"kgw": 2, "gumbel": 4}
DedupMode = Literal["single_turn", "none"]
DEDUP_MODES: tuple[str, ...] = ("single_turn", "none")
VLLM_DEDUP_MAX_HISTORY = 8192


def check_generation_context_width(h: object) -> int:
    """A context width for generation: an integer in 1..16."""
    h = check_context_width(h)
    if h > MAX_GENERATION_CONTEXT_WIDTH:
        raise ConfigError(
            f"context width must be at most {MAX_GENERATION_CONTEXT_WIDTH} for generation, got "
            f"{h}: every edited token breaks the next h windows, so wider windows are fragile")
    return h


def _check_prf(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"prf must be a PRF name such as {DEFAULT_PRF!r}, got {name!r}")
    return prf_class(name).name  # aliases resolve to the versioned name


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def _check_number(name: str, value: object) -> float:
    """A Python or numpy real scalar (not a bool, not NaN) as a float."""
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class KGWConfig:
    """KGW green lists: token ``v`` is green when ``u(key, window, v) < gamma``; green logits
    get ``+delta``. ``gamma`` must leave some but not all of the PRF's values below it
    (:func:`fingerprint.core.check_gamma`): otherwise nothing (everything) would be marked."""

    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = DEFAULT_CONTEXT_WIDTH["kgw"]
    prf: str = DEFAULT_PRF
    prompt_context: bool = True
    scheme: ClassVar[str] = "kgw"

    def __post_init__(self) -> None:
        prf = _check_prf(self.prf)
        gamma = check_gamma(self.gamma, prf)
        delta = _check_number("delta", self.delta)
        if not (0.0 <= delta < math.inf):
            raise ConfigError(f"delta must be a finite number >= 0, got {self.delta!r}")
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "context_width",
                           check_generation_context_width(self.context_width))
        object.__setattr__(self, "prf", prf)
        _check_bool("prompt_context", self.prompt_context)

    def public(self, key_id: str) -> dict[str, Any]:
        """The public configuration of a watermark under the key with id ``key_id``."""
        return {"scheme": self.scheme, "gamma": self.gamma, "delta": self.delta,
                "context_width": self.context_width, "prf": self.prf,
                "prompt_context": self.prompt_context, "key_id": key_id}


@dataclass(frozen=True)
class GumbelConfig:
    """Gumbel-max sampling: the token is ``argmax(logits - log(-log u))``, ``u`` from the PRF.

    ``deduplicate_contexts="single_turn"`` (vLLM's default): a window already used at an earlier
    step of the same completion (within the last ``dedup_max_history`` steps) is sampled without
    the watermark, so a repeated window never forces a repeated token.
    """

    context_width: int = DEFAULT_CONTEXT_WIDTH["gumbel"]
    prf: str = DEFAULT_PRF
    prompt_context: bool = False
    deduplicate_contexts: DedupMode = "single_turn"
    dedup_max_history: int | None = VLLM_DEDUP_MAX_HISTORY
    scheme: ClassVar[str] = "gumbel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_width",
                           check_generation_context_width(self.context_width))
        object.__setattr__(self, "prf", _check_prf(self.prf))
        _check_bool("prompt_context", self.prompt_context)
        if self.deduplicate_contexts not in DEDUP_MODES:
            raise ConfigError(f"deduplicate_contexts must be one of {DEDUP_MODES}, got "
                              f"{self.deduplicate_contexts!r}")
        m = self.dedup_max_history
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"dedup_max_history must be a positive int or None, got {m!r}")

    def public(self, key_id: str) -> dict[str, Any]:
        """The public configuration of a watermark under the key with id ``key_id``."""
        return {"scheme": self.scheme, "context_width": self.context_width, "prf": self.prf,
                "prompt_context": self.prompt_context,
                "deduplicate_contexts": self.deduplicate_contexts,
                "dedup_max_history": self.dedup_max_history, "key_id": key_id}


def column_slices(rows: int, cols: int, device: torch.device) -> list[slice]:
    """Column slices of a [rows, cols] step: pieces small enough to run on the calling thread
    when the whole is small and on the CPU, else one slice (one parallel op)."""
    width = ATEN_GRAIN_SIZE // max(1, rows)
    if device.type != "cpu" or width == 0 or cols <= width or cols > width * SERIAL_CHUNKS:
        return [slice(None)]
    return [slice(a, min(cols, a + width)) for a in range(0, cols, width)]


class ContextTracker:
    """Builds each row's generation-time window from the ``input_ids`` a logits processor sees.

    transformers passes the whole sequence so far, ``[B, L]``, prompt (left-padded) included. The
    tracker notices the start of a new generation (the sequence did not just grow by one token)
    and records there the prompt length ``L0`` and each row's real start: the end of its leading
    run of ``pad_token_id`` (left padding), or 0 when ``pad_token_id`` is None. A prompt that
    itself begins with the pad token is thus read as padding there; such a prompt only changes
    windows that reach back to its first tokens.
    """

    def __init__(self, context_width: int, prompt_context: bool, pad_token_id: int | None) -> None:
        self.h = check_generation_context_width(context_width)
        self.prompt_context = _check_bool("prompt_context", prompt_context)
        if pad_token_id is not None and (isinstance(pad_token_id, bool)
                                         or not isinstance(pad_token_id, int)):
            raise ConfigError(f"pad_token_id must be an int or None, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id
        self.reset()

    def reset(self) -> None:
        """Forget the current generation: the next call starts a new one."""
        self._prev: torch.Tensor | None = None
        self.prompt_len = 0
        self._first: torch.Tensor | None = None  # [B] first column a window may read
        self._max_first: int | None = None  # its maximum, where known on the host
        self.windows_checked = False  # whether the last windows' ids were range-checked here

    @property
    def step_index(self) -> int:
        """Tokens generated so far in the current generation (valid after :meth:`step`)."""
        return 0 if self._prev is None else int(self._prev.shape[1]) - self.prompt_len

    def step(self, input_ids: torch.Tensor,
             work: Callable[[torch.Tensor], _T]) -> tuple[_T, torch.Tensor, bool]:
        """``work(windows)`` for this step: (its result, the windows [B, h] int64 on the input's
        device, whether a new generation started).

        On the fused (CUDA) path a batch that grew by one token is taken to continue the
        generation while ``work`` is queued, so the comparison's one wait on the GPU overlaps
        work's kernels; if the batch started a new generation after all, ``work`` runs again on
        that generation's windows. Raises :class:`TokenIdError` for an id out of range.
        """
        windows, new, unsettled = self._update(input_ids)
        result = work(windows)
        if unsettled is not None and not self._settle(input_ids, unsettled):
            new, windows = True, self.windows(input_ids)
            result = work(windows)
        return result, windows, new

    def _update(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
        """(windows, whether a new generation started, the previous ids where the comparison
        with them is left to :meth:`_settle`: on the fused path, for a batch that grew by one)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ConfigError("a logits processor expects input_ids as a [batch, length] tensor")
        prev = self._prev
        grew = (prev is not None and prev.shape[0] == input_ids.shape[0]
                and prev.shape[1] + 1 == input_ids.shape[1] and prev.device == input_ids.device)
        fused = routes_to_triton(input_ids)
        unsettled = prev if grew and fused else None
        new = unsettled is None and not (grew and torch.equal(input_ids[:, :-1], prev))
        if new:
            self._start(input_ids, fused)
        self._prev = input_ids
        self.windows_checked = fused
        return self.windows(input_ids), new, unsettled

    def _settle(self, input_ids: torch.Tensor, prev: torch.Tensor) -> bool:
        """After :meth:`_update`: whether ``input_ids`` really continued ``prev`` (if not, a new
        generation starts here). Raises :class:`TokenIdError` for a new id out of range."""
        self._prev = None  # until the checks below pass: after a refusal, the next call restarts
        continued = self._continues(input_ids, prev)
        if not continued:
            self._start(input_ids, True)
        self._prev = input_ids
        return continued

    @staticmethod
    def _continues(input_ids: torch.Tensor, prev: torch.Tensor) -> bool:
        """One kernel and one wait: the prefix compared with ``prev``, the new id checked."""
        from fingerprint.watermark import triton_steps

        flags = triton_steps.continuation(input_ids, prev, PAD, MAX_TOKEN_ID)
        if flags & 1:
            return False
        if flags & 2:
            check_id_range(input_ids[:, -1:], PAD, MAX_TOKEN_ID, "input_ids")
        return True

    def _start(self, input_ids: torch.Tensor, fused: bool = False) -> None:
        b, length = input_ids.shape
        self.prompt_len = int(length)
        self._max_first = None
        if not self.prompt_context:
            first = torch.full((b,), length, dtype=torch.int64, device=input_ids.device)
        elif self.pad_token_id is None:
            first = torch.zeros((b,), dtype=torch.int64, device=input_ids.device)
        else:
            real = input_ids != self.pad_token_id
            # the first real column; a row of padding only starts after its end
            first = torch.where(real.any(dim=1), real.to(torch.int32).argmax(dim=1),
                                torch.full((b,), length, device=input_ids.device))
        self._first = first.to(torch.int64)
        if fused:  # every id a window can read, checked once (each later one by update)
            cols = torch.arange(length, device=input_ids.device)
            real = torch.where(cols[None, :] >= self._first[:, None], input_ids, PAD)
            check_id_range(real, PAD, MAX_TOKEN_ID, "input_ids")
            self._max_first = int(self._first.max()) if b else 0

    def windows(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The current windows [B, h] of ``input_ids`` under the recorded generation start."""
        if self._first is None:
            raise InputError("no generation started yet: call update(input_ids) first")
        length = input_ids.shape[1]
        if self._max_first is not None and length - self.h >= self._max_first:
            return input_ids[:, length - self.h:].long()  # every row's window is all real
        pos = torch.arange(length - self.h, length, device=input_ids.device)
        vals = input_ids[:, pos.clamp(min=0)].to(torch.int64)
        valid = pos[None, :] >= self._first[:, None]  # also false for pos < 0
        return torch.where(valid, vals, torch.full_like(vals, PAD))


class KeyedWatermarkingConfig(BaseWatermarkingConfig):
    """Base of the ``watermarking_config=`` objects: public forms only, never the key.

    transformers deep-copies, compares, prints and serializes generation configs; here all of
    that sees the public configuration (:attr:`config`). A copy is the object itself (it is
    immutable; its keyed PRF cannot be copied or pickled). Subclasses set :attr:`config` and
    :meth:`construct_processor`, which records its processor in :attr:`last_processor`.
    """

    last_processor: Any = None

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration. Never the key."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> KeyedWatermarkingConfig:
        """Refused: a public configuration has no key to rebuild the watermark from."""
        raise ConfigError(f"a {cls.__name__} cannot be rebuilt from its public dict; build it "
                          f"from the key: {cls.__name__}(key, ...)")

    def validate(self) -> None:
        """Parameters are validated at construction."""

    def construct_processor(self, vocab_size: int, device: Any = None) -> Any:
        """A fresh processor for one generate call (the vocabulary size is read from logits)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The public configuration (no key)."""
        return self.config

    def to_json_string(self) -> str:
        """The public configuration as JSON."""
        return json.dumps(self.config, indent=2) + "\n"

    def __iter__(self) -> Any:
        yield from self.config.items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyedWatermarkingConfig):
            return NotImplemented
        return type(self) is type(other) and self.config == other.config

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config.items())))

    def __deepcopy__(self, memo: dict[int, Any]) -> KeyedWatermarkingConfig:
        return self

    def __copy__(self) -> KeyedWatermarkingConfig:
        return self

    def __reduce__(self) -> tuple:
        raise TypeError(f"a {type(self).__name__} holds a keyed PRF and cannot be pickled; "
                        "rebuild it from its key in each process")


__all__ = [
    "DEDUP_MODES",
    "DEFAULT_CONTEXT_WIDTH",
    "MAX_GENERATION_CONTEXT_WIDTH",
    "VLLM_DEDUP_MAX_HISTORY",
    "ContextTracker",
    "DedupMode",
    "GumbelConfig",
    "KGWConfig",
    "KeyedWatermarkingConfig",
    "check_generation_context_width",
]
