"""The README's main job, at a tiny budget: every step runs and every report verifies."""

from __future__ import annotations

import json

from fingerprint.demo import run_demo, shipped_prompts


def test_shipped_prompts() -> None:
    prompts = shipped_prompts()
    assert len(prompts) >= 100 and all(isinstance(p, str) and p.strip() for p in prompts)


def test_demo_runs_end_to_end(tmp_path, capsys) -> None:
    from fingerprint.report.sign import verify_report

    run_demo(tmp_path, n_prompts=4, max_new_tokens=8, student_steps=3, controls=5)
    out = capsys.readouterr().out
    assert "reports written, signed and verified" in out
    reports = sorted(tmp_path.glob("report_*.json"))
    assert len(reports) == 4 and len(list(tmp_path.glob("report_*.html"))) == 4
    for path in reports:
        verify_report(path, tmp_path / "signing.pub.pem")
        data = json.loads(path.read_text())
        assert "secret" not in path.read_text()
        assert data["schema"].startswith("fingerprint-report/")
    assert oct((tmp_path / "watermark.key").stat().st_mode & 0o777) == "0o600"
    first_key = (tmp_path / "watermark.key").read_bytes()
    # a second run into the same folder starts afresh: new key, new students, new answers
    run_demo(tmp_path, n_prompts=4, max_new_tokens=8, student_steps=3, controls=5)
    assert "reports written, signed and verified" in capsys.readouterr().out
    assert (tmp_path / "watermark.key").read_bytes() != first_key
    for path in sorted(tmp_path.glob("report_*.json")):
        verify_report(path, tmp_path / "signing.pub.pem")
