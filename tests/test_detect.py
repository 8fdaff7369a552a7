"""The detector: vLLM interop, dedup, prompts, calibration under the null, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fingerprint.core import get_prf, windows
from fingerprint.core.contexts import tuple_keys
from fingerprint.detect.calibrate import ScoredBatch, calibrate, random_keys, results_under_keys
from fingerprint.detect.detector import Detector, DetectorConfig
from fingerprint.detect.tuples import (
    TupleSet,
    compact_keys,
    expand_keys,
    first_in_row,
    in_row_set,
    select_positions,
)
from fingerprint.errors import ConfigError, InputError, ShapeError
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


@pytest.mark.parametrize("layout", ["p16", "hi"])
def test_widening_keeps_the_key_stored_as_zero(layout: str) -> None:
    """Each one-word layout stores one key as the word 0 (p16: the all-pad window; hi: the zero
    key) in a flag beside the tables. Widening to 128 bits must carry it over: a context-dedup
    corpus whose ids outgrow 16 bits once counted every sequence's first window twice."""
    u = lambda *v: np.array(v, dtype=np.uint64)  # noqa: E731
    pad = 2**64 - 1
    stored_as_zero = (pad, pad) if layout == "p16" else (0, 0)
    other = (5, 7) if layout == "p16" else (2**20, 0)
    s = TupleSet()
    assert s.add(u(stored_as_zero[0], other[0]), u(stored_as_zero[1], other[1])).all()
    assert s.layout == layout
    assert s.add(u(2**64 - 5), u(2**64 - 5))[0] and s.layout == "full"
    assert s.contains(u(stored_as_zero[0]), u(stored_as_zero[1]))[0]
    assert not s.add(u(stored_as_zero[0], other[0]), u(stored_as_zero[1], other[1])).any()
    assert len(s) == 3


@pytest.mark.parametrize("first_vocab,later_vocab,h", [
    (300, 300, 2),            # stays in the 16-bit packed layout
    (300, 200_000, 2),        # widens from packed to 128-bit mid-corpus
    (200_000, 200_000, 1),    # two words: the high word alone
    (200_000, 300, 3),        # one-word (hi) layout, then keys that need lo
    (300, 300, 4),            # four words incl. pads, packed
    (300, 300, 6),            # hashed 128-bit keys
])
def test_set_layouts_stay_exact_as_they_widen(first_vocab, later_vocab, h) -> None:
    rng = np.random.default_rng(first_vocab + h)
    seen, reference = TupleSet(), set()
    for vocab in (first_vocab, later_vocab, first_vocab):
        x = rng.integers(0, vocab, (3, 4000))
        x[0, :50] = vocab - 1  # the largest id, repeated
        mask = rng.random(x.shape) < 0.9
        hi, lo = tuple_keys(x, h, mask=mask)
        keys = list(zip(hi.ravel().tolist(), lo.ravel().tolist(), strict=True))
        assert seen.contains(hi, lo).tolist() == [k in reference for k in keys]
        expect = []
        for k in keys:
            expect.append(k not in reference)
            reference.add(k)
        assert seen.add(hi, lo).tolist() == expect
        assert len(seen) == len(reference)
    z = np.zeros(1, dtype=np.uint64)
    assert seen.contains(z, z)[0] == ((0, 0) in reference)
    assert seen.add(z, z)[0] == ((0, 0) not in reference) and seen.contains(z, z)[0]
    big = np.array([2**64 - 5], dtype=np.uint64)  # fits no one-word layout: widens if new
    assert not seen.contains(big, big)[0] and seen.add(big, big)[0]
    assert seen.contains(big, big)[0] and seen.layout == "full"
    assert seen.contains(hi, lo).all()


@pytest.mark.parametrize("sweep_from", [8, 256, 1 << 40])
@pytest.mark.parametrize("wide", [False, True])
def test_swept_inserts_keep_first_occurrences(monkeypatch, sweep_from, wide) -> None:
    """Large sub-tables take their keys in order of home slot; the flags must still mark each
    key's first occurrence in input order, through growth and partial batches."""
    monkeypatch.setattr(TupleSet, "_SWEEP_SLOTS", sweep_from)
    rng = np.random.default_rng(sweep_from + wide)
    seen, reference = TupleSet(), set()
    for n, distinct in ((30_000, 20_000), (120_000, 200_000), (60_000, 40), (80_000, 100_000)):
        v = rng.integers(0, distinct, n).astype(np.uint64)
        if wide:  # 128-bit keys
            table = np.random.default_rng(distinct).integers(0, 2**63, (distinct, 2))
            hi, lo = table[v.astype(np.int64)].astype(np.uint64).T.copy()
        else:  # 16-bit packed keys
            hi, lo = tuple_keys(v.astype(np.int64) % 3000, 2)
            hi, lo = hi.ravel(), lo.ravel()
        zeros = rng.random(n) < 0.001
        hi[zeros], lo[zeros] = 0, 0
        expect = []
        for k in zip(hi.tolist(), lo.tolist(), strict=True):
            expect.append(k not in reference)
            reference.add(k)
        assert seen.add(hi, lo).tolist() == expect
        assert len(seen) == len(reference)
        assert seen.contains(hi, lo).all()
    assert seen.layout == ("full" if wide else "p16")


def test_set_memory_per_key_is_compact() -> None:
    x = np.random.default_rng(0).integers(0, 49_152, 2_000_000)
    s = TupleSet()
    s.add(*tuple_keys(x, 2))
    assert s.layout == "p16"
    assert 8 * len(s) < s.nbytes < 8 * 3.3 * len(s)  # one word per slot, load in (0.3, 1)


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


def test_prompt_context_off_pads_the_first_windows_but_keeps_the_prompt_for_skipping() -> None:
    prf = get_prf("siphash", KEY, "gumbel")
    prompt, completion = [11, 12, 13, 14, 15], [21, 22, 23, 24, 25, 26]
    off = Detector(KEY, scheme="gumbel", context_width=3, dedup="none")
    assert off.config.prompt_context is False  # the Gumbel generators' default (and vLLM's)
    plain = Detector(KEY, scheme="gumbel").config  # every default follows the scheme given
    assert (plain.context_width, plain.dedup, plain.prompt_context) == (4, "context", False)
    r = off.detect([completion], prompts=[prompt], flags=True)
    want = -np.log1p(-prf.score(np.array(completion), 3))  # windows padded with -1
    assert r.n_scored == r.n_positions == 6
    assert np.allclose([f["score"] for f in r.token_flags], want, rtol=0, atol=0)
    on = Detector(KEY, scheme="gumbel", context_width=3, dedup="none", prompt_context=True)
    r_on = on.detect([completion], prompts=[prompt], flags=True)
    want_on = -np.log1p(-prf.score(np.array(prompt + completion), 3))[5:]
    assert [f["score"] for f in r_on.token_flags] == want_on.tolist() != want.tolist()
    # skipping windows copied from the prompt still sees the prompt's own windows
    skip = Detector(KEY, scheme="kgw", context_width=1, dedup="none", prompt_context=False,
                    skip_prompt_windows=True)
    assert skip.detect([[5, 9, 6, 3]], prompts=[[5, 6, 7, 8]]).n_scored == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), max_size=7), min_size=1, max_size=5),
       st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=7), min_size=5, max_size=5),
       st.integers(1, 4))
def test_prompt_gap_windows_equal_unprompted_windows(prompts, comps, h) -> None:
    """With prompt_context off, every completion window is the window of the completion alone
    and every prompt window is unchanged; the gap holds nothing scored."""
    from fingerprint.detect.detector import pack_batches

    comps = [np.array(c) for c in comps[: len(prompts)]]
    proms = [np.array(p, dtype=np.int64) for p in prompts]
    for x, m, s in pack_batches(comps, proms, prompt_gap=h):
        start = np.zeros(x.shape[0], np.int64) if s is None else s
        mask = np.ones(x.shape, bool) if m is None else m
        w = windows(x, h, mask)
        for r in range(x.shape[0]):
            c, p = comps[r], proms[r]
            assert np.array_equal(x[r, start[r]:start[r] + len(c)], c)
            assert np.array_equal(w[r, start[r]:start[r] + len(c)], windows(c[None, :], h)[0])
            assert np.array_equal(w[r, :len(p)], windows(p[None, :], h)[0])
            assert mask[r].sum() == len(p) + len(c)


def test_config_refuses_a_gamma_no_value_falls_below_and_takes_numpy_scalars() -> None:
    cfg = DetectorConfig(gamma=np.float32(0.25), alpha=np.float64(0.2))
    assert cfg.gamma == 0.25 and type(cfg.gamma) is float and type(cfg.alpha) is float
    with pytest.raises(ConfigError, match="gamma 1e-20 is below the resolution"):
        Detector(KEY, gamma=1e-20)  # refused when built, not when a corpus is half read
    with pytest.raises(ConfigError, match="every token would be green"):
        DetectorConfig(gamma=1 - 1e-9, prf="philox")
    assert DetectorConfig(scheme="gumbel", gamma=1e-20).scheme == "gumbel"  # unused there


def test_row_first_occurrences_and_membership_match_a_naive_scan() -> None:
    rng = np.random.default_rng(5)
    hi = rng.integers(0, 3, (6, 40)).astype(np.uint64)
    lo = rng.integers(0, 4, (6, 40)).astype(np.uint64)
    members = rng.random((6, 40)) < 0.2
    first, inset = first_in_row(hi, lo), in_row_set(hi, lo, members)
    for r in range(6):
        keys = list(zip(hi[r].tolist(), lo[r].tolist(), strict=True))
        member_keys = {k for k, m in zip(keys, members[r], strict=True) if m}
        assert first[r].tolist() == [k not in keys[:i] for i, k in enumerate(keys)]
        assert inset[r].tolist() == [k in member_keys for k in keys]


@pytest.mark.parametrize("scheme", ["kgw", "gumbel", "dual_key_gumbel"])
def test_keys_rescore_gathered_tuples_as_the_detector_does(scheme) -> None:
    """Controls score the gathered tuples under each key: same counts and scores as a detector
    run over the batches (prompts, padding masks, candidates, dedup all in play)."""
    rng = np.random.default_rng(11)
    cfg = DetectorConfig(scheme=scheme, context_width=3, skip_prompt_windows=True)
    x = rng.integers(0, 50, (5, 30))
    mask = np.ones(x.shape, dtype=bool)
    mask[1, 20:] = mask[3, 7:] = False
    start = np.array([4, 0, 9, 2, 5])
    cand = rng.integers(0, 50, x.shape)
    for key in random_keys(3, seed=1):
        det = Detector(key, cfg)
        state = det.new_state()
        out = det.update(state, x, mask=mask, score_from=start, candidates=cand,
                         return_values=True)
        assert out is not None
        got = results_under_keys([ScoredBatch(x, mask, out[0], cand)], cfg, [key],
                                 n_positions=state.suff.n_positions)[0]
        want = det.result(state)
        assert 0 < got.n_scored == want.n_scored < mask.sum()
        assert got.n_green == want.n_green
        if scheme != "kgw":
            assert got.score_sum == pytest.approx(want.score_sum, rel=1e-12)
        assert got.log10_pvalue == pytest.approx(want.log10_pvalue, rel=1e-9)


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


# -- windows, several keys, text, files ------------------------------------------------------------
def _green_walk(prf, start: int, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    seq = [start]
    for _ in range(n):
        green = np.flatnonzero(prf.row(np.array([[seq[-1]]]), 49152)[0] < 0.25)
        seq.append(int(rng.choice(green)))
    return seq[1:]


def test_windowed_finds_the_watermarked_paragraph(default_tokenizer) -> None:
    from fingerprint.detect.windowed import detect_windowed

    human = human_ids(default_tokenizer, 30_000)
    wm = _green_walk(get_prf("siphash", KEY, "kgw"), int(human[999]), 150)
    text = np.concatenate([human[:1000], wm, human[1000:2500]])
    det = Detector(KEY, scheme="kgw", context_width=1)
    r = detect_windowed(det, text, min_size=32)
    assert r.log10_pvalue < r.whole.log10_pvalue  # the window beats the diluted whole text
    assert r.log10_pvalue < -40
    assert r.start >= 950 and r.end <= 1200  # the window sits on the watermarked span
    assert r.log10_pvalue == pytest.approx(r.best_log10_pvalue + np.log10(r.n_windows))
    assert "bonferroni" in r.correction
    null = detect_windowed(det, human[:3000], min_size=32)
    assert null.log10_pvalue > -3  # the search is corrected: human text stays unremarkable


def test_multikey_reports_the_matching_key(default_tokenizer) -> None:
    from fingerprint.detect.multikey import detect_multikey

    keys = [WatermarkKey.from_int(500 + i) for i in range(4)] + [KEY]
    wm = _green_walk(get_prf("siphash", KEY, "kgw"), 5, 200)
    r = detect_multikey(keys, [wm], DetectorConfig(scheme="kgw", context_width=1))
    assert r.best_index == 4 and r.best_key_id == KEY.key_id
    assert r.log10_pvalue == pytest.approx(r.results[4].log10_pvalue + np.log10(5))
    assert r.sidak_log10_pvalue <= r.log10_pvalue
    assert all(res.log10_pvalue > -4 for res in r.results[:4])


def test_text_detection_with_offsets_and_evasion(default_tokenizer) -> None:
    from fingerprint.detect.normalize import NormalizeConfig
    from fingerprint.detect.text import detect_text, encode_text

    tok = default_tokenizer
    wm_ids = _green_walk(get_prf("siphash", KEY, "kgw"), 13, 120, seed=5)
    text = tok.decode(wm_ids)
    det = Detector(KEY, scheme="kgw", context_width=1)
    clean = detect_text(det, text, tok)
    assert clean.log10_pvalue < -20
    spans = [(f["start"], f["end"]) for f in clean.token_flags]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # zero-width characters between letters: undone by normalization, not without it
    attacked = "\u200b".join(text)
    raw = detect_text(det, attacked, tok, normalize=NormalizeConfig(form="none",
                                                                    strip_invisible=False))
    fixed = detect_text(det, attacked, tok)
    assert raw.log10_pvalue > -3
    assert fixed.log10_pvalue == pytest.approx(clean.log10_pvalue)
    assert fixed.token_flags[-1]["end"] == len(attacked)
    with pytest.raises(InputError):
        encode_text("   ", tok)
    with pytest.raises(InputError):
        encode_text(b"bytes", tok)  # type: ignore[arg-type]


def test_corpus_files_and_broken_rows(tmp_path, default_tokenizer) -> None:
    import json

    from fingerprint.detect.corpus import CorpusReader, detect_corpus

    wm = _green_walk(get_prf("siphash", KEY, "kgw"), 5, 300)
    lines = [json.dumps({"completion_token_ids": wm[i:i + 50]}) for i in range(0, 300, 50)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"completion_token_ids": [1, "a"]}))
    lines.append(json.dumps({"other": 1}))
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reader = CorpusReader([path])
    det = Detector(KEY, scheme="kgw", context_width=1)
    res, skipped = detect_corpus(det, reader)
    assert [s.row for s in skipped] == [3, 5, 9]
    assert res.n_positions == 300 and res.log10_pvalue < -100
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"completion_token_ids": [wm[i:i + 50] for i in range(0, 300, 50)]}),
                   tmp_path / "c.parquet")
    res_pq, sk = detect_corpus(det, CorpusReader([tmp_path / "c.parquet"]))
    assert not sk and res_pq.n_scored == res.n_scored and res_pq.n_green == res.n_green
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"bad\.parquet"):
        detect_corpus(det, CorpusReader([tmp_path / "bad.parquet"]))
    (tmp_path / "bad.txt").write_bytes(b"caf\xc3 ok")
    with pytest.raises(InputError, match="UTF-8"):
        detect_corpus(det, CorpusReader([tmp_path / "bad.txt"]), tokenizer=default_tokenizer)


def test_cli_detect_and_calibrate(tmp_path, capsys) -> None:
    import json

    from fingerprint.cli import main

    key_path = KEY.save(tmp_path / "k.key")
    other = WatermarkKey.generate().save(tmp_path / "o.key")
    wm = _green_walk(get_prf("siphash", KEY, "kgw"), 5, 200)
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"completion_token_ids": wm}) + "\n")
    out = tmp_path / "r.json"
    assert main(["detect", str(path), "--key", str(other), "--key", str(key_path),
                 "--context-width", "1", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["best_key_id"] == KEY.key_id
    assert data["family_wise_log10_pvalue"] < -50
    assert KEY.key_id in capsys.readouterr().out
    assert main(["detect", str(path), "--context-width", "1"]) == 2  # no key: a clear error
    assert "--key" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    null = tmp_path / "null.jsonl"
    null.write_text("".join(json.dumps({"token_ids": rng.integers(0, 49152, 100).tolist()}) + "\n"
                            for _ in range(50)))
    assert main(["calibrate", str(null), "--n-keys", "200", "--out", str(tmp_path / "c.json")]) \
        in (0, 1)
    cal = json.loads((tmp_path / "c.json").read_text())
    assert cal["n_keys"] == 200 and len(cal["log10_pvalues"]) == 200


@pytest.mark.parametrize("scheme", ["kgw", "gumbel", "dual_key_gumbel"])
def test_pair_values_from_torch_tensors_equal_numpy(scheme) -> None:
    import torch

    rng = np.random.default_rng(4)
    ctx, tok = rng.integers(-1, 500, (300, 3)), rng.integers(0, 500, 300)
    det = Detector(KEY, DetectorConfig(scheme=scheme, context_width=3))
    want = det.pair_values(ctx, tok)
    got = det.pair_values(torch.as_tensor(ctx), torch.as_tensor(tok))
    assert isinstance(got, np.ndarray) and np.array_equal(got, want)


def test_calibration_check_is_exact_for_few_tuples() -> None:
    """On 12 tuples the binomial p-value takes few values: plain KS would flag a valid test."""
    from fingerprint import stats

    seq = np.arange(100, 112)
    rep = calibrate([seq], DetectorConfig(context_width=1), n_keys=1000, seed=3)
    assert rep.n_scored == 12
    plain = stats.calibration_summary([10**lp for lp in rep.log10_pvalues])
    assert plain.ks_pvalue < 1e-6 and not plain.calibrated  # the steps, not a broken test
    assert rep.calibrated and rep.summary.ks_pvalue > 0.01
    # the check still fails a broken test: every tuple repeated (dedup off) inflates evidence
    bad = calibrate([np.tile(seq, 30)], DetectorConfig(context_width=1, dedup="none"),
                    n_keys=1000, seed=3)
    assert not bad.calibrated


def test_many_short_sequences_pack_exactly() -> None:
    """Corpora of many ragged rows (with and without prompts) are packed without a per-token
    loop; every row must count exactly as if it were scored alone."""
    rng = np.random.default_rng(21)
    seqs = [rng.integers(0, 49_152, n) for n in rng.integers(0, 40, 3_000)]
    proms = [rng.integers(0, 49_152, n) for n in rng.integers(0, 6, 3_000)]
    det = Detector(KEY, DetectorConfig(scheme="kgw", context_width=2, dedup="none"))
    for prompts in (None, proms):
        whole = det.detect(seqs, prompts=prompts)
        alone = [det.detect([s], prompts=None if prompts is None else [prompts[i]])
                 for i, s in enumerate(seqs)]
        assert whole.n_scored == sum(r.n_scored for r in alone) == sum(map(len, seqs))
        assert whole.n_green == sum(r.n_green for r in alone)
    gen = det.detect(s for s in seqs)  # a generator is read once, and fully
    assert gen.n_scored == whole.n_scored
    with pytest.raises(InputError, match=r"sequences\[1\]"):
        det.detect(x for x in [seqs[0], np.zeros((2, 2), dtype=np.int64)])


@pytest.mark.parametrize("scheme", ["kgw", "gumbel", "dual_key_gumbel"])
def test_reused_value_buffers_do_not_leak_between_calls(scheme: str) -> None:
    rng = np.random.default_rng(22)
    a, b = rng.integers(0, 49_152, (50, 300)), rng.integers(0, 49_152, (7, 41))
    det = Detector(KEY, DetectorConfig(scheme=scheme))
    det.detect(a)
    again = det.detect(b)
    fresh = Detector(KEY, DetectorConfig(scheme=scheme)).detect(b)
    assert again.statistic == fresh.statistic and again.log10_pvalue == fresh.log10_pvalue
    assert again.n_scored == fresh.n_scored


def test_score_into_a_given_buffer() -> None:
    prf = get_prf("siphash24-v1", KEY, "kgw")
    x = np.random.default_rng(23).integers(0, 49_152, (3, 50))
    buf = np.full((3, 50), 7.0)
    got = prf.score(x, 2, out=buf)
    assert got is buf or np.shares_memory(got, buf)
    assert np.array_equal(buf, prf.score(x, 2))
    with pytest.raises(ShapeError):
        prf.score(x, 2, out=np.empty((3, 50), dtype=np.float32))
    with pytest.raises(ShapeError):
        prf.score(x, 2, out=np.empty((50, 3))[::1].T)
    import torch

    with pytest.raises(ConfigError):
        prf.score(torch.from_numpy(x), 2, out=buf)


def test_calibration_check_randomizes_the_discrete_binomial_pvalue() -> None:
    """With few tuples the exact binomial p-value is discrete, so a KS test rejects it even under
    H0; the calibration check's randomized p-value, P(X > g) + V P(X = g), is exactly uniform."""
    from types import SimpleNamespace

    from fingerprint import stats
    from fingerprint.detect.calibrate import null_summary

    cfg = DetectorConfig(scheme="kgw", gamma=0.25)
    gamma = get_prf(cfg.prf, KEY, "kgw").green_probability(0.25)
    rng = np.random.default_rng(7)
    n = 12
    greens = rng.binomial(n, gamma, 2000)
    results = [SimpleNamespace(n_green=int(g), n_scored=n,
                               log10_pvalue=stats.binomial_test(int(g), n, gamma).log10_pvalue)
               for g in greens]
    raw = stats.calibration_summary([10 ** r.log10_pvalue for r in results])
    assert raw.ks_pvalue < 1e-6  # the exact p-value's steps
    summary = null_summary(results, cfg, (0.01, 0.05), seed=3)
    assert summary.ks_pvalue > 0.01 and summary.calibrated
    # the same check on an anti-conservative test (one green too many) fails
    shifted = [SimpleNamespace(n_green=min(n, r.n_green + 1), n_scored=n,
                               log10_pvalue=stats.binomial_test(min(n, r.n_green + 1), n,
                                                                gamma).log10_pvalue)
               for r in results]
    assert not null_summary(shifted, cfg, (0.01, 0.05), seed=3).calibrated


def test_tuple_keys_into_reused_buffers() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 1000, (3, 50))
    mask = rng.random(x.shape) < 0.9
    out = (np.full(x.shape, 7, dtype=np.uint64), np.full(x.shape, 9, dtype=np.uint64))
    for h, with_token in ((1, True), (2, False), (5, True)):
        ref = tuple_keys(x, h, with_token=with_token, mask=mask)
        got = tuple_keys(x, h, with_token=with_token, mask=mask, out=out)
        assert got[0] is out[0] and got[1] is out[1]
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    for bad in ((out[0][:, :10], out[1]), (out[0].astype(np.int64), out[1]),
                (np.asfortranarray(out[0]), out[1])):
        with pytest.raises(ShapeError):
            tuple_keys(x, 2, out=bad)


def test_one_large_call_grows_each_sub_table_once() -> None:
    """Sizing growth for the whole call (not only its first batch) keeps results exact."""
    rng = np.random.default_rng(9)
    v = rng.integers(0, 6_000_000, 9_000_000)
    ids = rng.integers(0, 2**63, (6_000_000, 2), dtype=np.int64).astype(np.uint64)
    hi, lo = ids[v, 0], ids[v, 1]
    s = TupleSet()
    new = s.add(hi, lo)
    _, first = np.unique(v, return_index=True)
    assert np.array_equal(np.nonzero(new)[0], np.sort(first))
    assert len(s) == first.size and s.contains(hi, lo).all()


def test_a_fresh_set_is_sized_for_its_first_call(monkeypatch) -> None:
    """The first call on an empty set sizes each sub-table from its share of the keys (as if
    all were new: load at most 5/8), so it never grows mid-call; later calls grow as usual."""
    rng = np.random.default_rng(12)
    hi = rng.integers(0, 2**63, 300_000, dtype=np.int64).astype(np.uint64)
    lo = np.zeros_like(hi)
    s = TupleSet()

    def no_growth(*args, **kwargs):
        raise AssertionError("a fresh set grew during its first call")

    with monkeypatch.context() as m:
        m.setattr(TupleSet, "_grow_parts", no_growth)
        assert s.add(hi[:200_000], lo[:200_000]).all()
    assert s.nbytes <= 8 * (1.6 * 200_000 + 2 * 4096)  # one word a slot
    caps = s._caps.copy()
    assert s.add(hi, lo).tolist() == [False] * 200_000 + [True] * 100_000
    assert (s._caps >= caps).all() and (s._caps > caps).any() and len(s) == 300_000


def test_set_hash_spreads_structured_keys() -> None:
    """Keys with a simple relation between their words (here hi == lo * c, which a linear mix
    maps to one value) must still spread over the sub-tables and slots."""
    from fingerprint.detect.tuples import _hash

    v = np.arange(1, 100_001, dtype=np.uint64)
    for hi, lo in ((v * np.uint64(0x9E3779B97F4A7C15), v), (v << np.uint64(32), v),
                   (v, np.zeros_like(v))):
        keys = np.stack([hi, lo], axis=1)
        z = np.array([_hash(keys, j) for j in range(0, 100_000, 10)], dtype=np.uint64)
        assert np.unique(z & np.uint64(4095)).size > 3_600  # of 4,096 (3,740 expected)
        assert np.unique(z >> np.uint64(32)).size > 9_990  # slot bits, 10,000 keys
        s = TupleSet()
        assert s.add(hi, lo).all() and len(s) == v.size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 2**32 - 2), min_size=1, max_size=60), st.integers(1, 6),
       st.booleans())
def test_compact_keys_round_trip_and_keep_equality(ids: list[int], h: int,
                                                   with_token: bool) -> None:
    """One-word key layouts are exact: expanding gives the keys back, and two keys are equal in
    one word exactly when they are equal in 128 bits."""
    x = np.array(ids, dtype=np.int64)
    x = np.concatenate([x, x[: len(x) // 2]])  # some repeated tuples
    hi, lo = tuple_keys(x, h, with_token=with_token)
    hi, lo = hi.ravel(), lo.ravel()
    layout, words = compact_keys(hi, lo)
    narrow = all(-1 <= i < 65_535 for i in ids) and (h + with_token) <= 4
    if narrow:
        assert layout == "p16"
    if layout == "full":
        assert words is None and not narrow
        return
    back_hi, back_lo = expand_keys(words, layout)
    assert np.array_equal(back_hi, hi) and np.array_equal(back_lo, lo)
    pairs = hi.astype(object) * 2**64 + lo.astype(object)
    assert len(set(words.tolist())) == len(set(pairs.tolist()))


def test_expand_keys_refuses_the_full_layout() -> None:
    with pytest.raises(ValueError, match="one-word"):
        expand_keys(np.zeros(3, dtype=np.uint64), "full")
