"""The code that runs on a GPU, checked bit for bit against the CPU kernels.

Every test runs once per entry of ``DEVICES``. ``"cpu"`` means torch tensors on the CPU pushed
through the torch tensor ops (``backend="torch"``, or the PRF's routing switched so that every
tensor takes them): the very code CUDA runs, so these tests run, and can fail, on any machine.
``"cuda"`` runs the same tests on the GPU when one is present (marked ``cuda``); there the
default routing is left as it is, since CUDA tensors take the torch ops by themselves.

References are always the numba kernels on numpy arrays, or formulas written out here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from fingerprint.audit.reading import TeacherText, audit_open, predict_topk
from fingerprint.core import get_prf
from fingerprint.core import prf as prf_module
from fingerprint.detect.detector import Detector, DetectorConfig, combine_scores, count_candidates
from fingerprint.engines.ray_engine import _uniforms
from fingerprint.errors import BackendError, TokenIdError
from fingerprint.keys import WatermarkKey
from fingerprint.stats import binomial_test, gumbel_test
from fingerprint.watermark import GumbelLogitsProcessor, KGWLogitsProcessor, generate

from .conftest import has_cuda

DEVICES = ["cpu"] + (["cuda"] if has_cuda() else [])
PRFS = ["siphash24-v1", "philox4x32-10-v1"]
WIDTHS = [1, 2, 4, 16]
KEY = WatermarkKey(bytes(range(32)))
INT_KEY = WatermarkKey.from_int(42)  # vLLM-style integer key (raw Philox key words)
V_BIG = 152_064  # Qwen-sized vocabulary
V_TINY = 49_152  # the tiny test model's (SmolLM2) vocabulary
MAX_ID = 2**31 - 1


@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d
                        for d in DEVICES])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def on(device: str, a: Any) -> torch.Tensor:
    """``a`` (numpy or torch) as a tensor on ``device``."""
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(device)


def backend_for(device: str) -> str:
    """The backend a call on ``device`` uses: CUDA tensors route to the GPU code by themselves."""
    return "torch" if device == "cpu" else "auto"


def check_tensor(got: Any, device: str, want: np.ndarray) -> None:
    """``got`` is a tensor on ``device`` holding exactly ``want`` (dtype, shape, bits, NaNs)."""
    assert isinstance(got, torch.Tensor)
    assert got.device.type == device
    arr = got.cpu().numpy()
    assert arr.dtype == want.dtype and arr.shape == want.shape
    assert np.array_equal(arr, want, equal_nan=True)


@contextmanager
def device_route(device: str) -> Iterator[list[str]]:
    """Inside: every tensor the PRF receives takes the code CUDA runs (torch ops on the CPU; on
    CUDA the Triton kernels when Triton is there); the device type of each is recorded, so a
    test can check that nothing left the device it runs on."""
    path = "triton" if device == "cuda" and prf_module.triton_available() else "torch"
    with prf_module.tensor_path(path) as seen:
        yield seen


# -- core: score, pairs, row ------------------------------------------------------------------
def token_rows(rng: np.random.Generator, shape: tuple[int, int], vocab: int) -> np.ndarray:
    x = rng.integers(0, vocab, shape)
    x[0, :4] = [0, vocab - 1, 1, vocab - 2]  # the ends of the range
    return x


@pytest.mark.parametrize("name", PRFS)
@pytest.mark.parametrize("h", WIDTHS)
def test_score_equals_the_cpu_kernel(device: str, name: str, h: int) -> None:
    prf = get_prf(name, KEY, "kgw")
    rng = np.random.default_rng(100 + h)
    x = token_rows(rng, (3, 600), V_BIG)
    mask = rng.random(x.shape) > 0.15
    mask[1, :50] = False  # left padding
    mask[2, -40:] = False  # right padding
    cand = token_rows(rng, x.shape, V_BIG)
    be = backend_for(device)
    for extra in ({}, {"mask": mask}, {"candidates": cand}, {"candidates": cand, "mask": mask}):
        want = prf.score(x, h, vocab_size=V_BIG, **extra)
        got = prf.score(on(device, x), h, vocab_size=V_BIG, backend=be,
                        **{k: on(device, v) for k, v in extra.items()})
        check_tensor(got, device, want)
    # one row given as [T], and rows shorter than the window
    check_tensor(prf.score(on(device, x[0]), h, backend=be), device, prf.score(x[0], h))
    short = x[:, : max(1, h // 2)]
    check_tensor(prf.score(on(device, short), h, backend=be), device, prf.score(short, h))
    # int32 ids, candidates and mask given as numpy next to device tokens
    got = prf.score(on(device, x.astype(np.int32)), h, candidates=cand, mask=mask, backend=be)
    check_tensor(got, device, prf.score(x, h, candidates=cand, mask=mask))


@pytest.mark.parametrize("name", PRFS)
def test_score_across_torch_chunks(device: str, name: str, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    """Long inputs are scored in chunks of positions: windows that straddle a chunk boundary."""
    monkeypatch.setattr(prf_module, "_TORCH_CHUNK", 1_000)  # 333 positions per chunk at B = 3
    prf = get_prf(name, KEY, "gumbel")
    rng = np.random.default_rng(5)
    x = token_rows(rng, (3, 2_000), V_BIG)
    mask = rng.random(x.shape) > 0.05
    for h in (2, 16):
        got = prf.score(on(device, x), h, mask=on(device, mask), backend=backend_for(device))
        check_tensor(got, device, prf.score(x, h, mask=mask))


@pytest.mark.parametrize("name", PRFS)
def test_score_refuses_bad_ids_on_the_device(device: str, name: str) -> None:
    prf = get_prf(name, KEY)
    x = np.arange(20)[None, :]
    x[0, 7] = 1_000
    be = backend_for(device)
    with pytest.raises(TokenIdError, match="1000"):
        prf.score(on(device, x), 2, vocab_size=1_000, backend=be)
    mask = np.ones(x.shape, dtype=bool)
    mask[0, 7] = False  # a masked (padding) id is not checked
    check_tensor(prf.score(on(device, x), 2, vocab_size=1_000, mask=on(device, mask), backend=be),
                 device, prf.score(x, 2, vocab_size=1_000, mask=mask))
    with pytest.raises(TokenIdError):
        prf.score(on(device, -x), 2, backend=be)
    if device != "cpu":
        with pytest.raises(BackendError):
            prf.score(on(device, x), 2, backend="numba")


@pytest.mark.parametrize("name", PRFS)
@pytest.mark.parametrize("h", WIDTHS)
def test_pairs_equal_the_cpu_kernel(device: str, name: str, h: int) -> None:
    prf = get_prf(name, INT_KEY if name.startswith("philox") else KEY, "kgw")
    rng = np.random.default_rng(200 + h)
    ctx = rng.integers(0, MAX_ID, (500, h), endpoint=True)
    ctx[:50, : h // 2 + 1] = -1  # windows that reach before the start
    ctx[50:60] = MAX_ID
    tok = rng.integers(0, MAX_ID, 500, endpoint=True)
    tok[:10] = [0, 1, 2, 3, MAX_ID, MAX_ID - 1, MAX_ID - 2, MAX_ID - 3, V_BIG - 1, V_BIG]
    want = prf.pairs(ctx, tok)
    check_tensor(prf.pairs(on(device, ctx), on(device, tok), backend=backend_for(device)),
                 device, want)
    with pytest.raises(TokenIdError):
        prf.pairs(on(device, ctx), on(device, tok), vocab_size=V_BIG,
                  backend=backend_for(device))


@pytest.mark.parametrize("name", PRFS)
@pytest.mark.parametrize("h", WIDTHS)
def test_row_equals_the_cpu_kernel(device: str, name: str, h: int) -> None:
    prf = get_prf(name, KEY, "gumbel")
    rng = np.random.default_rng(300 + h)
    ctx = np.stack([np.full(h, -1), rng.integers(0, V_BIG, h), np.full(h, V_BIG - 1),
                    np.r_[np.full(h - h // 2, -1), rng.integers(0, V_BIG, h // 2)]])
    for vocab in (1, 2, 4_099, 20_000):  # 4_099 and 2: a last Philox group of 4 cut short
        got = prf.row(on(device, ctx), vocab, backend=backend_for(device))
        check_tensor(got, device, prf.row(ctx, vocab))


@pytest.mark.parametrize("name", PRFS)
def test_row_over_a_full_vocabulary(device: str, name: str) -> None:
    """V = 152,064, as generation with a Qwen-sized model computes it at every step."""
    prf = get_prf(name, KEY, "kgw")
    rng = np.random.default_rng(9)
    widths = [4] if device == "cpu" else WIDTHS  # the torch ops are slow on a CPU
    for h in widths:
        ctx = rng.integers(-1, V_BIG, (2 if device == "cpu" else 8, h))
        got = prf.row(on(device, ctx), V_BIG, backend=backend_for(device))
        check_tensor(got, device, prf.row(ctx, V_BIG))


# -- watermark processors ---------------------------------------------------------------------
PAD_ID = 2
PROMPTS = [[5, 6, 7, 8, 9], [11], [13, 14, 15], [PAD_ID, 21, 22]]
# tokens appended at each step; row 0 samples the pad id (a real token once generation started),
# row 1 repeats a token so that narrow windows repeat (Gumbel's single-turn dedup)
STEPS = [[40, 7, 50, 60], [PAD_ID, 8, 51, 61], [41, 7, 52, 62], [42, 8, 53, 63]]


def left_pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])


def step_inputs() -> list[torch.Tensor]:
    """input_ids as transformers passes them: the padded prompts, then one more token a step."""
    ids = left_pad(PROMPTS)
    out = [ids]
    for toks in STEPS[:-1]:
        ids = torch.cat([ids, torch.tensor(toks)[:, None]], dim=1)
        out.append(ids)
    return out


def reference_windows(step: int, h: int, prompt_context: bool) -> np.ndarray:
    """Windows [B, h] at ``step``, written out: the real prompt (pad run removed, when windows
    reach into it) then the tokens generated so far, with -1 before the start."""
    out = []
    for b, prompt in enumerate(PROMPTS):
        real = prompt[1:] if prompt[0] == PAD_ID else prompt  # the leading pad run is padding
        seq = (real if prompt_context else []) + [STEPS[s][b] for s in range(step)]
        out.append(([-1] * h + seq)[-h:])
    return np.array(out, dtype=np.int64)


def random_scores(shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=gen) * 3
    scores[1, : shape[1] // 3] = -torch.inf  # a row filtered by top-k / top-p
    return scores.to(dtype)


@pytest.mark.parametrize("name", PRFS)
@pytest.mark.parametrize("h", [1, 2, 4])
def test_kgw_processor_on_the_device(device: str, name: str, h: int) -> None:
    vocab, gamma, delta = 5_003, 0.3, 1.5
    prf = get_prf(name, KEY, "kgw")
    for dtype in (torch.float32, torch.bfloat16):
        proc = KGWLogitsProcessor(KEY, gamma=gamma, delta=delta, context_width=h, prf=name,
                                  pad_token_id=PAD_ID)
        with device_route(device) as seen:
            for step, ids in enumerate(step_inputs()):
                scores = random_scores((len(PROMPTS), vocab), step, dtype)
                out = proc(ids.to(device), scores.to(device))
                assert out.device.type == device and out.dtype == dtype
                green = torch.from_numpy(prf.row(reference_windows(step, h, True), vocab) < gamma)
                want = torch.where(green, scores + delta, scores)
                assert torch.equal(out.cpu(), want)
                mask = proc.green_mask(on(device, reference_windows(step, h, True)), vocab)
                assert mask.device.type == device and torch.equal(mask.cpu(), green)
        assert seen and set(seen) == {device}


def gumbel_reference(scores: torch.Tensor, u: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(the choice, the perturbed logits): vLLM's float32 formula for float32 uniforms,
    ``argmax(logits - log(-log u))`` in float64 for float64 ones."""
    ut = torch.from_numpy(u)
    if ut.dtype == torch.float32:
        noisy = scores.float() + -torch.log(-torch.log(ut.clamp_min(torch.finfo(ut.dtype).tiny)))
    else:
        noisy = scores.double() - torch.log(-torch.log(ut))
    return noisy.argmax(dim=-1), noisy


def check_choice(got: torch.Tensor, want: torch.Tensor, noisy: torch.Tensor, device: str) -> None:
    """The same choice. On a GPU, ``log`` may round differently from the CPU's by an ulp, which
    only matters between near-tied candidates: a different choice must be such a tie."""
    got = got.cpu()
    if device == "cpu":
        assert torch.equal(got, want)
        return
    for b in torch.nonzero(got != want).flatten().tolist():
        a, w = noisy[b, got[b]].item(), noisy[b, want[b]].item()
        assert abs(a - w) <= 1e-5 * max(1.0, abs(w)), (b, a, w)


@pytest.mark.parametrize("name,key", [("siphash24-v1", KEY), ("philox4x32-10-v1", INT_KEY)])
@pytest.mark.parametrize("h", [1, 4])
@pytest.mark.parametrize("prompt_context", [False, True])
def test_gumbel_processor_on_the_device(device: str, name: str, key: WatermarkKey, h: int,
                                        prompt_context: bool) -> None:
    vocab = 5_003
    prf = get_prf(name, key, "gumbel")
    proc = GumbelLogitsProcessor(key, h, name, prompt_context=prompt_context,
                                 pad_token_id=PAD_ID, check_placement=False)
    seen_windows: list[set[tuple[int, ...]]] = [set() for _ in PROMPTS]
    n_repeated = 0
    with device_route(device) as seen:
        for step, ids in enumerate(step_inputs()):
            scores = random_scores((len(PROMPTS), vocab), 10 + step)
            out = proc(ids.to(device), scores.to(device)).cpu()
            windows = reference_windows(step, h, prompt_context)
            want, noisy = gumbel_reference(scores, prf.row(windows, vocab))
            for b, w in enumerate(map(tuple, windows.tolist())):
                if w in seen_windows[b]:  # single-turn dedup: this row samples plainly
                    n_repeated += 1
                    assert torch.equal(out[b], scores[b])
                    continue
                seen_windows[b].add(w)
                choice = out[b].argmax()
                check_choice(choice[None], want[b : b + 1], noisy[b : b + 1], device)
                assert torch.isfinite(out[b]).sum().item() == 1
                assert out[b, choice] == scores[b, choice]
            # the choice alone, on the device
            windows_dev = on(device, windows)
            scores_dev = scores.to(device)
            check_choice(proc.choose(scores_dev, windows_dev), want, noisy, device)
    assert seen and set(seen) == {device}
    assert proc.n_repeated == n_repeated
    assert (n_repeated > 0) == (h == 1)  # row 1 generates 7, 8, 7: window (7,) repeats


@pytest.mark.parametrize("scheme,sampling", [
    ("kgw", {"do_sample": False}),
    ("kgw", {"temperature": 0.8, "top_k": 100, "seed": 5}),
    ("gumbel", {"temperature": 1.0, "seed": 6}),
])
def test_generate_on_the_device(device: str, tiny_model: Any, default_tokenizer: Any,
                                scheme: str, sampling: dict[str, Any]) -> None:
    prompts = ["Tell me about rivers.", "Hi"]  # two lengths: the batch is left-padded
    n_new = 12
    kw = {"key": KEY, "scheme": scheme, "max_new_tokens": n_new, "min_new_tokens": n_new,
          "delta": 4.0, "chat": False, **sampling}
    if device == "cpu":
        model = tiny_model
        want = generate(model, default_tokenizer, prompts, **kw)  # the numba kernels
    else:
        model = copy.deepcopy(tiny_model).to(device)  # the shared fixture stays on the CPU
    with device_route(device) as seen:
        got = generate(model, default_tokenizer, prompts, **kw)
    assert seen and set(seen) == {device}
    if device == "cpu":  # same RNG, same logits, bit-identical PRF: the same tokens
        assert [r.completion_ids for r in got] == [r.completion_ids for r in want]
    assert all(len(r.completion_ids) == n_new for r in got)
    if scheme == "kgw":
        p = get_prf("siphash24-v1", KEY, "kgw")
        u = np.concatenate([p.score(np.array(r.prompt_ids + r.completion_ids), 2)
                            [len(r.prompt_ids):] for r in got])
        n_green = int((u < 0.25).sum())
        assert n_green / len(u) > 0.6
        assert binomial_test(n_green, len(u), 0.25).log10_pvalue < -5
    else:
        p = get_prf("siphash24-v1", KEY, "gumbel")
        u = np.concatenate([p.score(np.array(r.completion_ids), 4) for r in got])
        assert gumbel_test(float(-np.log1p(-u).sum()), len(u)).log10_pvalue < -5


@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")
def test_processors_at_full_size_on_cuda() -> None:
    """B = 256 rows of a 152,064-token vocabulary: the benchmark's shape, checked exactly."""
    b, vocab, h = 256, V_BIG, 2
    rng = np.random.default_rng(11)
    ids = torch.from_numpy(rng.integers(0, vocab, (b, 64)))
    scores = torch.randn(b, vocab, generator=torch.Generator().manual_seed(0))
    windows = ids[:, -h:].numpy()
    kgw = KGWLogitsProcessor(KEY, gamma=0.25, delta=2.0, context_width=h)
    u = get_prf("siphash24-v1", KEY, "kgw").row(windows, vocab)
    want = torch.where(torch.from_numpy(u < 0.25), scores + 2.0, scores)
    assert torch.equal(kgw(ids.cuda(), scores.cuda()).cpu(), want)
    for name, key in (("siphash24-v1", KEY), ("philox4x32-10-v1", INT_KEY)):
        gum = GumbelLogitsProcessor(key, h, name, prompt_context=True, check_placement=False)
        u = get_prf(name, key, "gumbel").row(windows, vocab)
        want_choice, noisy = gumbel_reference(scores, u)
        out = gum(ids.cuda(), scores.cuda())
        check_choice(out.argmax(dim=-1), want_choice, noisy, "cuda")


# -- detector ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,name,key", [
    ("kgw", "siphash24-v1", KEY),
    ("gumbel", "siphash24-v1", KEY),
    ("gumbel", "philox4x32-10-v1", INT_KEY),
    ("dual_key_gumbel", "philox4x32-10-v1", INT_KEY),
    ("dual_key_gumbel", "siphash24-v1", KEY),
])
def test_detector_scores_from_the_device(device: str, scheme: str, name: str,
                                         key: WatermarkKey) -> None:
    """The Detector reads numpy; the engines' GPU path scores on the device and combines on the
    CPU. Both must give the same contributions, hence the same statistics."""
    det = Detector(key, DetectorConfig(scheme=scheme, prf=name))
    rng = np.random.default_rng(12)
    x = token_rows(rng, (4, 700), V_TINY)
    x[2, 300:] = x[2, :400]  # repeats, so that dedup drops some positions
    m = np.ones(x.shape, dtype=bool)
    m[1, 500:] = False
    m[3, :30] = False
    start = np.array([0, 10, 0, 40])
    with device_route(device) as seen:
        uniforms = _uniforms(det, x, m, V_TINY, device)
    assert seen and set(seen) == {device}
    assert all(isinstance(u, np.ndarray) for u in uniforms)
    got = combine_scores(det.config, uniforms)
    want = det._values(x, m, None, V_TINY)
    assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)
    state = det.new_state()
    sel, _ = det.update(state, x, mask=m, score_from=start, vocab_size=V_TINY,
                        return_values=True)
    suff = det._reduce(got, sel, count_candidates(x, m, start))
    assert suff == state.suff
    assert det.test(suff) == det.result(state)


# -- reading-mode audit -----------------------------------------------------------------------
def teacher_corpus(n: int = 12, seed: int = 13) -> list[TeacherText]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(0, V_TINY, int(rng.integers(0, 8))).tolist()
        comp = rng.integers(0, V_TINY, int(rng.integers(20, 60))).tolist()
        if i % 3 == 0:  # a repeated window: skipped by the audit
            comp[10:14] = comp[2:6]
        out.append(TeacherText(prompt, comp))
    return out


def check_predictions(got: np.ndarray, want: np.ndarray, logits: torch.Tensor, device: str
                      ) -> int:
    """Equal top-k predictions, up to near-ties (a GPU's float sums may round differently);
    returns the number of positions that differ."""
    diff = np.nonzero((got != want).any(axis=-1))
    for b, t in zip(*diff, strict=True):
        a = logits[b, t - 1, got[b, t]]
        w = logits[b, t - 1, want[b, t]]
        assert torch.allclose(a, w, rtol=1e-4, atol=1e-4), (b, t, a, w)
    if device == "cpu":
        assert len(diff[0]) <= 2  # the chunked head rounds like the full one, ties aside
    return len(diff[0])


def test_audit_open_on_the_device(device: str, tiny_model: Any) -> None:
    teacher = teacher_corpus()
    cfg = DetectorConfig(scheme="kgw", context_width=2)
    model = tiny_model if device == "cpu" else copy.deepcopy(tiny_model).to(device)
    kw = {"vocab_size": V_TINY, "top_k": 2, "batch_tokens": 256, "max_length": 64,
          "n_controls": 20, "seed": 0}
    # predictions: the chunked, device-side top-k against a plain forward on the CPU
    x = np.zeros((3, 40), dtype=np.int64)
    mask = np.zeros(x.shape, dtype=bool)
    for r, t in enumerate(teacher[:3]):
        ids = (list(t.prompt_ids) + list(t.completion_ids))[:40]
        x[r, : len(ids)] = ids
        mask[r, : len(ids)] = True
    got = predict_topk(model, x, mask, k=2, chunk=16)
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.from_numpy(x),
                            attention_mask=torch.from_numpy(mask).long()).logits.float()
    want = np.full_like(got, -1)
    want[:, 1:] = logits[:, :-1].topk(2, dim=-1).indices.numpy()
    check_predictions(got, want, logits, device)

    res = audit_open(model, teacher, KEY, cfg, **kw)
    ref = audit_open(tiny_model, teacher, KEY, cfg, **kw)
    a, r = res.detection, ref.detection
    assert a.n_scored > 100 and res.timing["forward_s"] > 0
    if device == "cpu":
        assert (a.n_scored, a.n_green, a.n_positions) == (r.n_scored, r.n_green, r.n_positions)
        assert a.statistic == r.statistic and a.log10_pvalue == r.log10_pvalue
        assert res.controls.statistics == ref.controls.statistics
    else:  # a prediction that flips on a near-tie moves a count by a couple at most
        assert abs(a.n_scored - r.n_scored) <= 0.01 * r.n_scored + 2
        assert abs(a.n_green - r.n_green) <= 0.01 * r.n_scored + 4
