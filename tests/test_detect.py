"""The detector: vLLM interop, dedup, prompts, calibration under the null, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fingerprint.core import get_prf, windows
from fingerprint.core.contexts import tuple_keys
from fingerprint.detect.calibrate import calibrate
from fingerprint.detect.detector import Detector, DetectorConfig
from fingerprint.detect.tuples import TupleSet, select_positions
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey

KEY = WatermarkKey(bytes(range(32)))


def human_ids(tokenizer, n_chars: int = 250_000) -> np.ndarray:
    from fingerprint.demo import human_text

    return np.asarray(tokenizer(human_text(n_chars), add_special_tokens=False)["input_ids"])


# -- vLLM interop  ----------
def test_vllm_detector_vectors(vllm_vectors) -> None:
    cases = vllm_vectors["detector_cases"]
    assert len(cases) == 12
    for c in cases:
        cfg = DetectorConfig(scheme=c["algorithm"], prf="philox4x32-10-v1",
                             context_width=c["context_width"], alpha=c.get("alpha", 0.1),
                             dedup="context" if c["deduplicate_contexts"] else "none")
        r = Detector(WatermarkKey.from_int(c["key"]), cfg).detect([c["token_ids"]])
        assert r.n_scored == c["num_scored_tokens"]
        assert r.score_sum == pytest.approx(c["score"], rel=1e-12)
        assert r.vllm_pvalue == pytest.approx(c["p_value"], rel=1e-9)
        if c["algorithm"] == "gumbel":  # the exact Gamma tail is vLLM's number too
            assert r.pvalue == pytest.approx(c["p_value"], rel=1e-9)
        assert np.log10(r.pvalue) == pytest.approx(r.log10_pvalue, rel=1e-9)


def test_gumbel_log10_where_vllm_underflows() -> None:
    """A fully watermarked Gumbel text: vLLM's p is 0, ours keeps an exact log10 p."""
    import mpmath

    key = WatermarkKey.from_int(123456789)
    prf = get_prf("philox", key)
    rng = np.random.default_rng(0)
    h, n = 4, 3000
    seq = list(rng.integers(0, 1000, h))
    for _ in range(n):  # each token is the argmax of the Gumbel noise: the watermark at T -> 0
        u = prf.row(np.array([seq[-h:]]), 1000)[0].astype(np.float64)
        seq.append(int(np.argmax(-np.log(-np.log(u)))))
    r = Detector(key, scheme="gumbel", prf="philox", context_width=h).detect([seq[h:]])
    assert r.vllm_pvalue == 0.0 and r.pvalue == 0.0
    assert r.log10_pvalue < -500
    mpmath.mp.dps = 50
    exact = mpmath.log10(mpmath.gammainc(r.n_scored, r.score_sum, mpmath.inf, regularized=True))
    assert r.log10_pvalue == pytest.approx(float(exact), rel=1e-9)


# -- what gets scored  ----------
@pytest.mark.parametrize("h", [1, 2, 3, 5])
@pytest.mark.parametrize("dedup", ["tuple", "context"])
def test_dedup_equals_first_occurrences(h, dedup) -> None:
    rng = np.random.default_rng(h)
    x = np.minimum(rng.zipf(1.5, 30_000), 300)
    sel = select_positions(x, h, dedup=dedup)[0]
    w = windows(x, h)[0]
    items = np.concatenate([w, x[:, None]], axis=1) if dedup == "tuple" else w
    _, first = np.unique(items, axis=0, return_index=True)
    assert np.array_equal(np.nonzero(sel)[0], np.sort(first))


def test_dedup_is_global_across_batches_and_sets_grow() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, 200_000)
    whole = select_positions(x, 2)[0]
    seen = TupleSet()
    parts = [select_positions(x[i:i + 7_000], 2, seen=seen)[0] for i in range(0, len(x), 7_000)]
    # batch boundaries change windows (padding), so compare unique counts over explicit keys
    hi, lo = tuple_keys(x, 2)
    assert int(whole.sum()) == len({(a, b) for a, b in zip(hi[0].tolist(), lo[0].tolist(),
                                                                strict=True)})
    assert len(seen) == sum(int(p.sum()) for p in parts)
    again = TupleSet()
    assert again.add(hi, lo).sum() == whole.sum()
    assert not again.add(hi, lo).any()  # everything is now known
    assert again.contains(hi, lo).all()


def test_zero_key_is_a_normal_member() -> None:
    s = TupleSet()
    z = np.zeros(3, dtype=np.uint64)
    assert s.add(z, z).tolist() == [True, False, False]
    assert s.contains(z, z).all() and len(s) == 1


def test_prompt_aware_scoring() -> None:
    det = Detector(KEY, scheme="kgw", context_width=2, dedup="none")
    prompt, completion = [11, 12, 13, 14], [21, 22, 23]
    r = det.detect([completion], prompts=[prompt], flags=True)
    assert r.n_scored == 3 and r.n_positions == 3
    # the windows of the completion's first tokens come from the prompt
    u = get_prf("siphash", KEY, "kgw").score(np.array(prompt + completion), 2)[4:]
    assert [f["green"] for f in r.token_flags] == list(u < 0.25)
    alone = det.detect([completion], flags=True)
    u_alone = get_prf("siphash", KEY, "kgw").score(np.array(completion), 2)
    assert [f["green"] for f in alone.token_flags] == list(u_alone < 0.25)


def test_skip_prompt_windows() -> None:
    det = Detector(KEY, scheme="kgw", context_width=1, dedup="none", skip_prompt_windows=True)
    # completion windows (previous token): 8 (last prompt token), 5 (in prompt), 9, 6 (in prompt)
    r = det.detect([[5, 9, 6, 3]], prompts=[[5, 6, 7, 8]])
    assert r.n_positions == 4 and r.n_scored == 1


def test_kgw_detects_watermarked_and_not_human(default_tokenizer) -> None:
    ids = human_ids(default_tokenizer)[:3000]
    det = Detector(KEY, scheme="kgw", context_width=1, gamma=0.25)
    human = det.detect([ids])
    assert human.log10_pvalue > -3 and not human.no_evidence
    # make a text where every token is green (the extreme watermark)
    prf = get_prf("siphash", KEY, "kgw")
    rng = np.random.default_rng(0)
    seq = [int(ids[0])]
    for _ in range(400):
        green = np.flatnonzero(prf.row(np.array([[seq[-1]]]), 49152)[0] < 0.25)
        seq.append(int(rng.choice(green)))
    wm = det.detect([seq[1:]], prompts=[seq[:1]])
    assert wm.n_scored == 400 and wm.green_rate == 1.0 and wm.log10_pvalue < -200
    assert wm.to_dict()["config"]["gamma"] == 0.25


def test_no_tokens_means_no_evidence() -> None:
    r = Detector(KEY).detect([[]])
    assert r.no_evidence and r.pvalue == 1.0 and r.n_scored == 0


def test_detector_config_validation() -> None:
    with pytest.raises(ConfigError):
        DetectorConfig(gamma=float("nan"))
    with pytest.raises(ConfigError):
        DetectorConfig(gamma=1.5)
    with pytest.raises(ConfigError):
        DetectorConfig(scheme="red")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DetectorConfig(dedup="some")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DetectorConfig(context_width=0)
    with pytest.raises(InputError):
        Detector(KEY).detect([[1.5, 2.5]])
    with pytest.raises(InputError):
        Detector(KEY).detect([[1, 2]], prompts=[[1], [2]])
    assert "secret" not in repr(Detector(KEY))


# -- calibration under the null  ----------
@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_calibration_on_human_text(default_tokenizer, scheme) -> None:
    """500 random keys on human prose: FPR at 0.01 in its 99% interval, KS does not reject."""
    ids = human_ids(default_tokenizer, 150_000)
    seqs = [ids[i:i + 200] for i in range(0, len(ids), 200)]
    cfg = DetectorConfig(scheme=scheme, context_width=2)
    rep = calibrate(seqs, cfg, n_keys=500, seed=11)
    assert rep.n_keys == 500 and rep.n_scored > 10_000
    assert rep.summary.alpha_inside[0]
    assert rep.summary.ks_pvalue > 0.01
    assert rep.calibrated


def test_calibration_breaks_without_dedup(default_tokenizer) -> None:
    """The same corpus without dedup: repeated tuples make p-values far from uniform."""
    ids = human_ids(default_tokenizer, 150_000)
    seqs = [ids[i:i + 200] for i in range(0, len(ids), 200)]
    rep = calibrate(seqs, DetectorConfig(scheme="kgw", context_width=2, dedup="none"),
                    n_keys=200, seed=11)
    assert not rep.calibrated
    assert rep.summary.fpr[0] > 0.05  # at alpha = 0.01


def test_calibration_on_unwatermarked_tiny_model_generations(tiny_model) -> None:
    import torch

    torch.manual_seed(0)
    prompts = torch.randint(0, 49152, (24, 4))
    out = tiny_model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                              max_new_tokens=60, min_new_tokens=60, top_k=50, pad_token_id=2)
    gens = out[:, 4:].numpy()
    rep = calibrate(list(gens), DetectorConfig(scheme="kgw", context_width=1),
                    prompts=list(prompts.numpy()), n_keys=500, seed=3)
    assert rep.summary.alpha_inside[0] and rep.summary.ks_pvalue > 0.01
