"""The fused Triton kernels, bit for bit against the numba kernels.

On a CUDA machine they run compiled on the GPU; elsewhere under Triton's interpreter
(``TRITON_INTERPRET=1``, numpy on the CPU), which runs the same kernel code with the same integer
and float semantics, so the algorithm is checked on every machine. Sizes stay small: the
interpreter runs each program of the grid in Python.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from .conftest import has_cuda

DEVICE = "cuda" if has_cuda() else "cpu"
if DEVICE == "cpu":  # must be set before the kernels are defined (first import below)
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fingerprint.core import get_prf  # noqa: E402
from fingerprint.core import prf as prf_module  # noqa: E402
from fingerprint.core.siphash import level_to_uniform  # noqa: E402
from fingerprint.core.triton_prf import _philox_uniform, _sip_uniform  # noqa: E402
from fingerprint.errors import BackendError, ShapeError, TokenIdError  # noqa: E402
from fingerprint.keys import WatermarkKey  # noqa: E402
from fingerprint.watermark import GumbelLogitsProcessor, KGWLogitsProcessor  # noqa: E402
from fingerprint.watermark.gumbel import gumbel_argmax  # noqa: E402

from .test_core import SIP_TOP, old_sip_uniform, sip_words  # noqa: E402
from .test_cuda import check_choice, gumbel_reference  # noqa: E402

KEY = WatermarkKey(bytes(range(32)))
INT_KEY = WatermarkKey.from_int(2**63 + 12345)  # high bit set: the key words' sign handling
PRFS = [("siphash24-v1", KEY), ("philox4x32-10-v1", INT_KEY), ("philox4x32-10-v1", KEY)]
WIDTHS = [1, 2, 3, 4, 5, 8, 16]
V = 5_003  # not a multiple of the kernels' blocks, nor of Philox's four-token groups


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)


def same(got: torch.Tensor, want: np.ndarray) -> bool:
    arr = got.cpu().numpy()
    return arr.dtype == want.dtype and arr.shape == want.shape and np.array_equal(
        arr, want, equal_nan=True)


@pytest.mark.parametrize("name,key", PRFS)
@pytest.mark.parametrize("h", WIDTHS)
def test_score_pairs_and_row(name: str, key: WatermarkKey, h: int) -> None:
    prf = get_prf(name, key, "kgw")
    rng = np.random.default_rng(h)
    x = rng.integers(0, 2**31 - 1, (3, 300))
    x[0, :3] = [0, 2**31 - 1, 1]
    mask = rng.random(x.shape) > 0.2
    mask[1, :40] = False
    cand = rng.integers(0, 2**31 - 1, x.shape)
    for extra in ({}, {"mask": mask}, {"candidates": cand, "mask": mask}):
        want = prf.score(x, h, **extra)
        got = prf.score(t(x), h, backend="triton", **{k: t(v) for k, v in extra.items()})
        assert got.device.type == DEVICE and same(got, want), extra
    assert same(prf.score(t(x[1]), h, backend="triton"), prf.score(x[1], h))  # 1-D input
    ctx = rng.integers(-1, 2**31 - 1, (50, h))
    tok = rng.integers(0, 2**31 - 1, 50)
    assert same(prf.pairs(t(ctx), t(tok), backend="triton"), prf.pairs(ctx, tok))
    rows = rng.integers(-1, 200_000, (3, h))
    assert same(prf.row(t(rows), V, backend="triton"), prf.row(rows, V))


@pytest.mark.parametrize("name,key", PRFS)
def test_bad_input_is_refused_as_on_the_cpu(name: str, key: WatermarkKey) -> None:
    prf = get_prf(name, key, "kgw")
    x = np.array([[3, 4, 70_000, 5]])
    with pytest.raises(TokenIdError, match="70000"):
        prf.score(t(x), 2, vocab_size=50_000, backend="triton")
    with pytest.raises(TokenIdError):
        prf.row(t(np.array([[-2, 3]])), 10, backend="triton")
    with pytest.raises(ShapeError):
        _forced(prf.fused_green_add, t(np.zeros((2, 2), dtype=np.int64)),
                torch.zeros(3, 10, device=DEVICE), 0.25, 2.0)


def test_triton_backend_needs_a_device_or_the_interpreter(monkeypatch) -> None:
    prf = get_prf("siphash24-v1", KEY)
    x = torch.arange(10)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="CUDA"):
        prf.score(x, 2, backend="triton")
    monkeypatch.setattr(prf_module, "_TRITON_OK", False)
    with pytest.raises(BackendError, match="triton package"):
        prf.score(x, 2, backend="triton")
    assert prf_module._route(x, "auto") == "numba"


@pytest.mark.parametrize("name,key", PRFS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("gamma", [0.25, 0.3, 0.5])
def test_green_add(name: str, key: WatermarkKey, dtype: torch.dtype, gamma: float) -> None:
    """The bias lands exactly on ``u < gamma`` (u's dtype), summed as torch's CUDA add does."""
    prf = get_prf(name, key, "kgw")
    rng = np.random.default_rng(7)
    ctx = rng.integers(-1, 49_152, (3, 2))
    logits = (torch.randn(3, V, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    logits[0, :50] = -torch.inf  # top-k's masked entries stay -inf
    green = torch.from_numpy(prf.row(ctx, V) < gamma)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    want = (logits.to(wide) + green.to(wide) * torch.tensor(2.3, dtype=wide)).to(dtype)
    got = prf.fused_green_add(t(ctx), logits.to(DEVICE), gamma, 2.3) \
        if DEVICE == "cuda" else _forced(prf.fused_green_add, t(ctx), logits, gamma, 2.3)
    assert got.dtype == dtype and torch.equal(got.cpu(), want)
    assert abs(green.float().mean().item() - gamma) < 0.02  # the test itself has teeth


@pytest.mark.parametrize("name,key", PRFS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gumbel_argmax(name: str, key: WatermarkKey, dtype: torch.dtype) -> None:
    """The choice equals the reference's; only near-ties may differ, by the log's last bit."""
    prf = get_prf(name, key, "gumbel")
    rng = np.random.default_rng(8)
    ctx = rng.integers(-1, 49_152, (6, 4))
    logits = (torch.randn(6, V, generator=torch.Generator().manual_seed(2)) * 4).to(dtype)
    logits[1, torch.randperm(V, generator=torch.Generator().manual_seed(3))[:V - 30]] = -torch.inf
    logits[2, :] = 0.0  # all equal: the noise alone decides
    logits[3, V - 1] = 1e4  # the very last token wins
    u = prf.row(ctx, V)
    want, noisy = gumbel_reference(logits, u)
    got = prf.fused_gumbel_argmax(t(ctx), logits.to(DEVICE)) if DEVICE == "cuda" else \
        _forced(prf.fused_gumbel_argmax, t(ctx), logits)
    assert got.dtype == torch.int64 and got.shape == (6,)
    assert int(got[3]) == V - 1
    assert bool(torch.isfinite(logits[1, got[1].cpu()]))
    check_choice(got.cpu(), want, noisy, DEVICE)
    check_choice(got.cpu(), gumbel_argmax(logits, torch.from_numpy(u)), noisy, DEVICE)


@pytest.mark.parametrize("name,key", PRFS[:2])
def test_processors_take_the_fused_steps(name: str, key: WatermarkKey, monkeypatch) -> None:
    """Whole processor steps (windows from input ids, dedup) give what the numba path gives."""
    from fingerprint.watermark import gumbel

    rng = np.random.default_rng(9)
    ids = rng.integers(0, V, (4, 14))
    ids[1, 10:13] = [7, 8, 7]  # row 1's generated windows (h = 1): -1, 7, 8, 7: a repeat
    scores = torch.randn(4, V, generator=torch.Generator().manual_seed(4)) * 2
    kgw = dict(gamma=0.25, delta=2.0, context_width=3, prf=name)
    gum = dict(context_width=1, prf=name, check_placement=False)
    for make in (lambda: KGWLogitsProcessor(key, **kgw),
                 lambda: GumbelLogitsProcessor(key, **gum)):
        ref = make()  # one generation of four steps, on the numba path
        want = [ref(torch.from_numpy(ids[:, :n]), scores) for n in range(10, 14)]
        proc = make()
        real = gumbel._gpu_style
        with prf_module.tensor_path("triton") as seen, monkeypatch.context() as mp:
            mp.setattr(gumbel, "_gpu_style", lambda scores: True)  # device-side dedup
            got = [proc(t(ids[:, :n]), scores.to(DEVICE)).cpu() for n in range(10, 14)]
        assert gumbel._gpu_style is real
        assert set(seen) == {DEVICE}
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
        if isinstance(proc, GumbelLogitsProcessor):
            assert (proc.n_repeated, proc.n_watermarked) == (ref.n_repeated, ref.n_watermarked)
            assert proc.n_repeated > 0 and proc.n_watermarked > 0


def _forced(fn, *args):  # type: ignore[no-untyped-def]
    """Call a fused step on CPU tensors (the interpreter), as CUDA tensors would route."""
    with prf_module.tensor_path("triton") as seen:
        out = fn(*args)
    assert seen
    return out


@triton.jit
def _uniform_kernel(out_ptr, BLOCK: tl.constexpr):
    level = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    word = (level.to(tl.uint32) << 8) | 0xA5  # the low byte is dropped by the mapping
    tl.store(out_ptr + level, _philox_uniform(word))


def test_philox_uniform_needs_no_float64() -> None:
    """The kernels' float32-only uniform equals the spec's float64 division for every level."""
    out = torch.empty(1 << 24, dtype=torch.float32, device=DEVICE)
    _uniform_kernel[((1 << 24) // (1 << 16),)](out, BLOCK=1 << 16)
    levels = np.arange(1 << 24, dtype=np.uint64)
    want = type(get_prf("philox4x32-10-v1", INT_KEY, "gumbel")).level_uniform(levels)
    assert np.array_equal(out.cpu().numpy().view(np.uint32), want.view(np.uint32))


@triton.jit
def _sip_uniform_kernel(word_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    lane = i < n
    word = tl.load(word_ptr + i, mask=lane, other=0).to(tl.uint64, bitcast=True)
    tl.store(out_ptr + i, _sip_uniform(word), mask=lane)


def test_siphash_uniform_of_crafted_words() -> None:
    """The kernels' SipHash uniform equals the spec's mapping bit for bit, the top level
    included (1 - 2**-53, not 1), and every other level keeps its value."""
    words = sip_words()
    out = torch.empty(words.size, dtype=torch.float64, device=DEVICE)
    _sip_uniform_kernel[(triton.cdiv(words.size, 1024),)](t(words.view(np.int64)), out,
                                                         words.size, BLOCK=1024)
    got = out.cpu().numpy()
    levels = words >> np.uint64(11)
    top = levels == SIP_TOP
    assert np.all((got > 0.0) & (got < 1.0)) and np.all(got[top] == 1.0 - 2.0**-53)
    assert np.array_equal(got.view(np.uint64), level_to_uniform(levels).view(np.uint64))
    assert np.array_equal(got[~top].view(np.uint64),
                          old_sip_uniform(levels[~top]).view(np.uint64))


def _steps_on_both_paths(make, ids: np.ndarray, lengths: range, vocab: int, monkeypatch):  # type: ignore[no-untyped-def]
    """One processor's outputs over ``ids[:, :n]`` for each n: on the numba path, and with the
    fused kernels and the device-side bookkeeping (returns both lists and both processors)."""
    from fingerprint.watermark import gumbel

    gen = torch.Generator().manual_seed(11)
    scores = [torch.randn(ids.shape[0], vocab, generator=gen) * 2 for _ in lengths]
    ref = make()
    want = [ref(torch.from_numpy(ids[:, :n]), s) for n, s in zip(lengths, scores, strict=True)]
    proc = make()
    with prf_module.tensor_path("triton") as seen, monkeypatch.context() as mp:
        mp.setattr(gumbel, "_gpu_style", lambda scores: True)
        got = [proc(t(ids[:, :n]), s.to(DEVICE)).cpu()
               for n, s in zip(lengths, scores, strict=True)]
    assert set(seen) == {DEVICE}
    return want, got, ref, proc


@pytest.mark.parametrize("limit", [None, 5])
def test_gumbel_history_past_its_first_allocation(limit: int | None, monkeypatch) -> None:
    """Over 100 steps (the device history starts with room for 64) the repeats, with and without
    a history limit, are those of the host-side check."""
    rng = np.random.default_rng(12)
    ids = rng.integers(0, 6, (3, 110))  # six ids, h = 1: windows repeat all the time
    vocab = 37

    def make() -> GumbelLogitsProcessor:
        return GumbelLogitsProcessor(KEY, 1, "siphash24-v1", check_placement=False,
                                     dedup_max_history=limit)

    want, got, ref, proc = _steps_on_both_paths(make, ids, range(8, 110), vocab, monkeypatch)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert (proc.n_repeated, proc.n_watermarked) == (ref.n_repeated, ref.n_watermarked)
    assert 0 < proc.n_repeated < proc.n_repeated + proc.n_watermarked == 3 * 102


def test_device_tracker_notices_a_new_generation(monkeypatch) -> None:
    """A batch that grew by one token but whose earlier tokens changed is a new generation (its
    prompt start is read again), on the device path as on the host."""
    rng = np.random.default_rng(13)
    ids = rng.integers(1, V, (2, 12))
    ids[0, :3] = 0  # left padding (pad id 0)
    other = ids.copy()
    other[1, 2] += 1  # same length as the next step, different prefix
    seq = [ids[:, :9], ids[:, :10], np.concatenate([other[:, :10], ids[:, 10:11]], axis=1)]
    from fingerprint.watermark import gumbel

    for make in (lambda: KGWLogitsProcessor(KEY, 0.25, 2.0, 2, pad_token_id=0),
                 lambda: GumbelLogitsProcessor(KEY, 2, pad_token_id=0, check_placement=False)):
        gen = torch.Generator().manual_seed(14)
        scores = [torch.randn(2, V, generator=gen) for _ in seq]
        ref, proc = make(), make()
        want = [ref(torch.from_numpy(x), s) for x, s in zip(seq, scores, strict=True)]
        with prf_module.tensor_path("triton"), monkeypatch.context() as mp:
            mp.setattr(gumbel, "_gpu_style", lambda scores: True)
            got = [proc(t(x), s.to(DEVICE)).cpu() for x, s in zip(seq, scores, strict=True)]
        assert proc._tracker.prompt_len == 11  # the third call started a generation
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)


def test_device_tracker_checks_every_id_once(monkeypatch) -> None:
    """A bad id in the prompt, or in a token appended later, is refused on the device path."""
    ids = np.random.default_rng(15).integers(0, V, (2, 10))
    scores = torch.zeros(2, V)
    with prf_module.tensor_path("triton"):
        proc = KGWLogitsProcessor(KEY, 0.25, 2.0, 2)
        bad = ids.copy()
        bad[1, 4] = -5
        with pytest.raises(TokenIdError, match="-5"):
            proc(t(bad), scores.to(DEVICE))
        proc.reset()
        proc(t(ids[:, :9]), scores.to(DEVICE))
        late = ids.copy()
        late[0, 9] = 2**31
        with pytest.raises(TokenIdError, match=str(2**31)):
            proc(t(late), scores.to(DEVICE))
        more = np.concatenate([late, ids[:, :1]], axis=1)  # going on after the refusal
        with pytest.raises(TokenIdError, match=str(2**31)):
            proc(t(more), scores.to(DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_keep_only(dtype: torch.dtype) -> None:
    from fingerprint.watermark import triton_steps

    scores = (torch.randn(4, 5_000, generator=torch.Generator().manual_seed(16)) * 3).to(dtype)
    choice = torch.tensor([0, 4_999, 2_048, 17])
    repeated = torch.tensor([0, 0, 1, 0], dtype=torch.int32)
    for rep in (None, repeated):
        got = triton_steps.keep_only(scores.to(DEVICE), choice.to(DEVICE),
                                     None if rep is None else rep.to(DEVICE)).cpu()
        keep = torch.arange(5_000)[None, :] == choice[:, None]
        if rep is not None:
            keep |= rep.bool()[:, None]
        assert got.dtype == dtype and torch.equal(got, torch.where(keep, scores, -torch.inf))
