"""Generation-time watermarks: signal, vLLM's Gumbel choice, padding, refusals, CLI resume."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numba as nb
import numpy as np
import pytest
import torch
from scipy import stats as sps
from transformers import GenerationConfig, LogitsProcessorList

from fingerprint.cli import main
from fingerprint.core import check_gamma, get_prf, prf_class
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey
from fingerprint.stats import binomial_test, gumbel_test
from fingerprint.watermark import (
    GumbelLogitsProcessor,
    GumbelWatermarkingConfig,
    KGWLogitsProcessor,
    KGWWatermarkingConfig,
    generate,
    gumbel_argmax,
    read_prompts,
)

KEY = WatermarkKey(bytes(range(32)))
PROMPTS = ["Tell me about rivers.", "Hi"]
V_TINY = 49_152


def kgw_stats(results, key=KEY, gamma=0.25, h=2, prf="siphash24-v1"):
    """(green count, scored count): windows reach into the prompt, as at generation."""
    p = get_prf(prf, key, "kgw")
    n_green = n = 0
    for r in results:
        u = p.score(np.array(r.prompt_ids + r.completion_ids), h)[len(r.prompt_ids):]
        n_green += int((u < gamma).sum())
        n += len(u)
    return n_green, n


def gumbel_stats(results, key=KEY, h=4, prf="siphash24-v1"):
    """(score sum, count): completions alone, windows padded with -1 (vLLM's convention)."""
    p = get_prf(prf, key, "gumbel")
    u = np.concatenate([p.score(np.array(r.completion_ids), h) for r in results])
    return float(-np.log1p(-u.astype(np.float64)).sum()), len(u)


# -- the signal ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", [
    {"do_sample": False},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 200, "top_p": 0.9},
])
def test_kgw_generations_carry_the_signal(tiny_model, default_tokenizer, sampling) -> None:
    res = generate(tiny_model, default_tokenizer, PROMPTS, key=KEY, scheme="kgw", gamma=0.25,
                   delta=4.0, max_new_tokens=24, min_new_tokens=24, seed=1, **sampling)
    assert [r.prompt for r in res] == PROMPTS
    assert all(len(r.completion_ids) == 24 for r in res)
    n_green, n = kgw_stats(res)
    assert n_green / n > 0.7
    assert binomial_test(n_green, n, 0.25).log10_pvalue < -12
    assert res[0].watermark == {"scheme": "kgw", "gamma": 0.25, "delta": 4.0, "context_width": 2,
                                "prf": "siphash24-v1", "prompt_context": True,
                                "key_id": KEY.key_id}


def test_unwatermarked_generations_carry_no_signal(tiny_model, default_tokenizer) -> None:
    res = generate(tiny_model, default_tokenizer, PROMPTS, scheme="none", max_new_tokens=32,
                   min_new_tokens=32, seed=2)
    assert res[0].watermark == {"scheme": "none"}
    n_green, n = kgw_stats(res)
    assert binomial_test(n_green, n, 0.25).log10_pvalue > -3
    score, m = gumbel_stats(res)
    assert gumbel_test(score, m).log10_pvalue > -3


@pytest.mark.parametrize("prf,key", [("siphash24-v1", KEY),
                                     ("philox4x32-10-v1", WatermarkKey.from_int(42))])
def test_gumbel_generations_carry_the_signal(tiny_model, default_tokenizer, prf, key) -> None:
    res = generate(tiny_model, default_tokenizer, PROMPTS, key=key, scheme="gumbel", prf=prf,
                   max_new_tokens=24, min_new_tokens=24, temperature=1.0, top_p=0.95, seed=3)
    score, n = gumbel_stats(res, key=key, prf=prf)
    assert n == 48
    assert gumbel_test(score, n).log10_pvalue < -12
    assert res[0].watermark["scheme"] == "gumbel" and res[0].watermark["prf"] == prf
    assert res[0].watermark["prompt_context"] is False


# -- vLLM's Gumbel choice ----------------------------------------------------------------------
def vllm_choice(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """vLLM 0.33 GumbelWatermarker._sample_watermarked, written out as it does it."""
    uniforms = uniforms.clamp_min(torch.finfo(torch.float32).tiny)
    noise = -torch.log(-torch.log(uniforms))
    return torch.argmax(logits + noise, dim=-1)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gumbel_choice_is_vllms(vllm_vectors, backend) -> None:
    vocab = 151_936  # covers every token id of the vectors
    cases = vllm_vectors["prf_cases"]
    if backend == "torch":  # the torch path is slower on CPU: one key, every width
        cases = [c for c in cases if c["key"] == 42]
    gen = torch.Generator().manual_seed(0)
    for case in cases:
        key = WatermarkKey.from_int(case["key"])
        prf = get_prf("philox4x32-10-v1", key, "gumbel")
        ctx = torch.tensor([case["context"]] * 3)
        u = prf.row(ctx, vocab, backend=backend)
        assert u.dtype == torch.float32
        assert u[0, case["tokens"]].tolist() == case["uniform_float32"]  # vLLM's own values
        logits = torch.randn(3, vocab, generator=gen) * 4
        logits[1, torch.randperm(vocab, generator=gen)[: vocab - 40]] = -torch.inf  # top-k
        # logits = -noise: every token ties at exactly 0 in float32, so only vLLM's exact
        # float32 arithmetic gives token 0 (any other rounding breaks the tie elsewhere)
        logits[2] = torch.log(-torch.log(u[2].clamp_min(torch.finfo(torch.float32).tiny)))
        proc = GumbelLogitsProcessor(key, len(case["context"]), "philox4x32-10-v1")
        mine = proc.choose(logits, ctx)
        assert torch.equal(mine, vllm_choice(logits, u))
        assert torch.isfinite(logits[1, mine[1]]) and mine[2].item() == 0


def test_gumbel_argmax_leaves_ties_to_the_lowest_index() -> None:
    u = torch.full((1, 6), 0.5, dtype=torch.float32)
    assert gumbel_argmax(torch.zeros(1, 6), u).item() == 0


# -- windows and padding -----------------------------------------------------------------------
def left_pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([[pad] * (width - len(r)) + r for r in rows])


def expected_kgw(scores, windows, prf, gamma, delta):
    green = prf.row(torch.tensor(windows), scores.shape[-1]) < gamma
    return torch.where(green, scores + delta, scores)


def test_kgw_windows_reach_into_the_prompt_and_skip_left_padding() -> None:
    pad, v, h = 2, 500, 3
    prompts = [[5, 6, 7, 8, 9], [11], [13, 14]]
    prf = get_prf("siphash24-v1", KEY, "kgw")
    proc = KGWLogitsProcessor(KEY, gamma=0.3, delta=1.5, context_width=h, pad_token_id=pad)
    scores = torch.randn(3, v)
    ids = left_pad(prompts, pad)
    out = proc(ids, scores)
    want = expected_kgw(scores, [[7, 8, 9], [-1, -1, 11], [-1, 13, 14]], prf, 0.3, 1.5)
    assert torch.equal(out, want)
    ids2 = torch.cat([ids, torch.tensor([[pad], [40], [41]])], dim=1)  # row 0 sampled the pad id
    out2 = proc(ids2, scores)
    want2 = expected_kgw(scores, [[8, 9, pad], [-1, 11, 40], [13, 14, 41]], prf, 0.3, 1.5)
    assert torch.equal(out2, want2)
    for b, prompt in enumerate(prompts):  # each row alone: the same green lists
        alone = KGWLogitsProcessor(KEY, gamma=0.3, delta=1.5, context_width=h, pad_token_id=pad)
        assert torch.equal(alone(torch.tensor([prompt]), scores[b:b + 1])[0], out[b])
        step = torch.tensor([prompt + ids2[b, -1:].tolist()])
        assert torch.equal(alone(step, scores[b:b + 1])[0], out2[b])


@pytest.mark.parametrize("prompt_context", [False, True])
def test_gumbel_windows_and_left_padding(prompt_context) -> None:
    pad, v, h = 2, 300, 2
    prompts = [[5, 6, 7, 8], [11]]
    prf = get_prf("siphash24-v1", KEY, "gumbel")
    kw = {"prompt_context": prompt_context, "pad_token_id": pad, "check_placement": False}
    proc = GumbelLogitsProcessor(KEY, h, **kw)
    scores = torch.randn(2, v)
    ids = left_pad(prompts, pad)
    outs = [proc(ids, scores)]
    ids = torch.cat([ids, torch.tensor([[30], [31]])], dim=1)
    outs.append(proc(ids, scores))
    windows = ([[7, 8], [-1, 11]], [[8, 30], [11, 31]]) if prompt_context else \
        ([[-1, -1], [-1, -1]], [[-1, 30], [-1, 31]])
    for out, win in zip(outs, windows, strict=True):
        choice = gumbel_argmax(scores, prf.row(torch.tensor(win), v))
        assert torch.equal(out.argmax(-1), choice)
        assert torch.isfinite(out).sum().item() == 2  # one finite logit per row
        assert torch.equal(out.gather(1, choice[:, None]), scores.gather(1, choice[:, None]))
    for b, prompt in enumerate(prompts):
        alone = GumbelLogitsProcessor(KEY, h, **kw)
        assert torch.equal(alone(torch.tensor([prompt]), scores[b:b + 1])[0], outs[0][b])
        nxt = torch.tensor([[*prompt, 30 + b]])
        assert torch.equal(alone(nxt, scores[b:b + 1])[0], outs[1][b])


@pytest.mark.parametrize("history,repeated", [(None, True), (2, True), (1, False)])
def test_gumbel_single_turn_dedup(history, repeated) -> None:
    proc = GumbelLogitsProcessor(KEY, 1, dedup_max_history=history, check_placement=False)
    scores = torch.randn(1, 50)
    outs = []
    for gen in ([], [7], [7, 8], [7, 8, 7]):  # windows [-1], [7], [8], [7]
        outs.append(proc(torch.tensor([[1, 2, 3, *gen]]), scores))
    for out in outs[:3]:
        assert torch.isfinite(out).sum().item() == 1
    # the window [7] was used two steps earlier: plain sampling from the processed logits
    assert torch.equal(outs[3], scores) == repeated
    plain = GumbelLogitsProcessor(KEY, 1, deduplicate_contexts="none", check_placement=False)
    for gen in ([], [7], [7, 8], [7, 8, 7]):
        assert torch.isfinite(plain(torch.tensor([[1, 2, 3, *gen]]), scores)).sum().item() == 1


# -- distortion-free -----------------------------------------------------------------------------
@pytest.mark.parametrize("prf_name", ["siphash24-v1", "philox4x32-10-v1"])
def test_gumbel_is_distortion_free(prf_name) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -math.inf, 1.5]])
    probs = torch.softmax(logits.double(), -1)[0].numpy()
    rng = np.random.default_rng(5)
    counts = np.zeros(8)
    counts_wrong = np.zeros(8)
    # 20 fixed keys x 1000 random windows = 20k draws. Fixed keys keep the test deterministic:
    # with fresh random keys a correct sampler still fails a 1e-3 test once in a thousand runs.
    for i in range(20):
        key = WatermarkKey.from_int(1000 + i)
        prf = get_prf(prf_name, key, "gumbel")
        win = torch.from_numpy(rng.integers(0, 49_152, (1000, 4)))
        u = prf.row(win, 8)
        counts += np.bincount(gumbel_argmax(logits.expand(1000, 8), u.clone()).numpy(),
                              minlength=8)
        wrong = torch.argmax(logits - torch.log(u), dim=-1)  # exponential noise: biased
        counts_wrong += np.bincount(wrong.numpy(), minlength=8)
    assert counts[6] == 0
    keep = probs > 0
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    assert sps.chisquare(counts[keep], expected).pvalue > 1e-3
    assert sps.chisquare(counts_wrong[keep], expected).pvalue < 1e-6


# -- transformers integration and refusals -----------------------------------------------------
def encode(tokenizer, prompts):
    from fingerprint.models import chat_prompts

    return tokenizer(chat_prompts(tokenizer, prompts), return_tensors="pt", padding=True,
                     padding_side="left", add_special_tokens=False)


def test_gumbel_runs_after_the_warpers_in_generate(tiny_model, default_tokenizer) -> None:
    enc = encode(default_tokenizer, PROMPTS[:2])
    greedy = tiny_model.generate(**enc, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    wm = GumbelWatermarkingConfig(KEY)
    # top_k=1 leaves one finite logit: the watermark must see it, so it picks the greedy token
    out = tiny_model.generate(**enc, watermarking_config=wm, do_sample=True, top_k=1,
                              max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(out, greedy)
    proc = wm.last_processor
    assert proc is not None and proc.n_watermarked > 0
    assert proc.n_watermarked + proc.n_repeated == 16  # repeated windows: plain sampling
    sampled = tiny_model.generate(**enc, watermarking_config=wm, do_sample=True,
                                  temperature=0.8, top_p=0.95, max_new_tokens=8)
    assert not torch.equal(sampled, greedy)


def test_kgw_placements_in_generate(tiny_model, default_tokenizer) -> None:
    enc = encode(default_tokenizer, PROMPTS)
    kw = {"do_sample": True, "top_k": 1, "max_new_tokens": 8, "min_new_tokens": 8}
    greedy = tiny_model.generate(**enc, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    # after top-k=1 (watermarking_config) the bias cannot move the only finite token ...
    last = KGWWatermarkingConfig(KEY, delta=4.0, pad_token_id=default_tokenizer.pad_token_id)
    assert torch.equal(tiny_model.generate(**enc, watermarking_config=last, **kw), greedy)
    assert isinstance(last.last_processor, KGWLogitsProcessor)
    # ... before it (logits_processor) it picks the argmax of the biased logits instead
    first = KGWLogitsProcessor(KEY, delta=4.0, pad_token_id=default_tokenizer.pad_token_id)
    out = tiny_model.generate(**enc, logits_processor=LogitsProcessorList([first]), **kw)
    assert not torch.equal(out, greedy)
    width = enc["input_ids"].shape[1]
    res = [SimpleNamespace(prompt_ids=enc["input_ids"][b][enc["attention_mask"][b].bool()]
                           .tolist(), completion_ids=out[b, width:].tolist())
           for b in range(len(PROMPTS))]
    assert kgw_stats(res)[0] == 16  # every biased argmax is green


def test_gumbel_misuse_is_refused(tiny_model, default_tokenizer) -> None:
    enc = encode(default_tokenizer, PROMPTS[:1])
    wm = GumbelWatermarkingConfig(KEY)
    with pytest.raises(ConfigError, match="greedy"):
        tiny_model.generate(**enc, watermarking_config=wm, max_new_tokens=3)
    with pytest.raises(ConfigError, match="beam"):
        tiny_model.generate(**enc, watermarking_config=wm, do_sample=True, num_beams=2,
                            max_new_tokens=3)
    in_list = LogitsProcessorList([GumbelLogitsProcessor(KEY)])
    with pytest.raises(ConfigError, match="TemperatureLogitsWarper"):
        tiny_model.generate(**enc, logits_processor=in_list, do_sample=True, temperature=0.7,
                            top_k=0, max_new_tokens=3)
    for kw in ({"do_sample": False}, {"temperature": 0.0}):
        with pytest.raises(ConfigError, match="greedy"):
            generate(tiny_model, default_tokenizer, ["x"], key=KEY, scheme="gumbel", **kw)


def test_bad_parameters_are_refused() -> None:
    for gamma in (0, 1, -0.1, 1.5, math.nan, "0.3", True):
        with pytest.raises(ConfigError):
            KGWLogitsProcessor(KEY, gamma=gamma)
    for delta in (-1.0, math.nan, math.inf, None):
        with pytest.raises(ConfigError):
            KGWLogitsProcessor(KEY, delta=delta)
    for h in (0, 17, 2.0, None):
        with pytest.raises(ConfigError):
            KGWLogitsProcessor(KEY, context_width=h)
        with pytest.raises(ConfigError):
            GumbelLogitsProcessor(KEY, context_width=h)
    with pytest.raises(ConfigError, match="unknown PRF"):
        KGWLogitsProcessor(KEY, prf="md5")
    with pytest.raises(ConfigError):
        GumbelLogitsProcessor(KEY, deduplicate_contexts="all")
    with pytest.raises(ConfigError, match="needs a key"):
        generate(None, None, ["x"], scheme="kgw")
    with pytest.raises(ConfigError, match="scheme"):
        generate(None, None, ["x"], key=KEY, scheme="aar")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        generate(None, None, "one string", key=KEY)
    with pytest.raises(ConfigError, match="top_p"):
        generate(None, None, ["x"], key=KEY, top_p=1.5)


@pytest.mark.parametrize(("prf", "gamma", "message"), [
    ("siphash24-v1", 1e-20, r"gamma 1e-20 is below the resolution 2\*\*-53 .*no token"),
    ("philox4x32-10-v1", 1e-8, r"gamma 1e-08 is below the resolution 2\*\*-24 .*no token"),
    ("philox4x32-10-v1", 1 - 1e-9, r"gamma 0.999999999 is above .*every token would be green"),
])
def test_gamma_beyond_the_prf_resolution_is_refused(prf, gamma, message) -> None:
    # u takes 2**-53 (SipHash) or 2**-24 (Philox) spaced values: such a gamma makes the exact
    # green probability 0 or 1, so nothing (everything) would be marked and nothing tested.
    with pytest.raises(ConfigError, match=message):
        KGWWatermarkingConfig(KEY, gamma=gamma, prf=prf)
    with pytest.raises(ConfigError, match=message):
        KGWLogitsProcessor(KEY, gamma=gamma, prf=prf)
    with pytest.raises(ConfigError, match=message):
        check_gamma(gamma, prf)
    cls = prf_class(prf)
    second, top = cls.level_uniform(np.array([1, cls.levels - 1], dtype=np.uint64)).tolist()
    for ok in (second, min(top, math.nextafter(1.0, 0.0)), 2.0**-24):
        assert check_gamma(ok, get_prf(prf, KEY, "kgw")) == ok
        assert 0.0 < cls.green_probability(ok) < 1.0


def test_kgw_accepts_numpy_scalars() -> None:
    wm = KGWWatermarkingConfig(KEY, gamma=np.float32(0.25), delta=np.float64(2.0))
    assert wm.to_dict()["gamma"] == 0.25 and type(wm.to_dict()["gamma"]) is float
    assert check_gamma(np.float16(0.5)) == 0.5
    for bad in (np.bool_(True), True, "0.25", None):
        with pytest.raises(ConfigError, match="gamma must be a number"):
            check_gamma(bad)


def test_public_configs_never_hold_the_key() -> None:
    secret_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    wm, kwm = GumbelWatermarkingConfig(KEY), KGWWatermarkingConfig(KEY)
    kgw = KGWLogitsProcessor(KEY)
    gc = GenerationConfig(watermarking_config=wm, do_sample=True)
    texts = [repr(wm), wm.to_json_string(), json.dumps(wm.to_dict()), repr(kgw), repr(kwm),
             json.dumps(kgw.config), repr(gc), gc.to_json_string()]
    assert all(secret_b64 not in t and KEY.key_id in t for t in texts[:-2])
    assert all(secret_b64 not in t for t in texts)
    assert kwm.config == kgw.config
    for obj in (wm, kwm, kgw, GumbelLogitsProcessor(KEY)):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    for cfg in (wm, kwm):
        with pytest.raises(ConfigError):
            type(cfg).from_dict(cfg.to_dict())


# -- the prompts file and the resumable CLI ------------------------------------------------------
def write_prompts(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_read_prompts_reports_broken_lines(tmp_path) -> None:
    p = tmp_path / "p.jsonl"
    write_prompts(p, ['{"prompt": "a"}', '{"prompt": ', "", '["x"]', '{"prompt": "b"}',
                      '{"text": "c"}', '{"prompt": "  "}'])
    prompts, errors = read_prompts(p)
    assert [(x.line, x.prompt) for x in prompts] == [(1, "a"), (5, "b")]
    assert [e.split(":")[1] for e in errors] == ["2", "4", "6", "7"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model, default_tokenizer):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    return d


def test_cli_generate_resumes(tmp_path, tiny_dir, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    texts = [f"Say something about the number {i}." for i in range(6)]
    lines = [json.dumps({"prompt": t}) for t in texts]
    lines.insert(2, '{"prompt": "broken')  # line 3
    write_prompts(prompts, lines)
    key = tmp_path / "k.key"
    KEY.save(key)
    out = tmp_path / "out" / "wm.jsonl"
    args = ["generate", "--prompts", str(prompts), "--out", str(out), "--model", str(tiny_dir),
            "--key", str(key), "--max-new-tokens", "4", "--batch-size", "2", "--seed", "0",
            "--quiet"]
    assert main([*args, "--max-prompts", "3"]) == 0  # an interrupted run: 3 of 6 done
    err = capsys.readouterr().err
    assert f"{prompts}:3: not valid JSON" in err
    assert len(out.read_text().splitlines()) == 3
    with out.open("a") as f:  # and a kill in the middle of writing the 4th
        f.write('{"line": 5, "prompt_sha256": "ab')
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "truncated last line" in captured.err
    assert "wrote 3 results" in captured.out
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in recs] == [1, 2, 4, 5, 6, 7]  # each prompt once, in order
    assert [r["prompt"] for r in recs] == texts
    r = recs[0]
    assert set(r) >= {"prompt", "completion", "completion_token_ids", "prompt_token_ids",
                      "watermark", "sampling"}
    assert r["watermark"]["key_id"] == KEY.key_id and "secret" not in json.dumps(r)
    assert 1 <= len(r["completion_token_ids"]) <= 4
    assert main(args) == 0 and "wrote 0 results" in capsys.readouterr().out
    assert main([*args, "--delta", "3"]) == 2  # other settings: refuse to mix them in
    assert "different watermark" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_cli_generate_then_detect_scores_the_generations_windows(tmp_path, tiny_dir, scheme,
                                                                 capsys) -> None:
    """The generated file carries prompt ids; detect's defaults must read them as generation
    did (KGW: into the prompt; Gumbel: not), so every token scores as the generator chose it."""
    from fingerprint.detect.detector import Detector, DetectorConfig

    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, [json.dumps({"prompt": f"Tell me about {w}."})
                            for w in ("rivers", "stones", "birds", "clouds")])
    key = KEY.save(tmp_path / "k.key")
    out = tmp_path / "wm.jsonl"
    assert main(["generate", "--prompts", str(prompts), "--out", str(out), "--model",
                 str(tiny_dir), "--key", str(key), "--scheme", scheme, "--delta", "50",
                 "--max-new-tokens", "8", "--batch-size", "4", "--seed", "1", "--quiet"]) == 0
    res = tmp_path / "r.json"
    assert main(["detect", str(out), "--key", str(key), "--scheme", scheme, "--dedup", "none",
                 "--quiet", "--out", str(res)]) == 0
    capsys.readouterr()
    got = json.loads(res.read_text())["results"][0]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    cfg = DetectorConfig.from_dict({**recs[0]["watermark"], "dedup": "none"})
    want = Detector(KEY, cfg).detect(
        [r["completion_token_ids"] for r in recs],
        prompts=[r["prompt_token_ids"] for r in recs] if cfg.prompt_context else None)
    assert got["n_scored"] == want.n_scored == sum(len(r["completion_token_ids"]) for r in recs)
    assert got["log10_pvalue"] == want.log10_pvalue
    if scheme == "kgw":  # delta 50: every generated token is green in its own window
        assert got["n_green"] == got["n_scored"]


def test_cli_generate_needs_a_key(tmp_path, tiny_dir, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, ['{"prompt": "hello"}'])
    out = tmp_path / "out.jsonl"
    base = ["generate", "--prompts", str(prompts), "--out", str(out), "--model", str(tiny_dir),
            "--max-new-tokens", "2", "--quiet"]
    assert main(base) == 2
    assert "error: --key" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--key", str(tmp_path / "missing.key")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--no-watermark"]) == 0
    assert json.loads(out.read_text())["watermark"] == {"scheme": "none"}


# -- the real model --------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_generates_watermarked_text() -> None:
    from fingerprint.models import load_default_model

    model, tokenizer = load_default_model()
    for scheme, prompts in (("kgw", ["Name a color.", "Explain tides in one sentence."]),
                            ("gumbel", ["Name a fruit."])):
        res = generate(model, tokenizer, prompts, key=KEY, scheme=scheme, max_new_tokens=4,
                       temperature=0.7, seed=0)
        assert len(res) == len(prompts)
        for r in res:
            assert 1 <= len(r.completion_ids) <= 4
            assert r.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
            assert r.completion == tokenizer.decode(r.completion_ids, skip_special_tokens=True)
        assert res[0].watermark["scheme"] == scheme


@pytest.mark.parametrize("shape", [(1, 49_152), (3, 49_152), (2, 60_001), (16, 4_096)])
def test_small_steps_run_piecewise_with_the_same_values(shape) -> None:
    """Small CPU steps are computed in pieces (no thread fork): values must not change."""
    b, v = shape
    gen = torch.Generator().manual_seed(b)
    scores = torch.randn(b, v, generator=gen) * 3
    scores[0, : v // 3] = -torch.inf
    windows = torch.randint(0, 1000, (b, 2), generator=gen)
    kgw = KGWLogitsProcessor(KEY, gamma=0.3, delta=1.25)  # h = 2: the input is the window
    u = get_prf("siphash24-v1", KEY, "kgw").row(windows, v)
    assert torch.equal(kgw(windows, scores), torch.where(u < 0.3, scores + 1.25, scores))
    for prf_name, key in (("siphash24-v1", KEY), ("philox4x32-10-v1", WatermarkKey.from_int(7))):
        u = get_prf(prf_name, key, "gumbel").row(windows, v)
        if prf_name.startswith("philox"):  # exact float32 ties everywhere in the last row
            scores[-1] = torch.log(-torch.log(u[-1]))
        want = vllm_choice(scores.to(u.dtype), u) if u.dtype == torch.float32 else \
            torch.argmax(scores.double() - torch.log(-torch.log(u)), dim=-1)
        assert torch.equal(gumbel_argmax(scores, u.clone()), want)


def _full_gumbel_choice(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Every token valued at once (no column slices): the reference the choice must equal."""
    lg = logits if torch.promote_types(logits.dtype, u.dtype) == u.dtype else logits.to(u.dtype)
    vals = torch.sub(lg, u.clamp_min(torch.finfo(u.dtype).tiny).log().neg().log())
    best = vals.max(dim=-1, keepdim=True).values
    return torch.where(vals == best, torch.arange(vals.shape[1]), vals.shape[1]).min(dim=-1).values


@pytest.mark.parametrize("udtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["normal", "flat", "masked", "near_one", "ties", "wide"])
def test_gumbel_choice_equals_the_unsliced_computation(udtype, case) -> None:
    cases = ["normal", "flat", "masked", "near_one", "ties", "wide"]
    gen = torch.Generator().manual_seed(cases.index(case) + (100 if udtype == torch.float64 else 0))
    b, v = 64, 5000
    logits = torch.randn(b, v, generator=gen) * 2
    u = torch.rand(b, v, generator=gen, dtype=torch.float64).to(udtype)
    if case == "flat":  # every token equally likely: the noise alone decides
        logits = torch.zeros(b, v)
    elif case == "masked":  # top-k style filtering
        logits[:, 50:] = -torch.inf
    elif case == "near_one":  # uniforms at the top of their range: the largest noises
        u[:, ::7] = 1 - torch.rand(b, len(range(0, v, 7)), generator=gen,
                                   dtype=torch.float64).to(udtype) * 1e-6
        u = u.clamp(max=1 - torch.finfo(udtype).eps / 2)
    elif case == "ties":  # exact ties everywhere: the lowest index must win
        u[:] = u[:, :1]
        logits[:] = logits[:, :1]
    elif case == "wide":
        logits = logits * 20
    assert torch.equal(gumbel_argmax(logits, u.clone()), _full_gumbel_choice(logits, u))


@nb.njit(cache=False)
def _every_token_valued(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The float64 choice with every token valued (same log as the pruned kernel)."""
    out = np.zeros(u.shape[0], dtype=np.int64)
    for b in range(u.shape[0]):
        best = -np.inf
        for v in range(u.shape[1]):
            val = logits[b, v] - np.log(-np.log(u[b, v]))
            if val > best:
                best, out[b] = val, v
    return out


@pytest.mark.parametrize("case", ["normal", "flat", "masked", "near_one", "near_zero", "ties",
                                  "wide", "peaked", "inf", "nan"])
def test_pruned_cpu_choice_values_every_possible_winner(case) -> None:
    """The float64 CPU choice skips tokens that cannot win: it must equal valuing them all."""
    from fingerprint.watermark.gumbel import _pruned_choice

    cases = ["normal", "flat", "masked", "near_one", "near_zero", "ties", "wide", "peaked", "inf",
             "nan"]
    gen = torch.Generator().manual_seed(300 + cases.index(case))
    b, v = 64, 5000
    logits = torch.randn(b, v, generator=gen) * 2
    u = torch.rand(b, v, generator=gen, dtype=torch.float64).clamp(1e-300, 1 - 2**-53)
    if case == "flat":
        logits = torch.zeros(b, v)
    elif case == "masked":
        logits[:, 50:] = -torch.inf
        logits[0, :] = -torch.inf  # a row with nothing finite: index 0, as argmax gives
    elif case == "near_one":  # the largest noises, up to about 37 nats
        u[:, ::7] = 1 - torch.rand(b, len(range(0, v, 7)), generator=gen, dtype=torch.float64) \
            * 1e-15
        u = u.clamp(max=1 - 2**-53)
    elif case == "near_zero":
        u[:, ::3] = torch.rand(b, len(range(0, v, 3)), generator=gen, dtype=torch.float64) * 1e-12
    elif case == "ties":
        u[:] = u[:, :1]
        logits[:] = logits[:, :1]
    elif case == "wide":
        logits = logits * 20
    elif case == "peaked":  # one dominant token, a long tail 30-40 nats below it
        logits = -35 + torch.rand(b, v, generator=gen) * 10
        logits[:, 17] = 0.0
    elif case == "inf":
        logits[:, 99] = torch.inf
        logits[:, 3000] = torch.inf
    elif case == "nan":  # a NaN value never wins; a row of NaN gives index 0
        logits[:, ::3] = torch.nan
        logits[1] = torch.nan
    got = _pruned_choice(logits, u)
    assert torch.equal(got, torch.from_numpy(_every_token_valued(logits.double().numpy(),
                                                                 u.numpy())))
    if case == "nan":
        assert got[1] == 0 and (got[2:] % 3 != 0).all()
    if case not in ("ties", "inf", "masked", "nan"):  # where torch's log has no exact ties
        assert torch.equal(got, gumbel_argmax(logits, u.clone()))
    if case == "inf":
        assert (got == 99).all()


FUSED_CASES = ["normal", "flat", "masked", "wide", "peaked", "inf", "nan", "no_finite", "huge",
               "float64", "bfloat16", "short_row", "odd_width"]


@pytest.mark.parametrize("case", FUSED_CASES)
@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_fused_cpu_choice_values_every_possible_winner(case: str, h: int) -> None:
    """The CPU Gumbel step computes each row's uniforms in the core's cache and screens its
    tokens in blocks: its choice must equal valuing every token of the full row."""
    from fingerprint.watermark.gumbel import _pruned_choice

    prf = get_prf("siphash24-v1", KEY, "gumbel")
    gen = torch.Generator().manual_seed(17 * FUSED_CASES.index(case) + h)
    b, v = 6, {"short_row": 37, "odd_width": 1000 + 3}.get(case, 50_000)
    logits = torch.randn(b, v, generator=gen) * 3
    if case == "flat":
        logits[:] = 0.0
    elif case == "masked":  # a top-k-like mask, with one row of nothing finite
        logits[:, torch.randperm(v, generator=gen)[: v - 2000]] = -torch.inf
        logits[0] = -torch.inf
    elif case == "wide":
        logits = logits * 20
    elif case == "peaked":  # two equal leaders far apart, a tail 25-35 nats below them
        logits = -35 + torch.rand(b, v, generator=gen) * 10
        logits[:, 17] = logits[:, 40_000] = 0.0
    elif case == "inf":
        logits[:, 99] = logits[:, 30_000] = torch.inf
        logits[1, 99] = 0.0  # here the later +inf wins
    elif case == "nan":
        logits[:, ::5] = torch.nan
        logits[2] = torch.nan
    elif case == "no_finite":
        logits[:] = -torch.inf
    elif case == "huge":
        logits = logits * 1e4
    elif case == "float64":
        logits = logits.double()
    elif case == "bfloat16":
        logits = logits.to(torch.bfloat16)
    windows = torch.randint(-1, v, (b, h), generator=gen)
    got = prf.fused_gumbel_argmax(windows, logits)
    u = prf.row(windows, v)
    want = torch.from_numpy(_every_token_valued(logits.double().numpy(), u.numpy()))
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert torch.equal(_pruned_choice(logits, u), want)
    if case == "inf":
        assert got[0] == 99 and got[1] == 30_000
    if case in ("no_finite", "nan"):
        assert got[0 if case == "no_finite" else 2] == 0
    if case == "peaked":  # the noise, not the index, decides between the equal leaders
        assert set(got.tolist()) == {17, 40_000}
    proc = GumbelLogitsProcessor(KEY, h, check_placement=False)
    assert torch.equal(proc.choose(logits, windows), got)  # the processor takes this path


def test_sparse_choice_after_top_k_equals_the_dense_one() -> None:
    """After top-k most logits are -inf: only the live tokens' uniforms are computed."""
    from fingerprint.watermark.gumbel import _pruned_choice, _sparse_choice

    prf = get_prf("siphash24-v1", KEY, "gumbel")
    gen = torch.Generator().manual_seed(31)
    b, v = 12, 49_152
    logits = torch.randn(b, v, generator=gen) * 3
    keep = torch.rand(b, v, generator=gen).argsort(dim=1)[:, :50]
    masked = torch.full_like(logits, -torch.inf).scatter(1, keep, logits.gather(1, keep))
    masked[3] = -torch.inf  # nothing live: index 0, as argmax gives
    masked[4, 777] = torch.inf  # +inf wins
    masked[5, keep[5]] = 0.0  # all live tokens tie: the noise decides
    windows = torch.randint(0, v, (b, 4), generator=gen)
    live = masked > -torch.inf
    got = _sparse_choice(prf, masked, windows, live)
    assert torch.equal(got, _pruned_choice(masked, prf.row(windows, v)))
    assert torch.equal(got, gumbel_argmax(masked, prf.row(windows, v)))
    assert got[3] == 0 and got[4] == 777
    proc = GumbelLogitsProcessor(KEY, 4, check_placement=False)
    assert torch.equal(proc.choose(masked, windows), got)  # the processor takes this path
