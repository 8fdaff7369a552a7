"""The scoring core: spec vectors, vLLM vectors, backend equality, uniformity, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numba as nb
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fingerprint import stats as fstats
from fingerprint.core import PAD, available_prfs, get_prf, prf_class, windows
from fingerprint.core import gumbel_max as gm
from fingerprint.core.philox import philox_words
from fingerprint.core.siphash import (
    SipHashPRF,
    _to_uniform,
    level_to_uniform,
    siphash24,
    torch_word_uniform,
)
from fingerprint.detect.detector import DetectorConfig, combine_scores
from fingerprint.errors import (
    BackendError,
    ConfigError,
    ShapeError,
    TokenIdError,
    WatermarkKeyError,
)
from fingerprint.keys import KeyPurpose, WatermarkKey
from fingerprint.watermark.gumbel import gumbel_argmax

from .conftest import has_cuda

PRFS = ["siphash24-v1", "philox4x32-10-v1"]
KEY = WatermarkKey(bytes(range(32)))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "prf.md"


def spec_vectors() -> dict:
    text = DOCS.read_text()
    block = re.search(r"## Test vectors.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/prf.md lost its test-vector block"
    return json.loads(block.group(1))


# -- spec and compatibility vectors  ----------
def test_siphash_reference_vectors_of_its_authors() -> None:
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5


def test_siphash_spec_vectors_in_docs() -> None:
    spec = spec_vectors()["siphash24-v1"]
    key = WatermarkKey(bytes.fromhex(spec["master_secret_hex"]))
    sub = key.subkey(KeyPurpose("siphash24-v1", spec["scheme"]), 16)
    assert sub.hex() == spec["subkey_hex"]
    prf = get_prf("siphash24-v1", key, spec["scheme"])
    for case in spec["cases"]:
        msg = b"".join((w & 0xFFFFFFFF).to_bytes(4, "little")
                       for w in [*case["window"], case["token"]])
        assert msg.hex() == case["message_hex"]
        word = siphash24(sub, msg)
        assert f"{word:016x}" == case["word_hex"]
        ctx = np.array([case["window"]])
        tok = np.array([case["token"]])
        for backend in ("numba", "torch"):
            u = prf.pairs(ctx, tok, backend=backend)
            assert repr(float(u[0])) == case["uniform"]
        assert float(u[0]) == min(((word >> 11) + 0.5) / 2**53, 1 - 2**-53)


def test_philox_spec_vectors_in_docs() -> None:
    for entry in spec_vectors()["philox4x32-10-v1"]:
        if isinstance(entry["key"], int):
            key = WatermarkKey.from_int(entry["key"])
            scheme = "gumbel"
        else:
            key = WatermarkKey(bytes.fromhex(entry["key"]["master_secret_hex"]))
            scheme = entry["key"]["scheme"]
        prf = get_prf("philox4x32-10-v1", key, scheme)
        assert prf._PRF__words == (entry["philox_key"] & 0xFFFFFFFF, entry["philox_key"] >> 32)
        for case in entry["cases"]:
            ctx, tok = np.array([case["window"]]), np.array([case["token"]])
            assert int(philox_words(entry["philox_key"], ctx, tok)[0]) == case["word"]
            for backend in ("numba", "torch"):
                u = prf.pairs(ctx, tok, backend=backend)
                assert repr(float(u[0])) == case["uniform_float32"]


def test_vllm_philox_prf_cases(vllm_vectors) -> None:
    cases = vllm_vectors["prf_cases"]
    assert len(cases) >= 30
    for case in cases:
        prf = get_prf("philox", WatermarkKey.from_int(case["key"]))
        n = len(case["tokens"])
        ctx = np.array([case["context"]] * n)
        tok = np.array(case["tokens"])
        assert philox_words(case["key"], ctx, tok).tolist() == case["uint32"]
        expected = np.array(case["uniform_float32"], dtype=np.float32)
        assert np.array_equal(prf.pairs(ctx, tok), expected)
        got_t = prf.pairs(torch.tensor(ctx), torch.tensor(tok), backend="torch")
        assert got_t.dtype == torch.float32 and np.array_equal(got_t.numpy(), expected)
        # a vocabulary row holds the same values at the candidates' columns
        row = prf.row(ctx[:1], max(case["tokens"]) + 1)
        assert np.array_equal(row[0, tok], expected)


# -- SipHash's word-to-uniform mapping  ----------
SIP_TOP = 2**53 - 1  # the top level, whose (k + 0.5) rounds to 2**53 in float64


def sip_levels() -> np.ndarray:
    """SipHash levels at the edges (0, around 2**52, the top) and random ones."""
    rng = np.random.default_rng(53)
    edges = [0, 1, 2, 3, 2**51, 2**52 - 2, 2**52 - 1, 2**52, 2**52 + 1, 2**52 + 2, 2**52 + 3,
             2**53 - 5, 2**53 - 4, 2**53 - 3, 2**53 - 2, SIP_TOP]
    return np.concatenate([np.array(edges, dtype=np.uint64),
                           rng.integers(0, 2**52, 500, dtype=np.uint64),
                           rng.integers(2**52, 2**53, 500, dtype=np.uint64)])


def sip_words() -> np.ndarray:
    """64-bit words of every level of :func:`sip_levels`, each with its 11 low bits (which the
    mapping drops) all zero, all one and random."""
    levels = sip_levels()
    low = np.random.default_rng(11).integers(0, 2**11, levels.size, dtype=np.uint64)
    return np.concatenate([levels << np.uint64(11), (levels << np.uint64(11)) | np.uint64(0x7FF),
                           (levels << np.uint64(11)) | low])


def old_sip_uniform(levels: np.ndarray) -> np.ndarray:
    """``((k + 0.5) * 2**-53)`` in float64, without the top level's bound."""
    return (levels.astype(np.float64) + 0.5) * 2.0**-53


@nb.njit
def _numba_word_uniforms(words: np.ndarray) -> np.ndarray:
    out = np.empty(words.shape[0])
    for i in range(words.shape[0]):
        out[i] = _to_uniform(words[i])  # inlined, as in the kernels
    return out


def test_siphash_uniform_lies_strictly_inside_zero_one_on_every_backend() -> None:
    words = sip_words()
    levels = words >> np.uint64(11)
    want = level_to_uniform(levels)
    assert np.all((want > 0.0) & (want < 1.0))
    top = levels == SIP_TOP
    assert top.sum() == 3 and np.all(want[top] == 1.0 - 2.0**-53)
    # every other level keeps its value bit for bit
    assert np.array_equal(want[~top].view(np.uint64), old_sip_uniform(levels[~top]).view(np.uint64))
    for got in (SipHashPRF.level_uniform(levels), _numba_word_uniforms(words),
                torch_word_uniform(torch.from_numpy(words.view(np.int64))).numpy()):
        assert got.dtype == np.float64 and np.array_equal(got.view(np.uint64),
                                                          want.view(np.uint64))
    # the spec's formula in Python floats
    for k in sip_levels()[:16].tolist():
        assert level_to_uniform(np.array([k]))[0] == min((k + 0.5) / 2**53, 1 - 2**-53)


def test_siphash_levels_from_two_to_the_52_share_values_in_pairs() -> None:
    k = np.array([2**52 - 1, 2**52, 2**52 + 1, 2**52 + 2, 2**52 + 3, 2**52 + 4,
                  2**53 - 3, 2**53 - 2, SIP_TOP], dtype=np.uint64)
    u = level_to_uniform(k) * 2.0**53
    assert u.tolist() == [2**52 - 0.5, 2**52, 2**52 + 2, 2**52 + 2, 2**52 + 4, 2**52 + 4,
                          2**53 - 2, 2**53 - 2, 2**53 - 1]
    assert np.all(np.diff(level_to_uniform(np.sort(sip_levels()))) >= 0)  # still monotone


def test_siphash_top_level_has_a_finite_gumbel_score_and_noise() -> None:
    u = SipHashPRF.level_uniform(np.array([SIP_TOP, 0, 2**52], dtype=np.uint64))
    score = combine_scores(DetectorConfig(scheme="gumbel"), [u])
    assert np.all(np.isfinite(score)) and score[0] == pytest.approx(53 * math.log(2), rel=1e-12)
    assert fstats.gumbel_test(float(score.sum()), 3).pvalue > 0
    assert math.isfinite(gm.value(0.0, u[0]))  # the Gumbel noise, at most about 37 nats
    assert u[0] < gm.THRESHOLDS[-1]
    # a filtered token (-inf logit) drawing the top level stays out of the choice
    logits = torch.tensor([[0.0, -math.inf, 0.0]], dtype=torch.float64)
    uniforms = torch.tensor([[0.5, u[0], 0.75]], dtype=torch.float64)
    assert gumbel_argmax(logits, uniforms).tolist() == [2]


# -- backends agree bit for bit  ----------
@st.composite
def token_batches(draw):
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 40))
    h = draw(st.sampled_from([1, 2, 3, 4, 5]))
    vocab = draw(st.sampled_from([7, 1000, 49152, 152064]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (b, t))
    mask = rng.random((b, t)) > draw(st.sampled_from([0.0, 0.3]))
    return x, mask, h, vocab


@pytest.mark.parametrize("name", PRFS)
@settings(max_examples=40, deadline=None)
@given(batch=token_batches(), use_mask=st.booleans())
def test_numpy_equals_torch_cpu(name, batch, use_mask) -> None:
    x, mask, h, vocab = batch
    prf = get_prf(name, KEY, "kgw")
    m = mask if use_mask else None
    a = prf.score(x, h, mask=m, vocab_size=vocab)
    tm = None if m is None else torch.tensor(m)
    b = prf.score(torch.tensor(x), h, mask=tm, vocab_size=vocab, backend="torch")
    c = prf.score(torch.tensor(x), h, mask=tm, vocab_size=vocab)  # torch CPU via numba
    assert isinstance(c, torch.Tensor)
    assert np.array_equal(a, b.numpy(), equal_nan=True)
    assert np.array_equal(a, c.numpy(), equal_nan=True)
    # the fused kernel equals the explicit-window path
    w = windows(x, h, m)
    p = prf.pairs(w.reshape(-1, h), x.reshape(-1)).reshape(x.shape)
    expected = p if m is None else np.where(m, p, np.nan)
    assert np.array_equal(a, expected, equal_nan=True)
    # vocabulary rows agree with scoring and across backends
    col = x.shape[1] - 1
    r = prf.row(w[:, col, :], vocab)
    rt = prf.row(torch.tensor(w[:, col, :]), vocab, backend="torch")
    assert np.array_equal(r, rt.numpy())
    rows = np.arange(x.shape[0])
    got = r[rows, x[:, col]]
    assert np.array_equal(np.where(np.isnan(a[:, col]), np.nan, got), a[:, col], equal_nan=True)


@pytest.mark.parametrize("name", PRFS)
def test_candidates_score_other_tokens_in_the_same_windows(name) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 500, (2, 64))
    cand = rng.integers(0, 500, (2, 64))
    prf = get_prf(name, KEY, "gumbel")
    got = prf.score(x, 3, candidates=cand)
    w = windows(x, 3)
    want = prf.pairs(w.reshape(-1, 3), cand.reshape(-1)).reshape(x.shape)
    assert np.array_equal(got, want)
    got_t = prf.score(torch.tensor(x), 3, candidates=torch.tensor(cand), backend="torch")
    assert np.array_equal(got_t.numpy(), want)


@pytest.mark.parametrize("name", PRFS)
def test_long_windows_and_long_rows(name) -> None:
    """Widths past one block and rows longer than a kernel segment (2**15) agree too."""
    rng = np.random.default_rng(4)
    prf = get_prf(name, KEY)
    x = rng.integers(0, 49152, (2, 70_000))
    for h in (9, 16):
        a = prf.score(x, h)
        b = prf.score(torch.tensor(x), h, backend="torch").numpy()
        assert np.array_equal(a, b)
    ctx = rng.integers(0, 49152, (2, 16))
    assert np.array_equal(prf.row(ctx, 70_001),
                          prf.row(torch.tensor(ctx), 70_001, backend="torch").numpy())


def test_windows_convention() -> None:
    x = np.array([[10, 11, 12, 13]])
    w = windows(x, 2)
    assert w.tolist() == [[[PAD, PAD], [PAD, 10], [10, 11], [11, 12]]]
    m = np.array([[True, False, True, True]])
    assert windows(x, 2, m).tolist() == [[[PAD, PAD], [PAD, 10], [10, PAD], [PAD, 12]]]


@pytest.mark.parametrize("name", PRFS)
def test_left_padding_reads_as_pad(name) -> None:
    """A left-padded row scores like the unpadded sequence: padding is the -1 convention."""
    prf = get_prf(name, KEY)
    seq = np.array([5, 6, 7, 8, 9])
    padded = np.array([[0, 0, 0, 5, 6, 7, 8, 9]])
    mask = padded != 0
    mask[0, :3] = False
    a = prf.score(seq, 2)
    b = prf.score(padded, 2, mask=mask)
    assert np.all(np.isnan(b[0, :3]))
    assert np.array_equal(a, b[0, 3:])


def test_one_dim_input_returns_one_dim() -> None:
    prf = get_prf("siphash", KEY)
    assert prf.score(np.arange(10), 2).shape == (10,)
    assert prf.score(torch.arange(10), 2).shape == (10,)


def test_keys_schemes_and_prfs_give_independent_values() -> None:
    x = np.random.default_rng(5).integers(0, 49152, 1000)
    base = get_prf("siphash", KEY, "kgw").score(x, 2)
    others = [
        get_prf("siphash", KEY, "gumbel").score(x, 2),
        get_prf("siphash", WatermarkKey.from_int(77), "kgw").score(x, 2),
        get_prf("siphash", KEY, "kgw").score(x, 3),
        get_prf("philox", KEY, "kgw").score(x, 2).astype(np.float64),
    ]
    for o in others:
        assert abs(np.corrcoef(base, o)[0, 1]) < 0.15
        assert np.mean(base == o) < 0.01


# -- statistical quality  ----------
@pytest.mark.parametrize("name", PRFS)
def test_uniformity_and_adjacent_independence(name) -> None:
    """1e6 values: KS and chi-square against U(0, 1); adjacent pairs are independent."""
    rng = np.random.default_rng(6)
    # natural-looking token ids: Zipf-distributed, with many repeated windows
    x = np.minimum(rng.zipf(1.3, 1_000_000), 49151)
    u = get_prf(name, WatermarkKey.from_int(78), "kgw").score(x, 2, vocab_size=49152)
    u = u.astype(np.float64)
    # duplicates (same window and token) must repeat their value; score unique tuples only
    w = windows(x, 2)[0]
    tuples = np.concatenate([w, x[:, None]], axis=1)
    _, first = np.unique(tuples, axis=0, return_index=True)
    uu = u[np.sort(first)]
    assert len(uu) > 100_000
    assert stats.kstest(uu, "uniform").pvalue > 1e-3
    counts = np.histogram(uu, bins=100, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    # independence of adjacent positions: 10 x 10 contingency table
    v = get_prf(name, WatermarkKey.from_int(79), "kgw").score(
        rng.integers(0, 49152, 1_000_000), 1)
    a = np.minimum((v[:-1] * 10).astype(int), 9)
    b = np.minimum((v[1:] * 10).astype(int), 9)
    table = np.zeros((10, 10))
    np.add.at(table, (a, b), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert abs(np.corrcoef(v[:-1], v[1:])[0, 1]) < 0.005


@pytest.mark.parametrize("name", PRFS)
def test_green_probability_is_exact(name) -> None:
    cls = prf_class(name)
    for gamma in (0.25, 0.5, 0.1, 1 / 3):
        p = cls.green_probability(gamma)
        assert abs(p - gamma) <= 1 / cls.levels
        k = round(p * cls.levels)  # the number of levels below gamma
        assert cls.level_uniform(np.array([k - 1]))[0] < gamma <= cls.level_uniform(
            np.array([k]))[0]
    with pytest.raises(ConfigError):
        cls.green_probability(1.0)


# -- bad input  ----------
@pytest.mark.parametrize("name", PRFS)
def test_bad_inputs_get_typed_errors(name) -> None:
    prf = get_prf(name, KEY)
    with pytest.raises(TokenIdError, match="integer"):
        prf.score(np.array([1.0, 2.0]), 1)
    with pytest.raises(TokenIdError, match="integer"):
        prf.score(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(TokenIdError, match=r"found -3 at index \(0, 1\)"):
        prf.score(np.array([1, -3, 2]), 1)
    with pytest.raises(TokenIdError, match="found 10"):
        prf.score(np.array([1, 10, 2]), 1, vocab_size=10)
    with pytest.raises(TokenIdError, match="found 10"):
        prf.score(torch.tensor([1, 10, 2]), 1, vocab_size=10, backend="torch")
    with pytest.raises(TokenIdError, match="found 10"):
        prf.score(np.array([1, 2, 3]), 1, candidates=np.array([1, 10, 2]), vocab_size=10)
    with pytest.raises(ShapeError):
        prf.score(np.array([1, 2, 3]), 1, candidates=np.array([1, 2]))
    with pytest.raises(ShapeError):
        prf.score(np.array([1, 2, 3]), 1, mask=np.array([True, False]))
    with pytest.raises(ShapeError):
        prf.score(np.zeros((2, 2, 2), dtype=np.int64), 1)
    with pytest.raises(ShapeError):
        prf.pairs(np.zeros((3, 2), dtype=np.int64), np.zeros(4, dtype=np.int64))
    with pytest.raises(TokenIdError):
        prf.pairs(np.array([[-2, 1]]), np.array([1]))
    with pytest.raises(TokenIdError):
        prf.score([[1, 2], [3]], 1)
    for h in (0, -1, 65, 1.5, True):
        with pytest.raises(ConfigError):
            prf.score(np.array([1, 2, 3]), h)
    with pytest.raises(ConfigError):
        prf.row(np.array([[1, 2]]), 0)
    with pytest.raises(ConfigError):
        prf.score(np.array([1, 2]), 1, backend="gpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown PRF"):
        get_prf("md5", KEY)
    with pytest.raises(WatermarkKeyError):
        get_prf(name, 2**70)


def test_masked_padding_ids_are_not_validated() -> None:
    """Padding (masked) may hold any id, e.g. -100 label padding; only real tokens are checked."""
    prf = get_prf("siphash", KEY)
    x = np.array([[-100, -100, 4, 5]])
    out = prf.score(x, 2, mask=x >= 0)
    assert np.isnan(out[0, :2]).all() and not np.isnan(out[0, 2:]).any()


def test_prf_registry_and_repr_hide_key() -> None:
    assert set(PRFS) <= set(available_prfs())
    prf = get_prf("siphash", KEY, "kgw")
    words = prf._PRF__words
    text = repr(prf) + str(prf.config)
    assert all(f"{int(w):x}" not in text and str(int(w)) not in text for w in words)
    assert prf.config == {"prf": "siphash24-v1", "scheme": "kgw", "key_id": KEY.key_id}
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(prf)


# -- CUDA  ----------
@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", PRFS)
def test_cuda_equals_cpu(name) -> None:
    prf = get_prf(name, KEY)
    rng = np.random.default_rng(7)
    for h in (1, 2, 4, 9):
        x = rng.integers(0, 152064, (4, 5000))
        mask = rng.random(x.shape) > 0.1
        a = prf.score(x, h, mask=mask)
        b = prf.score(torch.tensor(x, device="cuda"), h, mask=torch.tensor(mask, device="cuda"))
        assert b.device.type == "cuda"
        assert np.array_equal(a, b.cpu().numpy(), equal_nan=True)
        ctx = rng.integers(0, 152064, (3, h))
        assert np.array_equal(prf.row(ctx, 152064),
                              prf.row(torch.tensor(ctx, device="cuda"), 152064).cpu().numpy())
    with pytest.raises(BackendError):
        prf.score(torch.tensor(x, device="cuda"), 2, backend="numba")
