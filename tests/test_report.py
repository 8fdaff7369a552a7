"""Reports: canonical JSON, Ed25519 signatures (tamper-evident field by field), recompute from
the input files, the CLI, and the HTML page rendered in a real headless browser."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fingerprint.core import get_prf
from fingerprint.detect.corpus import CorpusReader, detect_corpus
from fingerprint.detect.detector import Detector, DetectorConfig
from fingerprint.keys import WatermarkKey
from fingerprint.report.model import (
    ReportError,
    ReportFormatError,
    UnknownSchemaError,
    canonical_bytes,
    leaf_paths,
    load_report,
    parse_report_bytes,
    plain,
    report_from_audit,
    report_from_detection,
)
from fingerprint.report.recompute import (
    InputDigestError,
    NotRecomputableError,
    RecomputeMismatchError,
    detect_files,
    read_teacher,
    recompute_report,
)
from fingerprint.report.sign import (
    MissingSignatureError,
    SignatureMismatchError,
    SigningKeyError,
    WrongPublicKeyError,
    make_signing_key,
    sign_report,
    verify_report,
)

KEY = WatermarkKey(bytes(range(32)))
V = 49152
SUB = np.arange(1000, 1064)
CFG = DetectorConfig(scheme="kgw", context_width=1, gamma=0.25)
CREATED = "2025-01-31T12:00:00Z"


def walks(n: int, length: int, delta: float, seed: int) -> np.ndarray:
    """Token walks over SUB; with delta > 0 the KGW bias of KEY (h = 1) steers each step."""
    rng = np.random.default_rng(seed)
    green = get_prf("siphash24-v1", KEY, "kgw").row(SUB[:, None], V)[:, SUB] < 0.25
    probs = np.exp(delta * green)
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    out = np.empty((n, length), dtype=np.int64)
    cur = rng.integers(0, len(SUB), n)
    out[:, 0] = cur
    for j in range(1, length):
        cur = np.minimum((cum[cur] < rng.random((n, 1))).sum(axis=1), len(SUB) - 1)
        out[:, j] = cur
    return SUB[out]


def write_jsonl(path: Path, rows: np.ndarray, prompt_len: int = 2) -> Path:
    with path.open("w") as f:
        for row in rows.tolist():
            f.write(json.dumps({"prompt_token_ids": row[:prompt_len],
                                "completion_token_ids": row[prompt_len:]}) + "\n")
    return path


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    other = make_signing_key(d / "other.pem")
    return {"private": d / "signing.pem", "public": make_signing_key(d / "signing.pem"),
            "other_public": other}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "corpus.jsonl", walks(40, 42, 1.0, seed=0))
    write_jsonl(d / "teacher.jsonl", walks(60, 33, 3.0, seed=99), prompt_len=0)
    return d


@pytest.fixture(scope="module")
def detection(data_dir, default_tokenizer) -> Any:
    return detect_files(KEY, [data_dir / "corpus.jsonl"], CFG, tokenizer=default_tokenizer,
                        n_controls=20, controls_seed=11, flush_records=8, flag_tokens=40)


@pytest.fixture(scope="module")
def signed(detection, keys) -> dict[str, Any]:
    report = report_from_detection(detection, created_at=CREATED)
    return sign_report(report, keys["private"])


@pytest.fixture()
def signed_file(signed, tmp_path) -> Path:
    path = tmp_path / "report.json"
    path.write_bytes(canonical_bytes(signed))
    return path


# -- canonical form -----------------------------------------------------------------------------
def test_canonical_bytes_are_deterministic_and_strict(signed) -> None:
    data = canonical_bytes(signed)
    assert canonical_bytes(json.loads(data)) == data
    assert canonical_bytes(copy.deepcopy(signed)) == data
    assert data == json.dumps(signed, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    assert canonical_bytes({"b": 0.1, "a": [1.0, 1e-300, "é"]}) == \
        '{"a":[1.0,1e-300,"é"],"b":0.1}'.encode()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ReportFormatError, match="NaN and Infinity"):
            canonical_bytes({"x": {"y": bad}})
    assert plain({"z": math.nan, "i": -math.inf, "t": (1, np.float64(2.5))}) == \
        {"z": "NaN", "i": "-Infinity", "t": [1, 2.5]}
    with pytest.raises(ReportFormatError):
        canonical_bytes({"x": np.float32(1.0)})


def test_report_contents(signed, detection) -> None:
    r = signed
    assert r["schema"] == "fingerprint-report/1" and r["kind"] == "detection"
    assert r["key"] == {"key_id": KEY.key_id}
    assert "secret" not in json.dumps(r)
    assert r["verdict"]["decision"] == "reject"
    assert KEY.key_id in r["hypotheses"]["null"] and r["hypotheses"]["alternative"]
    t = r["test"]
    assert (t["scheme"], t["gamma"], t["context_width"], t["prf"], t["prf_version"]) == \
        ("kgw", 0.25, 1, "siphash24-v1", "v1")
    assert t["dedup"] == "tuple" and t["controls"] == {"n_keys": 20, "seed": 11}
    res = r["results"]
    assert res["n_scored"] == detection.result.n_scored > 0
    ci = res["green_rate_ci95"]
    assert ci["low"] < res["green_rate"] < ci["high"] and ci["confidence"] == 0.95
    assert [f["name"] for f in r["inputs"]["files"]] == ["corpus.jsonl"]
    assert len(r["inputs"]["files"][0]["sha256"]) == 64
    assert r["controls"]["seed"] == 11 and len(r["controls"]["statistics"]) == 20
    assert r["curve"]["points"][-1][0] == res["n_scored"] and len(r["curve"]["points"]) == 5
    assert len(r["token_flags"]["sample"]) == 40 and "text" in r["token_flags"]["sample"][0]
    assert set(r["environment"]["packages"]) >= {"fingerprint", "numpy", "scipy", "torch",
                                                 "transformers", "numba"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["created_at"])


# -- signatures ---------------------------------------------------------------------------------
def test_sign_and_verify_round_trip(signed_file, keys) -> None:
    res = verify_report(signed_file, keys["public"])
    assert res.ok and res.kind == "detection" and res.key_id == KEY.key_id
    assert res.public_key_sha256 == load_report(signed_file)["signature"]["public_key_sha256"]
    assert "rejected" in res.verdict


def _tampered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return math.nextafter(value, math.inf)  # the smallest possible change
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 0
    if isinstance(value, list):
        return [0]
    return {"x": 0}


def _set(obj: Any, keys: list[str | int], value: Any) -> None:
    for k in keys[:-1]:
        obj = obj[k]
    obj[keys[-1]] = value


def test_every_field_is_tamper_evident(signed, keys) -> None:
    paths = list(leaf_paths(signed))
    assert len(paths) > 300
    for path, keylist in paths:
        bad = copy.deepcopy(signed)
        _set(bad, keylist, _tampered(_get(signed, keylist)))
        with pytest.raises(ReportError) as info:
            verify_report(canonical_bytes(bad), keys["public"])
        err = info.value
        if isinstance(err, SignatureMismatchError) and not path.startswith("signature"):
            assert path.startswith(err.part) or err.part.startswith(path), (path, err.part)
            assert err.part in str(err)


def _get(obj: Any, keys: list[str | int]) -> Any:
    for k in keys:
        obj = obj[k]
    return obj


def test_failures_name_the_failing_part(signed, keys) -> None:
    bad = copy.deepcopy(signed)
    bad["results"]["log10_pvalue"] += 1.0
    with pytest.raises(SignatureMismatchError, match=r"results\.log10_pvalue") as info:
        verify_report(bad, keys["public"])
    assert info.value.part == "results.log10_pvalue"

    bad = copy.deepcopy(signed)
    bad["inputs"]["files"][0]["sha256"] = "0" * 64
    with pytest.raises(SignatureMismatchError, match=r"inputs\.files"):
        verify_report(bad, keys["public"])

    bad = copy.deepcopy(signed)
    bad["extra"] = 1
    with pytest.raises(SignatureMismatchError, match=r"extra \(added\)"):
        verify_report(bad, keys["public"])

    bad = copy.deepcopy(signed)
    del bad["notes"]
    with pytest.raises(SignatureMismatchError, match=r"notes \(removed\)"):
        verify_report(bad, keys["public"])

    bad = copy.deepcopy(signed)
    value = bytearray(__import__("base64").b64decode(bad["signature"]["value"]))
    value[5] ^= 1
    bad["signature"]["value"] = __import__("base64").b64encode(bytes(value)).decode()
    with pytest.raises(SignatureMismatchError, match="signature itself") as info:
        verify_report(bad, keys["public"])
    assert info.value.part == "signature.value"

    bad = copy.deepcopy(signed)
    bad["signature"]["field_sha256"]["results"] = "0" * 64
    with pytest.raises(SignatureMismatchError) as info:
        verify_report(bad, keys["public"])
    assert info.value.part == "signature.field_sha256"

    with pytest.raises(WrongPublicKeyError, match="signed by key sha256:") as info:
        verify_report(signed, keys["other_public"])
    assert info.value.part == "signature.public_key_sha256"

    unsigned = {k: v for k, v in signed.items() if k != "signature"}
    with pytest.raises(MissingSignatureError, match="not signed"):
        verify_report(unsigned, keys["public"])

    newer = {**copy.deepcopy(signed), "schema": "fingerprint-report/2"}
    with pytest.raises(UnknownSchemaError, match="fingerprint-report/2"):
        verify_report(newer, keys["public"])
    res = verify_report(newer, keys["public"], raise_errors=False)
    assert not res.ok and res.part == "schema" and res.error_type == "UnknownSchemaError"


def _reordered(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _reordered(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reordered(v) for v in obj]
    return obj


def test_reordered_and_reencoded_files_verify_changed_values_do_not(signed, keys,
                                                                      tmp_path) -> None:
    path = tmp_path / "pretty.json"
    text = json.dumps(_reordered(signed), indent=3, ensure_ascii=True)
    assert text != canonical_bytes(signed).decode()
    path.write_text(text.replace('"significance": 0.001', '"significance": 1.0e-3'))
    assert '"significance": 1.0e-3' in path.read_text()
    assert verify_report(path, keys["public"]).ok
    path.write_bytes(b"\xef\xbb\xbf" + canonical_bytes(signed) + b"\r\n")  # BOM, CRLF
    assert verify_report(path, keys["public"]).ok
    # an integer written as a float is another value: it fails
    n = signed["results"]["n_scored"]
    path.write_text(text.replace(f'"n_scored": {n}', f'"n_scored": {n}.0', 1))
    with pytest.raises(SignatureMismatchError, match=r"results\.n_scored"):
        verify_report(path, keys["public"])


def test_truncated_and_malformed_files_are_refused(signed_file, keys, tmp_path) -> None:
    data = signed_file.read_bytes()
    bad = tmp_path / "bad.json"
    cases = [(data[: len(data) // 2], "truncated"), (b"", "empty"), (b"\xff\xfe{}", "UTF-8"),
             (b"[1, 2]", "not a JSON object"), (b'{"a": 1, "a": 2}', "appears twice"),
             (b'{"a": NaN}', "NaN"), (b"garbage", "not valid JSON")]
    for content, message in cases:
        bad.write_bytes(content)
        with pytest.raises(ReportFormatError, match=message):
            verify_report(bad, keys["public"])
    with pytest.raises(ReportFormatError, match="does not exist"):
        verify_report(tmp_path / "missing.json", keys["public"])


def test_signing_key_files(tmp_path) -> None:
    pub = make_signing_key(tmp_path / "k.pem")
    assert pub == tmp_path / "k.pub.pem" and pub.read_text().startswith("-----BEGIN PUBLIC")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    with pytest.raises(SigningKeyError, match="already exists"):
        make_signing_key(tmp_path / "k.pem")
    os.chmod(tmp_path / "k.pem", 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        sign_report({"schema": "fingerprint-report/1"}, tmp_path / "k.pem")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        verify_report({"schema": "fingerprint-report/1", "signature": {
            "algorithm": "ed25519", "canonicalization": "fingerprint-canonical-json/1",
            "public_key_sha256": "", "value": "", "field_sha256": {}}}, tmp_path / "k.pem")


# -- recompute ----------------------------------------------------------------------------------
def test_recompute_detection_report_matches(signed, data_dir) -> None:
    res = recompute_report(signed, data_dir, KEY)
    assert res.procedure == "detect_files" and res.controls_checked
    assert {"results.statistic", "results.n_green", "results.log10_pvalue", "curve.points",
            "controls.statistics"} <= set(res.checked)
    # the same numbers as the plain detector over the same token ids
    rows = [json.loads(line) for line in (data_dir / "corpus.jsonl").read_text().splitlines()]
    direct = Detector(KEY, CFG).detect([r["completion_token_ids"] for r in rows],
                                       prompts=[r["prompt_token_ids"] for r in rows])
    assert (direct.n_scored, direct.n_green) == (signed["results"]["n_scored"],
                                                 signed["results"]["n_green"])
    assert direct.log10_pvalue == pytest.approx(signed["results"]["log10_pvalue"], rel=1e-12)


def test_recompute_detect_corpus_report(data_dir) -> None:
    det = Detector(KEY, DetectorConfig(scheme="gumbel", context_width=1))
    result, _ = detect_corpus(det, CorpusReader([data_dir / "corpus.jsonl"]))
    report = report_from_detection(result, inputs={"corpus": data_dir / "corpus.jsonl"})
    assert report["test"]["gumbel_variant"] == "gumbel" and report["controls"] is None
    res = recompute_report(report, data_dir, KEY)
    assert res.procedure == "detect_corpus" and "results.score_sum" in res.checked


def test_recompute_refuses_altered_inputs_wrong_key_and_wrong_numbers(signed, data_dir,
                                                                      tmp_path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    with pytest.raises(InputDigestError, match="does not exist"):
        recompute_report(signed, tmp_path / "nowhere", KEY)
    (d / "corpus.jsonl").write_bytes((d / "corpus.jsonl").read_bytes().replace(b"1", b"2", 1))
    with pytest.raises(InputDigestError, match=r"corpus\.jsonl \(corpus\) is not the file") \
            as info:
        recompute_report(signed, d, KEY)
    assert info.value.part == "inputs.files[0].sha256"
    (d / "corpus.jsonl").unlink()
    with pytest.raises(InputDigestError, match=r"corpus\.jsonl \(corpus\) is not in"):
        recompute_report(signed, d, KEY)
    with pytest.raises(RecomputeMismatchError, match=r"key\.key_id") as info:
        recompute_report(signed, data_dir, WatermarkKey(bytes(32)))
    assert info.value.part == "key.key_id"
    wrong = copy.deepcopy(signed)
    wrong["results"]["n_green"] += 1
    with pytest.raises(RecomputeMismatchError, match=r"results\.n_green") as info:
        recompute_report(wrong, data_dir, KEY)
    assert info.value.part == "results.n_green"
    wrong = copy.deepcopy(signed)
    wrong["controls"]["statistics"][3] += 1.0
    with pytest.raises(RecomputeMismatchError, match=r"controls\.statistics"):
        recompute_report(wrong, data_dir, KEY)


class _TinyClient:
    """A deterministic suspect: answers echo the prompt's words backwards; prompt 3 fails."""

    def identity(self) -> dict[str, Any]:
        return {"kind": "test", "model": "echo-backwards", "base_url": "http://127.0.0.1:9"}

    def query(self, prompts: list[tuple[int, str]]) -> Iterator[Any]:
        from fingerprint.audit.clients import Answer

        for i, p in prompts:
            if i == 3:
                yield Answer(i, p, "", None, 3, "HTTP 500 after 3 attempts")
            else:
                yield Answer(i, p, " ".join(reversed(p.split())) + " and so it goes on.",
                             "stop", 1)


def test_recompute_closed_audit_from_the_answers_checkpoint(default_tokenizer, data_dir, keys,
                                                            tmp_path) -> None:
    from fingerprint.audit.querying import audit_closed
    from fingerprint.watermark.generate import read_prompts

    src = Path(__file__).parents[1] / "fingerprint" / "data" / "prompts.jsonl"
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(src.read_text().splitlines(keepends=True)[:12]))
    prompts = [p.prompt for p in read_prompts(prompts_file)[0]]
    answers = tmp_path / "answers.jsonl"
    shutil.copy(data_dir / "teacher.jsonl", tmp_path / "teacher.jsonl")
    res = audit_closed(_TinyClient(), prompts, KEY, CFG, tokenizer=default_tokenizer,
                       checkpoint=answers, teacher=read_teacher(tmp_path / "teacher.jsonl"),
                       n_controls=20, seed=3)
    report = report_from_audit(res, inputs={"prompts": prompts_file, "answers": answers,
                                            "teacher": tmp_path / "teacher.jsonl"},
                               tokenizer=default_tokenizer, tokenizer_spec="default",
                               controls_seed=3)
    assert report["kind"] == "audit" and report["test"]["mode"] == "closed"
    assert report["suspect"]["model"] == "echo-backwards"
    assert "answers_last_written" in report["suspect"]
    assert report["inputs"]["details"]["failed_queries"][0]["index"] == 3
    assert {f["role"] for f in report["inputs"]["files"]} == {"prompts", "answers", "teacher"}
    signed = sign_report(report, keys["private"])
    out = recompute_report(signed, tmp_path, KEY)
    assert out.procedure == "audit_closed" and out.controls_checked
    assert "inputs.details.failed_queries" in out.checked
    assert answers.read_bytes() == (tmp_path / "answers.jsonl").read_bytes()


def test_recompute_open_audit_needs_the_suspect(tiny_model, data_dir, tmp_path) -> None:
    from fingerprint.audit.reading import audit_open

    teacher = read_teacher(data_dir / "teacher.jsonl")
    res = audit_open(tiny_model, teacher[:20], KEY, CFG, vocab_size=V, n_controls=10, seed=5,
                     batch_tokens=1024, max_length=64)
    path = tmp_path / "teacher.jsonl"
    path.write_text("".join((data_dir / "teacher.jsonl").read_text()
                            .splitlines(keepends=True)[:20]))
    report = report_from_audit(res, inputs={"teacher": path}, vocab_size=V, batch_tokens=1024,
                               suspect_model=tiny_model, controls_seed=5)
    assert len(report["suspect"]["model_sha256"]) == 64
    with pytest.raises(NotRecomputableError, match="without the suspect's weights"):
        recompute_report(report, tmp_path, KEY)
    out = recompute_report(report, tmp_path, KEY, suspect=tiny_model)
    assert out.procedure == "audit_open" and out.controls_checked


# -- command line -------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    from fingerprint.cli_report import add_parsers

    parser = argparse.ArgumentParser(prog="fingerprint")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen")
    keygen.add_argument("--out", required=True)
    keygen.add_argument("--from-int", type=int, default=None)
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=lambda args: 42)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_keygen_sign_verify_render(detection, data_dir, tmp_path, capsys) -> None:
    kp = tmp_path / "signer.pem"
    assert _cli(["keygen", "--out", str(tmp_path / "plain.json")]) == 42
    assert _cli(["keygen", "--signing", "--out", str(kp)]) == 0
    pub = tmp_path / "signer.pub.pem"
    assert pub.exists() and "public key sha256:" in capsys.readouterr().out
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps(report_from_detection(detection)))
    report = tmp_path / "report.json"
    assert _cli(["report", "sign", str(unsigned), "--signing-key", str(kp),
                 "--out", str(report)]) == 0
    key_file = KEY.save(tmp_path / "wm.key")
    assert _cli(["verify", str(report), "--public-key", str(pub)]) == 0
    assert "signature OK" in capsys.readouterr().out
    assert _cli(["verify", str(report), "--public-key", str(pub), "--data", str(data_dir),
                 "--key", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 matches" in out and "values match" in out
    assert _cli(["verify", str(unsigned), "--public-key", str(pub)]) == 1
    assert "FAILED at signature" in capsys.readouterr().err
    tampered = load_report(report)
    tampered["results"]["n_scored"] += 1
    report.write_text(json.dumps(tampered))
    assert _cli(["verify", str(report), "--public-key", str(pub)]) == 1
    assert "FAILED at results.n_scored" in capsys.readouterr().err
    html = tmp_path / "r.html"
    assert _cli(["report", "render", str(unsigned), "--out", str(html)]) == 0
    assert "not signed" in html.read_text()


# -- HTML in a real browser ---------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browse(html: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI: apt-get install -y chromium")
        pytest.skip("no chromium/chrome found (apt-get install chromium)")
    assert exe is not None
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-default-apps", "--disable-extensions", "--mute-audio",
           "--disable-dev-shm-usage",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp / 'profile'}",
           "--hide-scrollbars", "--window-size=1100,1600", *extra, html.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_html_report_in_headless_chromium(signed, keys, tmp_path) -> None:
    from matplotlib import image

    from fingerprint.report.html import write_html

    html = write_html(signed, tmp_path / "report.html", public_key=keys["public"])
    text = html.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    shot = tmp_path / "shot.png"
    run = _browse(html, tmp_path, "--dump-dom", f"--screenshot={shot}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    dom = run.stdout
    assert 'id="verdict-sentence"' in dom and "is rejected at significance level" in dom
    assert signed["hypotheses"]["null"] in dom
    assert "Signature valid" in dom
    srcs = re.findall(r'<img[^>]*src="(data:image/png;base64,[^"]+)"', dom)
    assert len(srcs) == 2 and all(len(s) > 10_000 for s in srcs)
    assert dom.count('class="tok-green"') + dom.count('class="tok-red"') > 10
    assert signed["inputs"]["files"][0]["sha256"] in dom
    pixels = image.imread(str(shot))
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page


def test_console_scan_sees_a_blocked_request(tmp_path) -> None:
    """The scan above would catch a page that tries to reach the network (blocked by CSP)."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    "content=\"default-src 'none'; img-src data:\"></head><body>"
                    '<img src="http://192.0.2.1/x.png"></body></html>')
    run = _browse(page, tmp_path, "--dump-dom")
    assert run.returncode == 0
    assert any("Content Security Policy" in line for line in _console(run.stderr))


def test_parse_round_trip_of_every_number(signed) -> None:
    data = canonical_bytes(signed)
    back = parse_report_bytes(data)
    for path, keylist in leaf_paths(signed):
        a, b = _get(signed, keylist), _get(back, keylist)
        assert type(a) is type(b) and a == b, path
