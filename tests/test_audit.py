"""Radioactivity audits on tiny students: trained on watermarked text shows; a control does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fingerprint.audit.reading import TeacherText, audit_open, seen_window_earlier
from fingerprint.core import get_prf
from fingerprint.detect.detector import DetectorConfig
from fingerprint.errors import InputError
from fingerprint.keys import WatermarkKey
from fingerprint.models import tiny_llama

KEY = WatermarkKey(bytes(range(32)))
V = 49152
SUB = np.arange(1000, 1064)  # a small sub-vocabulary, so a tiny student learns in seconds


def teacher_walks(n: int, length: int, delta: float, seed: int) -> np.ndarray:
    """Token walks over SUB; with delta > 0 the KGW bias of KEY (h = 1) steers each step."""
    rng = np.random.default_rng(seed)
    green = get_prf("siphash24-v1", KEY, "kgw").row(SUB[:, None], V)[:, SUB] < 0.25
    weights = np.exp(delta * green)
    probs = weights / weights.sum(axis=1, keepdims=True)
    cum = np.cumsum(probs, axis=1)
    out = np.empty((n, length), dtype=np.int64)
    cur = rng.integers(0, len(SUB), n)
    out[:, 0] = cur
    for j in range(1, length):  # vectorized over walks: one step at a time
        cur = np.minimum((cum[cur] < rng.random((n, 1))).sum(axis=1), len(SUB) - 1)
        out[:, j] = cur
    return SUB[out]


def train_student(data: np.ndarray, steps: int = 200, seed: int = 1) -> torch.nn.Module:
    """Fine-tune a tiny Llama on ``data`` (softmax restricted to SUB: a cheap, honest student)."""
    torch.manual_seed(seed)
    model = tiny_llama(seed=seed, hidden_size=32, num_layers=1, num_heads=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    head = model.get_output_embeddings()
    sub = torch.as_tensor(SUB)
    index = {int(t): i for i, t in enumerate(SUB)}
    rng = np.random.default_rng(seed)
    targets_all = torch.as_tensor(np.vectorize(index.get)(data))
    for _ in range(steps):
        rows = rng.integers(0, len(data), 32)
        ids = torch.as_tensor(data[rows])
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]
        logits = hidden @ head.weight[sub].T
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, len(SUB)), targets_all[rows][:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def students() -> dict[str, torch.nn.Module]:
    return {"watermarked": train_student(teacher_walks(2000, 33, 3.0, seed=0)),
            "control": train_student(teacher_walks(2000, 33, 0.0, seed=0))}


def held_out_teacher(n: int = 150) -> list[TeacherText]:
    return [TeacherText([], row.tolist()) for row in teacher_walks(n, 33, 3.0, seed=99)]


def test_open_audit_detects_a_student_of_watermarked_text(students) -> None:
    cfg = DetectorConfig(scheme="kgw", context_width=1, gamma=0.25)
    res = audit_open(students["watermarked"], held_out_teacher(), KEY, cfg, vocab_size=V,
                     n_controls=100, seed=5)
    assert res.mode == "open"
    assert res.detection.green_rate > 0.5
    assert res.log10_pvalue < -6
    assert res.controls.empirical_pvalue == pytest.approx(1 / 101)
    assert res.controls.calibrated and not res.warnings
    assert res.curve[-1][0] == res.detection.n_scored
    assert "trained on text carrying" in res.null_hypothesis


def test_open_audit_control_student_is_not_flagged(students) -> None:
    cfg = DetectorConfig(scheme="kgw", context_width=1, gamma=0.25)
    res = audit_open(students["control"], held_out_teacher(), KEY, cfg, vocab_size=V,
                     n_controls=100, seed=5)
    assert res.log10_pvalue > -3
    assert res.controls.empirical_pvalue > 0.01
    assert res.controls.ks_pvalue > 0.01


def test_windows_seen_earlier_in_a_chunk_are_skipped() -> None:
    x = np.array([[5, 6, 7, 5, 6, 9]])
    seen = seen_window_earlier(x, 2, None)
    # windows: (-1,-1) (-1,5) (5,6) (6,7) (7,5) (5,6): only the last one occurred before
    assert seen.tolist() == [[False, False, False, False, False, True]]


def test_open_audit_refuses_another_vocabulary() -> None:
    model = tiny_llama(vocab_size=1000, hidden_size=16, num_layers=1, num_heads=2)
    with pytest.raises(InputError, match="tokenizer"):
        audit_open(model, held_out_teacher(2), KEY, vocab_size=V)


# -- closed-model audit over HTTP ---------------------------------------------------------------
def _student_answer(model: torch.nn.Module, tokenizer, n_new: int = 40):
    """A deterministic 'endpoint': the student continues the prompt's last token greedily."""

    def answer(prompt: str) -> str:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1:]
        seq = list(ids)
        with torch.no_grad():
            for _ in range(n_new):
                hidden = model.get_decoder()(input_ids=torch.tensor([seq])).last_hidden_state
                logits = hidden[0, -1] @ model.get_output_embeddings().weight[SUB].T
                seq.append(int(SUB[int(torch.argmax(logits))]))
        return tokenizer.decode(seq[1:])

    return answer


def test_closed_audit_end_to_end_over_http(students, default_tokenizer, tmp_path) -> None:
    from fingerprint.audit.clients import OpenAIClient
    from fingerprint.audit.querying import audit_closed

    from .openai_stub_server import OpenAIStub

    rng = np.random.default_rng(4)
    prompts = [default_tokenizer.decode([int(t)]) for t in rng.choice(SUB, 60)]
    cfg = DetectorConfig(scheme="kgw", context_width=1, gamma=0.25)
    results = {}
    for name in ("watermarked", "control"):
        with OpenAIStub(answer=_student_answer(students[name], default_tokenizer)) as server:
            client = OpenAIClient(server.base_url, "student", mode="completions",
                                  max_retries=2, timeout=10)
            results[name] = audit_closed(client, prompts, KEY, cfg, tokenizer=default_tokenizer,
                                         checkpoint=tmp_path / f"{name}.jsonl", n_controls=50,
                                         seed=3)
    wm, ctl = results["watermarked"], results["control"]
    assert wm.mode == "closed" and wm.inputs["answers"] == 60
    assert wm.log10_pvalue < -4 and wm.detection.green_rate > 0.4
    assert ctl.log10_pvalue > -3
    assert "student" in str(wm.suspect)


def test_cli_audit_open_mode(students, default_tokenizer, tmp_path, capsys) -> None:
    import json

    from fingerprint.cli import main

    model_dir = tmp_path / "student"
    students["watermarked"].save_pretrained(model_dir)
    default_tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "teacher.jsonl"
    corpus.write_text("".join(
        json.dumps({"prompt": "p", "completion": "c", "prompt_token_ids": [],
                    "completion_token_ids": t.completion_ids}) + "\n"
        for t in held_out_teacher(120)) + "{broken\n")
    key_path = KEY.save(tmp_path / "k.key")
    out = tmp_path / "audit.json"
    assert main(["keygen", "--signing", "--out", str(tmp_path / "sign.pem")]) == 0
    assert main(["audit", "--mode", "open", "--suspect", str(model_dir), "--teacher-corpus",
                 str(corpus), "--key", str(key_path), "--context-width", "1", "--controls",
                 "30", "--seed", "7", "--out", str(out), "--report",
                 str(tmp_path / "report.json"), "--signing-key", str(tmp_path / "sign.pem")]) == 0
    from fingerprint.report.sign import verify_report

    verify_report(tmp_path / "report.json", tmp_path / "sign.pub.pem")
    assert (tmp_path / "report.html").stat().st_size > 10_000
    printed = capsys.readouterr()
    assert "REJECTED" in printed.out and "skipped teacher row" in printed.err
    data = json.loads(out.read_text())
    assert data["mode"] == "open" and data["detection"]["log10_pvalue"] < -6
    assert data["inputs"]["teacher_corpus"]["skipped_rows"] == 1
    assert len(data["inputs"]["teacher_corpus"]["sha256"]) == 64
    assert KEY.key_id == data["detection"]["key_id"]


def test_answer_windows_made_of_the_prompt_are_found_per_row() -> None:
    from fingerprint.audit.querying import _prompt_windows
    from fingerprint.core import windows

    rng = np.random.default_rng(2)
    h = 2
    prompts = [rng.integers(0, 6, n).tolist() for n in (5, 0, 1, 9)]
    x = rng.integers(0, 6, (4, 12))
    mask = np.ones(x.shape, dtype=bool)
    mask[2, 8:] = False
    got = _prompt_windows(x, mask, h, prompts)
    aw = windows(x, h, mask=mask)
    for r, p in enumerate(prompts):
        pw = {tuple(w) for w in windows(np.array([*p, 0]), h)[0]} if p else set()
        assert got[r].tolist() == [tuple(w) in pw for w in aw[r]]
    assert got.any() and not got[1].any()
