"""The command line on bad arguments and files: a one-line error and exit code 2 before any work,
never a traceback, never a result written over a key file, and calibration refusing no data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from fingerprint.cli import main
from fingerprint.cli_output import check_output, holds_secret, write_output
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey

SECRET = bytes(range(32))
KEY = WatermarkKey(SECRET)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"token_ids": rng.integers(0, 49152, 60).tolist()}) + "\n"
                            for _ in range(30)))
    return path


@pytest.fixture()
def key_file(tmp_path) -> Path:
    return KEY.save(tmp_path / "wm.key")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err


def test_output_paths_are_checked_before_the_run(corpus, key_file, tmp_path, capsys) -> None:
    missing = tmp_path / "no" / "such" / "r.json"
    code, out, err = _run(["detect", str(corpus), "--key", str(key_file), "--quiet",
                           "--out", str(missing)], capsys)
    assert code == 2 and "folder" in err and str(missing.parent) in err
    assert "key id" not in out  # refused before scoring, not after
    code, _, err = _run(["detect", str(corpus), "--key", str(key_file), "--quiet",
                         "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err
    code, _, err = _run(["keygen", "--out", str(tmp_path), "--force"], capsys)
    assert code == 2 and "is a folder" in err
    code, _, err = _run(["calibrate", str(corpus), "--n-keys", "20", "--out", str(missing)],
                        capsys)
    assert code == 2 and "folder" in err


def test_results_never_replace_a_key_file(corpus, key_file, tmp_path, capsys) -> None:
    before = key_file.read_bytes()
    code, _, err = _run(["detect", str(corpus), "--key", str(key_file), "--quiet",
                         "--out", str(key_file)], capsys)
    assert code == 2 and "secret key file" in err
    assert key_file.read_bytes() == before
    pem = tmp_path / "signer.pem"
    assert main(["keygen", "--signing", "--out", str(pem)]) == 0
    capsys.readouterr()
    pem_bytes = pem.read_bytes()
    code, _, err = _run(["calibrate", str(corpus), "--n-keys", "20", "--out", str(pem)], capsys)
    assert code == 2 and "secret key file" in err and pem.read_bytes() == pem_bytes
    assert holds_secret(key_file) and holds_secret(pem)
    assert not holds_secret(corpus) and not holds_secret(tmp_path / "absent")
    # keygen --force may replace a key: that is what it is asked to do
    assert main(["keygen", "--out", str(key_file), "--force"]) == 0
    assert key_file.read_bytes() != before


def test_write_output_is_whole_and_keeps_the_old_file_on_refusal(tmp_path) -> None:
    path = write_output(tmp_path / "r.json", "{}")
    assert path.read_text() == "{}" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(ConfigError, match="is a folder"):
        write_output(tmp_path, "{}")
    assert check_output(None) is None


def test_an_unreadable_input_is_an_error_not_a_traceback(tmp_path, key_file, capsys) -> None:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    code, _, err = _run(["detect", str(folder), "--key", str(key_file), "--quiet"], capsys)
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_a_bad_tokenizer_stops_the_run_instead_of_skipping_every_row(tmp_path, key_file,
                                                                      capsys) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_text("".join(json.dumps({"text": f"some text {i}"}) + "\n" for i in range(5)))
    empty = tmp_path / "tok"
    empty.mkdir()
    for spec, says in ((str(tmp_path / "nowhere"), "not a local path"),
                       (str(empty), "cannot load a tokenizer"),
                       (str(key_file), "cannot load a tokenizer")):
        code, out, err = _run(["detect", str(texts), "--key", str(key_file), "--quiet",
                               "--tokenizer", spec], capsys)
        assert code == 2 and says in err and "skipped" not in err and "key id" not in out
        assert SECRET.hex() not in err and base64.b64encode(SECRET).decode() not in err


def test_every_row_skipped_is_a_usage_error(tmp_path, key_file, capsys) -> None:
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(json.dumps({"tokens": [1, 2, 3, 4]}) + "\n" for _ in range(3)))
    out_file = tmp_path / "r.json"
    code, _, err = _run(["detect", str(wrong), "--key", str(key_file), "--quiet",
                         "--out", str(out_file)], capsys)
    assert code == 2 and "every row with data was skipped (3)" in err
    assert len(json.loads(out_file.read_text())["skipped"]) == 3  # the result is still written
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, _ = _run(["detect", str(empty), "--key", str(key_file), "--quiet"], capsys)
    assert code == 0 and "no evidence" in out


def test_calibrate_refuses_no_data_and_bad_options_before_scoring(tmp_path, corpus,
                                                                  capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, err = _run(["calibrate", str(empty), "--n-keys", "20", "--quiet"], capsys)
    assert code == 2 and "nothing to calibrate on" in err and "calibrated" not in out
    code, out, err = _run(["calibrate", str(empty), "--n-keys", "20", "--quiet",
                           "--engine", "stream"], capsys)
    assert code == 2 and "nothing to calibrate on" in err
    for opts, says in ((["--alpha-levels", "1.5"], "--alpha-levels"),
                       (["--n-keys", "1"], "--n-keys"), (["--prf", "nope"], "unknown PRF")):
        code, out, err = _run(["calibrate", str(corpus), "--quiet", *opts], capsys)
        assert code == 2 and says in err and "random keys" not in out


@pytest.mark.parametrize("engine", [[], ["--engine", "stream"]])
def test_calibrate_seed_reproduces_and_records_skips(tmp_path, corpus, engine, capsys) -> None:
    with corpus.open("a") as f:
        f.write("{broken\n")
    runs = []
    for name in ("a.json", "b.json"):
        out = tmp_path / name
        assert main(["calibrate", str(corpus), "--n-keys", "30", "--seed", "7", "--quiet",
                     "--out", str(out), *engine]) in (0, 1)
        runs.append(json.loads(out.read_text()))
    capsys.readouterr()
    assert runs[0]["log10_pvalues"] == runs[1]["log10_pvalues"]
    assert [s["row"] for s in runs[0]["skipped"]] == [31]


def test_prf_aliases_are_recorded_by_their_versioned_name(corpus, key_file, tmp_path,
                                                          capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["detect", str(corpus), "--key", str(key_file), "--quiet", "--prf", "philox",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text())["config"]["prf"] == "philox4x32-10-v1"


def test_verify_and_render_usage_errors(tmp_path, key_file, capsys) -> None:
    pem = tmp_path / "s.pem"
    assert main(["keygen", "--signing", "--out", str(pem)]) == 0
    pub = tmp_path / "s.pub.pem"
    report = tmp_path / "missing.json"
    code, _, err = _run(["verify", str(report), "--public-key", str(pub)], capsys)
    assert code == 2 and "does not exist" in err
    report.write_text("{}")
    code, _, err = _run(["verify", str(report), "--public-key", str(tmp_path / "no.pem")],
                        capsys)
    assert code == 2 and "--public-key" in err
    code, _, err = _run(["verify", str(report), "--public-key", str(pub), "--data",
                         str(tmp_path), "--key", str(key_file), "--int-key", "42"], capsys)
    assert code == 2 and "not both" in err
    code, _, err = _run(["verify", str(report), "--public-key", str(pub), "--key",
                         str(key_file)], capsys)
    assert code == 2 and "--data" in err
    code, _, err = _run(["report", "render", str(report), "--out", str(tmp_path / "r.html"),
                         "--public-key", str(tmp_path / "no.pem")], capsys)
    assert code == 2 and "--public-key" in err and not (tmp_path / "r.html").exists()


def test_audit_refuses_its_outputs_before_loading_anything(tmp_path, key_file, capsys) -> None:
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text(json.dumps({"completion_token_ids": [1, 2, 3]}) + "\n")
    base = ["audit", "--mode", "open", "--suspect", str(tmp_path / "no-model"),
            "--teacher-corpus", str(teacher), "--key", str(key_file)]
    code, _, err = _run([*base, "--out", str(key_file)], capsys)
    assert code == 2 and "secret key file" in err
    code, _, err = _run([*base, "--out", str(tmp_path / "a.json"), "--report",
                         str(tmp_path / "missing" / "r.json")], capsys)
    assert code == 2 and "--report" in err and "does not exist" in err
