"""Audit inputs and outputs: empty results, token ids outside the vocabulary, the verdict's
significance, recorded control seeds and the number of control keys."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fingerprint.audit.controls import MIN_CONTROLS, run_controls
from fingerprint.audit.reading import TeacherText, audit_open, read_teacher
from fingerprint.cli import build_parser, main
from fingerprint.detect.detector import DetectorConfig
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey
from fingerprint.models import tiny_llama

SECRET = bytes(range(7, 39))
KEY = WatermarkKey(SECRET)
V = 49152
CFG = DetectorConfig(scheme="kgw", context_width=1, gamma=0.25)
SECRET_FORMS = (SECRET.hex(), base64.b64encode(SECRET).decode("ascii"))


def _rows(n: int, length: int = 40, seed: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (n, length)).tolist()


def _write_teacher(path: Path, rows: list[list[int]]) -> Path:
    path.write_text("".join(json.dumps({"prompt_token_ids": [],
                                        "completion_token_ids": r}) + "\n" for r in rows))
    return path


def _no_secret(*texts: str) -> None:
    for text in texts:
        for form in SECRET_FORMS:
            assert form not in text


@pytest.fixture(scope="module")
def suspect_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A tiny random suspect saved with the default tokenizer (a local model path)."""
    d = tmp_path_factory.mktemp("suspect")
    tiny_llama(seed=3, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(d)
    default_tokenizer.save_pretrained(d)
    return d


@pytest.fixture()
def work(tmp_path) -> dict[str, Path]:
    """A key file, a signing key, a teacher corpus and a prompts file in ``tmp_path``."""
    assert main(["keygen", "--signing", "--out", str(tmp_path / "sign.pem")]) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n"
                               for i in range(6)))
    return {"dir": tmp_path, "key": KEY.save(tmp_path / "k.key"),
            "sign": tmp_path / "sign.pem", "pub": tmp_path / "sign.pub.pem",
            "teacher": _write_teacher(tmp_path / "teacher.jsonl", _rows(12)),
            "prompts": prompts}


def _audit_open_args(w: dict[str, Path], suspect: Path, *extra: str) -> list[str]:
    return ["audit", "--mode", "open", "--suspect", str(suspect), "--teacher-corpus",
            str(w["teacher"]), "--key", str(w["key"]), "--context-width", "1",
            "--controls", str(MIN_CONTROLS), "--out", str(w["dir"] / "audit.json"), *extra]


# -- an audit that scores nothing -----------------------------------------------------------------
def _closed_via_stub(w: dict[str, Path], answer: Any, *extra: str, out: str = "audit.json"
                     ) -> int:
    from .openai_stub_server import OpenAIStub

    with OpenAIStub(answer=answer) as server:
        return main(["audit", "--mode", "closed", "--suspect", server.base_url,
                     "--prompts", str(w["prompts"]), "--teacher-corpus", str(w["teacher"]),
                     "--key", str(w["key"]), "--controls", str(MIN_CONTROLS), "--retries", "1",
                     "--timeout", "10", "--out", str(w["dir"] / out), *extra])


def test_audit_with_nothing_scored_says_so_and_writes_its_result(work, capsys) -> None:
    report = work["dir"] / "report.json"
    assert _closed_via_stub(work, lambda prompt: "", "--report", str(report),
                            "--signing-key", str(work["sign"])) == 0
    printed = capsys.readouterr()
    assert "NO EVIDENCE" in printed.out and "no usable answer" in printed.out
    data = json.loads((work["dir"] / "audit.json").read_text())
    assert data["detection"]["n_scored"] == 0 and data["detection"]["no_evidence"]
    assert json.loads(report.read_text())["verdict"]["decision"] == "no_evidence"
    _no_secret(printed.out, printed.err, (work["dir"] / "audit.json").read_text(),
               report.read_text())


def test_result_and_report_are_written_before_the_summary(work, suspect_dir,
                                                          monkeypatch) -> None:
    import fingerprint.cli_audit as cli_audit

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("summary failed")

    monkeypatch.setattr(cli_audit, "print_summary", broken)
    report = work["dir"] / "report.json"
    with pytest.raises(RuntimeError, match="summary failed"):
        main(_audit_open_args(work, suspect_dir, "--seed", "1", "--report", str(report)))
    assert json.loads((work["dir"] / "audit.json").read_text())["mode"] == "open"
    assert report.exists() and report.with_suffix(".html").exists()


# -- token ids outside the suspect's vocabulary ---------------------------------------------------
def test_read_teacher_skips_rows_outside_the_vocabulary(tmp_path) -> None:
    rows = _rows(4)
    rows[0][3] = V + 10
    rows[2][5] = -1
    path = _write_teacher(tmp_path / "t.jsonl", rows)
    teacher, skipped = read_teacher(path, vocab_size=V)
    assert [t.row for t in teacher] == [2, 4]
    # row 1 is beyond this vocabulary; row 3's negative id is refused by the reader already
    assert [(s.row, "outside [0, " in s.reason) for s in skipped] == [(1, True), (3, True)]
    assert "49152" in skipped[0].reason
    teacher, skipped = read_teacher(path)  # without a vocabulary: negative ids only
    assert [t.row for t in teacher] == [1, 2, 4] and [s.row for s in skipped] == [3]
    with pytest.raises(InputError, match=r"t1.jsonl holds no usable teacher text.*row 1"):
        read_teacher(_write_teacher(tmp_path / "t1.jsonl", rows[:1]), vocab_size=V)


def test_audit_open_leaves_out_texts_outside_the_vocabulary(tiny_model) -> None:
    rows = _rows(6)
    teacher = [TeacherText([], r) for r in rows]
    bad = [TeacherText([], [*rows[0][:5], V]), TeacherText([-3, 4], rows[1])]
    res = audit_open(tiny_model, teacher + bad, KEY, CFG, vocab_size=V, n_controls=MIN_CONTROLS,
                     seed=1)
    ref = audit_open(tiny_model, teacher, KEY, CFG, vocab_size=V, n_controls=MIN_CONTROLS,
                     seed=1)
    assert res.detection == ref.detection
    assert any("teacher text 6" in w and "teacher text 7" in w for w in res.warnings)
    with pytest.raises(InputError, match="no teacher text"):
        audit_open(tiny_model, bad, KEY, CFG, vocab_size=V, n_controls=MIN_CONTROLS)


def test_cli_open_audit_skips_and_lists_rows_outside_the_vocabulary(work, suspect_dir,
                                                                    capsys) -> None:
    rows = _rows(8)
    rows[0][2] = 60000
    rows[5][0] = -7
    _write_teacher(work["teacher"], rows)
    assert main(_audit_open_args(work, suspect_dir, "--seed", "2")) == 0
    err = capsys.readouterr().err
    name = work["teacher"]
    assert f"skipped teacher row {name}:1: token ids outside [0, 49152)" in err
    assert f"skipped teacher row {name}:6:" in err
    info = json.loads((work["dir"] / "audit.json").read_text())["inputs"]["teacher_corpus"]
    assert (info["texts"], info["skipped_rows"]) == (6, 2)
    _write_teacher(work["teacher"], [[1, 2, V]])
    assert main(_audit_open_args(work, suspect_dir)) == 2
    err = capsys.readouterr().err
    assert f"error: {name} holds no usable teacher text" in err and "row 1" in err
    assert "Traceback" not in err


# -- one significance for the printed verdict and the report --------------------------------------
@pytest.fixture(scope="module")
def small_audit(tiny_model) -> Any:
    teacher = [TeacherText([], r) for r in _rows(8)]
    return audit_open(tiny_model, teacher, KEY, CFG, vocab_size=V, n_controls=MIN_CONTROLS,
                      seed=4)


@pytest.mark.parametrize("log10_p", [-2.0, -3.0, -4.0, -7.0])
@pytest.mark.parametrize("significance", [1e-3, 1e-6, 0.05])
@pytest.mark.parametrize("calibrated", [True, False])
def test_printed_verdict_is_the_reports(small_audit, log10_p, significance, calibrated) -> None:
    from fingerprint.cli_audit import verdict
    from fingerprint.report.model import report_from_audit

    det = dataclasses.replace(small_audit.detection, log10_pvalue=log10_p, pvalue=10 ** log10_p)
    ctl = dataclasses.replace(small_audit.controls, calibrated=calibrated)
    res = dataclasses.replace(small_audit, detection=det, controls=ctl)
    report = report_from_audit(res, significance=significance, vocab_size=V)
    assert verdict(res, significance)[0] == report["verdict"]["decision"]


def test_cli_verdict_uses_the_significance_given(work, suspect_dir, capsys) -> None:
    from fingerprint.report.model import DEFAULT_SIGNIFICANCE

    report = work["dir"] / "report.json"
    assert build_parser().parse_args(_audit_open_args(work, suspect_dir)
                                     ).significance == DEFAULT_SIGNIFICANCE
    assert main(_audit_open_args(work, suspect_dir, "--seed", "3", "--significance", "0.999",
                                 "--report", str(report))) == 0
    out = capsys.readouterr().out
    rep = json.loads(report.read_text())["verdict"]
    assert rep["significance"] == 0.999
    words = {"reject": "REJECTED", "not_rejected": "not rejected", "inconclusive":
             "INCONCLUSIVE", "no_evidence": "NO EVIDENCE"}
    assert f"verdict at 0.999  {words[rep['decision']]}" in out
    for bad in ("0", "1", "1.5", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(_audit_open_args(work, suspect_dir, "--significance", bad))
    assert "strictly between 0 and 1" in capsys.readouterr().err


# -- a control seed always recorded --------------------------------------------------------------
def test_run_controls_draws_and_records_a_seed(small_audit) -> None:
    from fingerprint.audit.controls import ControlsResult

    assert isinstance(small_audit.controls, ControlsResult) and small_audit.controls.seed == 4
    assert small_audit.to_dict()["controls"]["seed"] == 4


def test_cli_audit_without_seed_can_be_verified(work, suspect_dir, capsys) -> None:
    from fingerprint.report.recompute import recompute_report

    rows = _rows(8)
    rows[3][1] = V + 1  # skipped by the audit, left out the same way when verified
    _write_teacher(work["teacher"], rows)
    report = work["dir"] / "report.json"
    assert main(_audit_open_args(work, suspect_dir, "--report", str(report),
                                 "--signing-key", str(work["sign"]))) == 0
    seed = json.loads((work["dir"] / "audit.json").read_text())["controls"]["seed"]
    rep = json.loads(report.read_text())
    assert isinstance(seed, int) and rep["controls"]["seed"] == seed
    assert rep["procedure"]["params"]["controls_seed"] == seed
    out = recompute_report(rep, work["dir"], work["key"], suspect=suspect_dir)
    assert out.controls_checked and not any("not recomputable" in n for n in out.notes)
    assert main(["verify", str(report), "--public-key", str(work["pub"]), "--data",
                 str(work["dir"]), "--key", str(work["key"]), "--suspect", str(suspect_dir)]
                ) == 0
    printed = capsys.readouterr()
    _no_secret(printed.out, printed.err, report.read_text())


def test_cli_closed_audit_can_be_verified(work, default_tokenizer, capsys) -> None:
    from fingerprint.report.recompute import recompute_report

    words = ["the", "cat", "sat", "on", "a", "mat", "while", "birds", "sang", "songs", "about",
             "rivers", "and", "stones"]

    def answer(prompt: str) -> str:
        n = len(prompt)
        return " ".join(words[(n + i) % len(words)] for i in range(30))

    # a teacher corpus that shares windows with the answers, so the filter phi keeps some
    _write_teacher(work["teacher"], [default_tokenizer(answer("x" * n), add_special_tokens=False)
                                     ["input_ids"] for n in range(20)])
    for i, extra in enumerate(((), ("--filter-top-n", "50"))):
        report = work["dir"] / f"report{i}.json"
        assert _closed_via_stub(work, answer, "--report", str(report), *extra,
                                out=f"audit{i}.json") == 0
        rep = json.loads(report.read_text())
        assert rep["results"]["n_scored"] > 0
        assert ("teacher" in {f["role"] for f in rep["inputs"]["files"]}) == bool(extra)
        out = recompute_report(rep, work["dir"], work["key"])
        assert out.controls_checked
    _no_secret(*capsys.readouterr())


# -- the number of control keys -------------------------------------------------------------------
@pytest.mark.parametrize("n", ["0", "1", str(MIN_CONTROLS - 1), "-5"])
def test_too_few_controls_are_refused_before_any_work(work, n, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(_audit_open_args(work, work["dir"] / "no-such-model", "--controls", n))
    assert exc.value.code == 2
    assert f"at least {MIN_CONTROLS}" in capsys.readouterr().err
    assert not (work["dir"] / "audit.json").exists()


def test_controls_minimum_is_in_the_help() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = sub.choices["audit"].format_help()  # type: ignore[attr-defined]
    assert f"at least {MIN_CONTROLS}" in " ".join(help_text.split())


def test_library_audits_refuse_zero_controls_up_front(tiny_model, default_tokenizer,
                                                      tmp_path) -> None:
    from fingerprint.audit.querying import audit_closed

    class NeverCalled:
        def identity(self) -> dict[str, Any]:
            raise AssertionError("queried")

    with pytest.raises(ConfigError, match="n_controls"):
        audit_open(tiny_model, [TeacherText([], [1, 2, 3])], KEY, CFG, vocab_size=V,
                   n_controls=0)
    with pytest.raises(ConfigError, match="n_controls"):
        audit_closed(NeverCalled(), ["p"], KEY, CFG,  # type: ignore[arg-type]
                     tokenizer=default_tokenizer, checkpoint=tmp_path / "a.jsonl", n_controls=0)
    with pytest.raises(ConfigError, match="at least one"):
        run_controls([], CFG, audit_open(tiny_model, [TeacherText([], [1, 2, 3])], KEY, CFG,
                                         vocab_size=V, n_controls=1, seed=0).detection,
                     n_keys=0)


def test_library_closed_report_naming_an_unused_teacher_recomputes(work,
                                                                   default_tokenizer) -> None:
    """As the demo does: a closed audit without the filter phi, its report given the teacher
    file among its inputs; verify must not apply the filter the audit did not use."""
    from fingerprint.audit.clients import OpenAIClient
    from fingerprint.audit.querying import audit_closed
    from fingerprint.report.model import report_from_audit
    from fingerprint.report.recompute import recompute_report

    from .openai_stub_server import OpenAIStub

    words = ["the", "cat", "sat", "on", "a", "mat", "while", "birds", "sang", "songs"]
    prompts = [f"Tell me about item {i}." for i in range(6)]
    answers = work["dir"] / "answers.jsonl"
    with OpenAIStub(answer=lambda p: " ".join(words[(len(p) + i) % 10] for i in range(30))
                    ) as server:
        res = audit_closed(OpenAIClient(server.base_url, "stub", max_retries=1), prompts, KEY,
                           CFG, tokenizer=default_tokenizer, checkpoint=answers,
                           n_controls=MIN_CONTROLS, seed=5)
    assert res.detection.n_scored > 0 and res.inputs.get("filter_phi") is None
    rep = report_from_audit(res, inputs={"teacher": work["teacher"], "prompts": work["prompts"],
                                         "answers": answers}, tokenizer=default_tokenizer,
                            tokenizer_spec="default")
    assert rep["procedure"]["params"]["teacher"] is None
    assert rep["procedure"]["params"]["controls_seed"] == 5  # the result's, not given here
    out = recompute_report(json.loads(json.dumps(rep)), work["dir"], KEY,
                           tokenizer=default_tokenizer)
    assert out.controls_checked
