"""The keyed PRF interface, its registry of versioned names, and backend dispatch.

A PRF maps (key, window of ``h`` tokens, candidate token) to a uniform value in (0, 1). It is the
only code in the project that does so: the watermark and the detector both call it.

Three entry points, each batched, each on numpy arrays or torch tensors (CPU or CUDA):

* :meth:`PRF.score`: token ids [B, T] (+ optional mask) -> the value of every position [B, T],
  windows taken from the sequence itself (optionally scoring other ``candidates`` [B, T] in the
  same windows, as the reading-mode audit does).
* :meth:`PRF.row`: windows [B, h] -> the value of every vocabulary entry [B, V] (generation).
* :meth:`PRF.pairs`: explicit windows [N, h] and tokens [N] -> [N].

Backends: ``"numba"`` runs a fused, multi-threaded CPU kernel (numpy arrays, and torch CPU
tensors through a zero-copy view); ``"triton"`` runs a fused Triton kernel on CUDA tensors (the
default there when Triton is importable, as it is with torch's CUDA builds); ``"torch"`` runs
vectorized tensor ops on the tensor's device (CUDA without Triton, or CPU when asked). All three
compute the same integer words and the same float mapping, so their outputs are bit-identical;
the tests check it.

Two fused steps serve the watermark on CUDA (:meth:`PRF.fused_green_add` for KGW,
:meth:`PRF.fused_gumbel_argmax` for Gumbel-max): they read the logits once and never write the
[B, V] values.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from numbers import Real
from typing import Any, ClassVar, Literal

import numpy as np

from fingerprint.core.contexts import (
    PAD,
    as_token_matrix,
    check_context_width,
    check_integer_dtype,
    check_out,
    max_token_id,
)
from fingerprint.errors import BackendError, ConfigError, ShapeError, TokenIdError
from fingerprint.keys import WatermarkKey, as_key

Backend = Literal["auto", "numba", "torch", "triton"]
_TORCH_CHUNK = 1 << 22  # positions per torch chunk: bounds the [chunk, h] temporaries


def _is_tensor(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class PRF(ABC):
    """A keyed pseudo-random function over (window, token), with a versioned name.

    Subclasses set :attr:`name`, :attr:`uniform_dtype` and :attr:`levels`, derive their kernel
    key words from a :class:`~fingerprint.keys.WatermarkKey`, and provide a numba kernel and a
    torch implementation of the same function.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    uniform_dtype: ClassVar[type[np.floating]]
    levels: ClassVar[int]  # the number of equally likely output levels (uniform: monotone in it)

    def __init__(self, key: WatermarkKey | int | str, scheme: str = "default") -> None:
        key = as_key(key)
        if not isinstance(scheme, str) or not scheme:
            raise ConfigError("scheme must be a non-empty string such as 'kgw' or 'gumbel'")
        self.scheme = scheme
        self.key_id = key.key_id
        self.__words = self._derive_words(key, scheme)

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _derive_words(self, key: WatermarkKey, scheme: str) -> tuple[int, ...]:
        """The kernel key words (unsigned 64-bit ints) for ``key`` and ``scheme``."""

    # Numba kernels, shared by all instances (key words are arguments):
    #   _score_kernel(x, cand, valid, first, maxid, hspec, *words, out) -> number of bad tokens,
    #     computing positions t >= max(first, h) of int64 [B, T] arrays; ``hspec`` is a tuple of
    #     length h, so each width compiles (and caches on disk) to its own unrolled kernel;
    #   _row_kernel(contexts [B, h], hspec, *words, out [B, V]);
    #   optionally _gumbel_kernel(contexts, hspec, *words, *gumbel_max.choice_args(logits),
    #     out [B]) for float64 uniforms: the Gumbel-max choice, a row's uniforms at a time.
    _score_kernel: ClassVar[Callable[..., int]]
    _row_kernel: ClassVar[Callable[..., None]]
    _gumbel_kernel: ClassVar[Callable[..., None] | None] = None

    @classmethod
    @abstractmethod
    def _torch_uniform(cls, windows: Any, tokens: Any, words: tuple[int, ...]) -> Any:
        """Torch ops: windows int64 [..., h] and tokens int64 broadcastable to [...] -> [...]."""

    @classmethod
    @abstractmethod
    def level_uniform(cls, level: np.ndarray) -> np.ndarray:
        """The uniform value of output level(s) ``level`` in ``[0, levels)`` (monotone)."""

    # -- public facts -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scheme={self.scheme!r}, " \
               f"key_id={self.key_id!r})"

    def __reduce__(self) -> tuple:
        raise TypeError("a keyed PRF cannot be pickled; rebuild it from its key in each process")

    @property
    def config(self) -> dict[str, Any]:
        """The public configuration: PRF name, scheme and key id. Never the key."""
        return {"prf": self.name, "scheme": self.scheme, "key_id": self.key_id}

    @classmethod
    def green_probability(cls, gamma: float) -> float:
        """The exact probability that a uniform output falls below ``gamma``.

        Outputs are discrete (``levels`` values), so this differs from ``gamma`` by at most
        ``1 / levels``. Exact tests use this value.
        """
        return cls.green_levels(gamma) / cls.levels

    @classmethod
    @functools.lru_cache(maxsize=256)  # per PRF class and gamma: a pure function of both
    def green_levels(cls, gamma: float) -> int:
        """How many output levels give a uniform below ``gamma``: ``u < gamma`` (compared in
        the uniforms' dtype) holds exactly when the level is below this count."""
        if not (isinstance(gamma, float | int) and 0.0 < float(gamma) < 1.0):
            raise ConfigError(f"gamma must lie strictly between 0 and 1, got {gamma!r}")
        lo, hi = 0, cls.levels  # count = number of levels m with u(m) < gamma (monotone u)
        while lo < hi:
            mid = (lo + hi) // 2
            if cls.level_uniform(np.array([mid], dtype=np.uint64))[0] < gamma:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # -- scoring ------------------------------------------------------------------------------
    def score(
        self,
        tokens: Any,
        context_width: int,
        *,
        candidates: Any = None,
        mask: Any = None,
        vocab_size: int | None = None,
        backend: Backend = "auto",
        out: np.ndarray | None = None,
    ) -> Any:
        """The value of each position of ``tokens`` [T] or [B, T] given its window.

        ``candidates`` (same shape) scores another token at each position, in the window taken
        from ``tokens``. ``mask`` (bool, same shape) marks real tokens; a masked position reads as
        padding in later windows and gets NaN. Returns an array of the input's kind and device.
        ``out`` (numpy inputs only): a C-contiguous array of the result's shape and dtype to
        write into, so that a caller scoring batch after batch reuses one buffer (fresh memory
        costs a page fault per 4 KiB, which can exceed the kernel's own time).
        """
        h = check_context_width(context_width)
        maxid = max_token_id(vocab_size)
        path = _route(tokens, backend)
        if out is not None and (path != "numba" or _is_tensor(tokens)):
            raise ConfigError("out= takes numpy token ids (and gives numpy values)")
        if path != "numba":
            return self._score_torch(tokens, h, candidates, mask, maxid, path == "triton")
        x, squeeze, to_torch = _to_numpy_matrix(tokens, "tokens")
        cand = x if candidates is None else _match(candidates, x.shape, "candidates")
        valid = None if mask is None else _mask_matrix(mask, x.shape)
        if out is None:
            out = np.empty(x.shape, dtype=self.uniform_dtype)
        else:
            out = out[None, :] if isinstance(out, np.ndarray) and out.ndim == 1 else out
            out = check_out(out, x.shape, self.uniform_dtype)
        with _threads_for(out.size):
            bad = self._score_kernel(x, cand, valid, 0, maxid, (0,) * h, *self.__words, out)
        head = min(h, x.shape[1])
        if head:  # windows that reach before the start: run them on a copy padded with -1
            pad = np.full((x.shape[0], h), PAD, dtype=np.int64)
            hx = np.concatenate([pad, x[:, :head]], axis=1)
            hc = hx if candidates is None else np.concatenate([pad, cand[:, :head]], axis=1)
            hv = None if valid is None else np.concatenate(
                [np.ones_like(pad, dtype=bool), valid[:, :head]], axis=1)
            hout = np.empty(hx.shape, dtype=self.uniform_dtype)
            bad += self._score_kernel(hx, hc, hv, h, maxid, (0,) * h, *self.__words, hout)
            out[:, :head] = hout[:, h:]
        if bad:
            _raise_bad_tokens(cand if candidates is not None else x, valid, maxid)
        return _from_numpy(out[0] if squeeze else out, to_torch)

    def pairs(
        self, contexts: Any, tokens: Any, *, vocab_size: int | None = None,
        backend: Backend = "auto",
    ) -> Any:
        """The value of ``tokens[i]`` [N] in the explicit window ``contexts[i]`` [N, h]."""
        path = _route(contexts, backend)
        if path != "numba":
            torch = _torch()
            ctx = _torch_matrix(contexts, "contexts")
            tok = torch.as_tensor(tokens, device=ctx.device)
            check_integer_dtype(tok.dtype, "tokens")
            _check_pairs_shapes(tuple(ctx.shape), tuple(tok.shape))
            h = check_context_width(ctx.shape[1])
            check_id_range(ctx, -1, max_token_id(None), "contexts")
            check_id_range(tok, 0, max_token_id(vocab_size), "tokens")
            if path == "triton":
                x = torch.cat([ctx, tok.long()[:, None]], dim=1).contiguous()
                return self._triton().score(self._kind, self._keys_on(x.device), x, x, None,
                                            h, first=h)[:, h].contiguous()
            return self._torch_uniform(ctx, tok.long(), self.__words)
        ctx, _, to_torch = _to_numpy_matrix(contexts, "contexts")
        tok = np.asarray(tokens.cpu() if _is_tensor(tokens) else tokens)
        check_integer_dtype(tok.dtype, "tokens")
        _check_pairs_shapes(ctx.shape, tok.shape)
        h = check_context_width(ctx.shape[1])
        _check_range_numpy(ctx, -1, max_token_id(None), "contexts")
        x = np.concatenate([ctx, tok.astype(np.int64)[:, None]], axis=1)
        out = np.empty(x.shape, dtype=self.uniform_dtype)
        maxid = max_token_id(vocab_size)
        with _threads_for(tok.size):
            bad = self._score_kernel(x, x, None, h, maxid, (0,) * h, *self.__words, out)
        if bad:
            _raise_bad_tokens(tok[None, :], None, max_token_id(vocab_size))
        return _from_numpy(np.ascontiguousarray(out[:, h]), to_torch)

    def row(self, contexts: Any, vocab_size: int, *, backend: Backend = "auto") -> Any:
        """The value of every token ``0..V-1`` in each window ``contexts`` [B, h] -> [B, V]."""
        maxid = max_token_id(vocab_size)
        path = _route(contexts, backend)
        if path != "numba":
            torch = _torch()
            ctx = _torch_matrix(contexts, "contexts")
            check_context_width(ctx.shape[1])
            check_id_range(ctx, -1, max_token_id(None), "contexts")
            if path == "triton":
                ctx = ctx.contiguous()
                return self._triton().row(self._kind, self._keys_on(ctx.device), ctx, maxid + 1)
            vocab = torch.arange(maxid + 1, device=ctx.device, dtype=torch.int64)
            return self._torch_uniform(ctx[:, None, :], vocab[None, :], self.__words)
        ctx, _, to_torch = _to_numpy_matrix(contexts, "contexts")
        h = check_context_width(ctx.shape[1])
        _check_range_numpy(ctx, -1, max_token_id(None), "contexts")
        out = np.empty((ctx.shape[0], maxid + 1), dtype=self.uniform_dtype)
        with _threads_for(out.size):
            self._row_kernel(ctx, (0,) * h, *self.__words, out)
        return _from_numpy(out, to_torch)

    # -- fused watermark steps (CUDA) -------------------------------------------------------
    def fused_green_add(self, windows: Any, logits: Any, gamma: float, delta: float, *,
                        checked: bool = False) -> Any:
        """KGW's step in one kernel: ``logits + delta`` where ``u(window, token) < gamma``.

        Runs when ``logits`` [B, V] is a CUDA tensor and Triton is importable; returns None
        otherwise (the caller then uses :meth:`row`). Green is decided exactly as ``u < gamma``
        in the uniforms' dtype; the sum is torch's CUDA ``add(logits, green, alpha=delta)``.
        ``checked=True`` says the windows' ids are known to lie in [-1, 2**31 - 1] (the
        processors' trackers check each id once), which spares a wait on the GPU.
        """
        if not routes_to_triton(logits):
            return None
        ctx = self._checked_windows(windows, logits, checked)
        return self._triton().green_add(self._kind, self._keys_on(ctx.device), ctx, logits,
                                        self.green_levels(gamma), float(delta))

    def fused_gumbel_argmax(self, windows: Any, logits: Any, *, checked: bool = False) -> Any:
        """The Gumbel step in one kernel: ``argmax(logits - log(-log u))`` per row, [B] int64.

        On CUDA with Triton: one kernel, the noise computed in the uniforms' dtype with CUDA's
        ``log``. On the CPU, for PRFs with float64 uniforms (``_gumbel_kernel``): each row's
        uniforms in a cache-resident buffer, then the exact choice of
        :mod:`fingerprint.core.gumbel_max`, which values only the tokens that could still win.
        Ties go to the lowest index. None otherwise (the caller then uses :meth:`row`).
        ``checked`` as for :meth:`fused_green_add`.
        """
        path = _route(logits, "auto")
        if path == "numba" and self._gumbel_kernel is not None and _is_tensor(logits):
            from fingerprint.core import gumbel_max

            ctx = self._checked_windows(windows, logits).numpy()
            lg = gumbel_max.logits_array(logits)
            out = np.empty(ctx.shape[0], dtype=np.int64)
            with _threads_for(lg.size):
                self._gumbel_kernel(ctx, (0,) * ctx.shape[1], *self.__words,
                                    *gumbel_max.choice_args(lg), out)
            return _torch().from_numpy(out)
        if path != "triton":
            return None
        ctx = self._checked_windows(windows, logits, checked)
        return self._triton().gumbel_argmax(self._kind, self._keys_on(ctx.device), ctx, logits)

    def _checked_windows(self, windows: Any, logits: Any, checked: bool = False) -> Any:
        """The windows as int64 on the logits' device, with unit column stride (the kernels
        take any row stride), after the shape checks and, unless ``checked``, the id range."""
        if (checked and _is_tensor(windows) and windows.ndim == 2
                and windows.dtype == _torch().int64 and windows.device == logits.device):
            ctx = windows  # a tracker's windows: [B, h] int64, already on the device
        else:
            ctx = _torch_matrix(windows, "contexts").to(logits.device)
        if not (checked and ctx.stride(1) == 1):
            ctx = ctx.contiguous()
        check_context_width(ctx.shape[1])
        if logits.ndim != 2 or logits.shape[0] != ctx.shape[0]:
            raise ShapeError(f"logits must have shape [B, V] with B = {ctx.shape[0]} windows, "
                             f"got {tuple(logits.shape)}")
        max_token_id(logits.shape[1] if logits.shape[1] else None)
        if not checked:
            check_id_range(ctx, -1, max_token_id(None), "contexts")
        return ctx

    # -- Triton path --------------------------------------------------------------------------
    _kind: ClassVar[int]  # the PRF's kind in fingerprint.core.triton_prf

    @staticmethod
    def _triton() -> Any:
        from fingerprint.core import triton_prf

        return triton_prf

    def _keys_on(self, device: Any) -> Any:
        """The key words as a device tensor, made once per device (a kernel argument)."""
        cache = self.__dict__.setdefault("_device_keys", {})
        keys = cache.get(device)
        if keys is None:
            keys = cache[device] = self._triton().key_tensor(self.__words, device)
        return keys

    # -- torch path ---------------------------------------------------------------------------
    def _score_torch(self, tokens: Any, h: int, candidates: Any, mask: Any, maxid: int,
                     fused: bool = False) -> Any:
        torch = _torch()
        squeeze = tokens.ndim == 1
        x = _torch_matrix(tokens, "tokens")
        cand = x if candidates is None else _torch_matrix(candidates, "candidates").to(x.device)
        if cand.shape != x.shape:
            raise ShapeError(f"candidates shape {tuple(cand.shape)} != tokens {tuple(x.shape)}")
        if mask is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            valid = torch.as_tensor(mask, device=x.device).bool()
            valid = valid[None, :] if valid.ndim == 1 else valid
            if valid.shape != x.shape:
                raise ShapeError(f"mask shape {tuple(valid.shape)} != tokens {tuple(x.shape)}")
        bad = ((cand < 0) | (cand > maxid)) & valid
        if bool(bad.any()):
            _raise_bad_tokens(cand.cpu().numpy(), valid.cpu().numpy(), maxid)
        if fused:
            out = self._triton().score(self._kind, self._keys_on(x.device), x.contiguous(),
                                       cand.contiguous(),
                                       None if mask is None else valid.contiguous(), h)
            return out[0] if squeeze else out
        xw = x.masked_fill(~valid, PAD)
        padded = torch.nn.functional.pad(xw, (h, 0), value=PAD)
        out = torch.empty(x.shape, dtype=_torch_dtype(self.uniform_dtype), device=x.device)
        step = max(1, _TORCH_CHUNK // max(1, x.shape[0]))
        for t0 in range(0, x.shape[1], step):
            t1 = min(x.shape[1], t0 + step)
            win = padded[:, t0 : t1 + h].unfold(1, h, 1)[:, : t1 - t0, :]
            out[:, t0:t1] = self._torch_uniform(win, cand[:, t0:t1], self.__words)
        out = out.masked_fill(~valid, math.nan)
        return out[0] if squeeze else out


# -- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[PRF]] = {}
DEFAULT_PRF = "siphash24-v1"


def register_prf(cls: type[PRF]) -> type[PRF]:
    """Register a PRF class under its versioned name and aliases (a class decorator)."""
    for n in (cls.name, *cls.aliases):
        if n in _REGISTRY and _REGISTRY[n] is not cls:
            raise ConfigError(f"PRF name {n!r} is already registered")
        _REGISTRY[n] = cls
    return cls


def prf_class(name: str) -> type[PRF]:
    """The PRF class registered as ``name`` (a versioned name or an alias)."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(available_prfs()))
        raise ConfigError(f"unknown PRF {name!r}; available: {known}") from None


def check_gamma(gamma: Any, prf: str | type[PRF] | PRF = DEFAULT_PRF) -> float:
    """``gamma`` as a float, refused unless some but not all outputs of ``prf`` fall below it.

    KGW marks a token green when its value u is below gamma. u takes ``levels`` discrete values,
    so a gamma at or below the smallest one (or above the largest) makes no token (every token)
    green: the exact green probability :meth:`PRF.green_probability` is then 0 (1) and no test
    is possible. Python and numpy real scalars are accepted (bools are not). ``prf`` is a PRF
    name, class or instance. Raises ConfigError naming the gamma and the PRF's resolution.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, Real):
        raise ConfigError(f"gamma must be a number, got {gamma!r}")
    g = float(gamma)
    if not 0.0 < g < 1.0:
        raise ConfigError(f"gamma must lie strictly between 0 and 1, got {gamma!r}")
    cls = prf if isinstance(prf, type) else type(prf) if isinstance(prf, PRF) else prf_class(prf)
    count = cls.green_levels(g)
    if 0 < count < cls.levels:
        return g
    bits = cls.levels.bit_length() - 1
    res = f"2**-{bits}" if cls.levels == 1 << bits else f"1/{cls.levels}"
    if count == 0:
        lo, nxt = (float(v) for v in cls.level_uniform(np.array([0, 1], dtype=np.uint64)))
        raise ConfigError(
            f"gamma {g!r} is below the resolution {res} of PRF {cls.name} (its smallest value "
            f"is {lo!r}): no token would be green; pass a gamma of at least {nxt!r}")
    hi = float(cls.level_uniform(np.array([cls.levels - 1], dtype=np.uint64))[0])
    raise ConfigError(
        f"gamma {g!r} is above the largest value {hi!r} of PRF {cls.name} (resolution {res}): "
        f"every token would be green; pass a gamma of at most {hi!r}")


def get_prf(name: str, key: WatermarkKey | int | str, scheme: str = "default") -> PRF:
    """A keyed PRF instance: ``get_prf("siphash24-v1", key, "kgw")``."""
    return prf_class(name)(key, scheme)


def available_prfs() -> list[str]:
    """The versioned names of all registered PRFs."""
    _load_builtin()
    return sorted({cls.name for cls in _REGISTRY.values()})


def _load_builtin() -> None:
    from fingerprint.core import philox, siphash  # noqa: F401  (registers the built-in PRFs)


@contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """One thread for small kernels: a per-token call (a vocabulary row) finishes in well under
    a millisecond alone, while waiting for a second, busy core can cost a scheduler slice."""
    import numba

    before = numba.get_num_threads()
    if work <= SERIAL_WORK and before > 1:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


SERIAL_WORK = 1 << 19  # outputs below which a kernel runs on the calling thread alone


# -- array helpers ------------------------------------------------------------------------------
def _torch() -> Any:
    import torch

    return torch


def _torch_dtype(dtype: type[np.floating]) -> Any:
    torch = _torch()
    return torch.float64 if dtype is np.float64 else torch.float32


def _route(x: Any, backend: Backend) -> str:
    """The code that runs for input ``x``: ``"numba"``, ``"torch"`` or ``"triton"``."""
    if backend not in ("auto", "numba", "torch", "triton"):
        raise ConfigError(
            f"backend must be 'auto', 'numba', 'torch' or 'triton', got {backend!r}")
    on_device = _is_tensor(x) and x.device.type != "cpu"
    if _FORCED is not None and _is_tensor(x) and backend == "auto":
        _FORCED[1].append(x.device.type)
        backend = _FORCED[0]  # type: ignore[assignment]
    if backend == "numba" and on_device:
        raise BackendError("the numba backend runs on the CPU; move the tensor with .cpu()")
    if backend == "triton":
        if not triton_available():
            raise BackendError("the triton backend needs the triton package (torch's CUDA "
                               "builds ship it)")
        if not (on_device or _triton_interpreted()):
            raise BackendError("the triton backend runs on CUDA tensors (or on CPU tensors "
                               "under TRITON_INTERPRET=1, for testing)")
    if backend != "auto":
        return backend
    if on_device:
        return "triton" if x.device.type == "cuda" and triton_available() else "torch"
    return "numba"


_FORCED: tuple[str, list[str]] | None = None


@contextmanager
def tensor_path(path: Literal["torch", "triton"]) -> Iterator[list[str]]:
    """Inside: every torch tensor routed with ``backend="auto"`` takes ``path``, CPU tensors
    included (so the CUDA code runs, and is tested, on any machine; Triton on the CPU needs
    ``TRITON_INTERPRET=1``). Yields the list of device types the routed tensors came from."""
    global _FORCED
    before, seen = _FORCED, []
    _FORCED = (path, seen)
    try:
        yield seen
    finally:
        _FORCED = before


def routes_to_triton(x: Any) -> bool:
    """Whether a tensor takes the fused Triton code (CUDA, or :func:`tensor_path` "triton")."""
    return _route(x, "auto") == "triton"


def triton_available() -> bool:
    """Whether the fused Triton kernels can be used (the triton package imports)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            _TRITON_OK = False
        else:
            _TRITON_OK = True
    return _TRITON_OK


_TRITON_OK: bool | None = None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _to_numpy_matrix(x: Any, what: str) -> tuple[np.ndarray, bool, Any]:
    """(int64 [B, T] numpy array, was it 1-D, torch device or None)."""
    if _is_tensor(x):
        check_integer_dtype(x.dtype, what)
        arr = x.detach().cpu().numpy()
        return as_token_matrix(arr, what), arr.ndim == 1, x.device
    try:
        arr = np.asarray(x)
    except ValueError:
        arr = np.empty(0, dtype=object)
    if arr.dtype == object:
        raise TokenIdError(
            f"{what} must be a rectangular integer array, not a ragged list; "
            "pad the rows and pass a mask")
    return as_token_matrix(arr, what), arr.ndim == 1, None


def _from_numpy(out: np.ndarray, device: Any) -> Any:
    if device is None:
        return out
    return _torch().from_numpy(out).to(device)


def _torch_matrix(x: Any, what: str) -> Any:
    torch = _torch()
    t = x if _is_tensor(x) else torch.as_tensor(np.asarray(x))
    check_integer_dtype(t.dtype, what)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2:
        raise ShapeError(f"{what} must have shape [T] or [B, T], got {tuple(t.shape)}")
    return t.long()


def _match(x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr, _, _ = _to_numpy_matrix(x, what)
    if arr.shape != shape:
        raise ShapeError(f"{what} shape {arr.shape} does not match tokens shape {shape}")
    return arr


def _mask_matrix(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask.cpu() if _is_tensor(mask) else mask)
    if m.dtype != bool and not (m.dtype.kind in "iu" and set(np.unique(m)) <= {0, 1}):
        raise ShapeError("mask must be boolean (or 0/1 integers)")
    m = m.astype(bool)
    m = m[None, :] if m.ndim == 1 else m
    if m.shape != shape:
        raise ShapeError(f"mask shape {m.shape} does not match tokens shape {shape}")
    return np.ascontiguousarray(m)


def _check_pairs_shapes(ctx: tuple[int, ...], tok: tuple[int, ...]) -> None:
    if len(tok) != 1 or tok[0] != ctx[0]:
        raise ShapeError(f"tokens must have shape [N] = [{ctx[0]}] to match contexts {ctx}")


def _check_range_numpy(a: np.ndarray, lo: int, hi: int, what: str) -> None:
    if a.size and (a.min() < lo or a.max() > hi):
        _raise_bad_tokens(a, None, hi, lo=lo, what=what)


def check_id_range(a: Any, lo: int, hi: int, what: str) -> None:
    """Raise :class:`TokenIdError`, naming the first offending id, unless tensor ``a`` lies in
    [lo, hi] (one wait on its device)."""
    if a.numel() and bool(((a < lo) | (a > hi)).any()):
        _raise_bad_tokens(a.cpu().numpy(), None, hi, lo=lo, what=what)


def _raise_bad_tokens(
    x: np.ndarray, valid: np.ndarray | None, maxid: int, lo: int = 0, what: str = "token ids"
) -> None:
    bad = (x < lo) | (x > maxid)
    if valid is not None:
        bad &= valid
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    value = int(x[where])
    raise TokenIdError(
        f"{what} must lie in [{lo}, {maxid}]; found {value} at index {where}. "
        "Check the tokenizer and vocab_size, and mask padding instead of using negative ids"
    )


__all__ = ["DEFAULT_PRF", "PRF", "available_prfs", "get_prf", "prf_class", "register_prf"]
