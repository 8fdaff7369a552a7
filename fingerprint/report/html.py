"""Render a report as one self-contained HTML file.

Plots are matplotlib PNGs embedded as ``data:`` URIs; styles are inline; there is no script, no
font and no request to any server (a Content-Security-Policy in the page forbids them), so the
file can be mailed, archived and opened offline. The page shows the verdict with the exact null
hypothesis, log10 p against tuples scored, the control keys' statistics with the real key
marked, the green rate with its confidence interval, a sample of highlighted tokens, the
configuration, the input digests and the signature status.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fingerprint.errors import FingerprintError
from fingerprint.report.model import (
    ReportError,
    as_float,
    check_structure,
    format_pvalue,
    load_report,
)

TEMPLATE = "report.html.j2"
INK = "#1f2933"
ACCENT = "#2563eb"
REAL = "#c2410c"
GRID = "#e4e7eb"
HEADLINES: dict[tuple[str, str], str] = {
    ("detection", "reject"): "Watermark detected",
    ("detection", "not_rejected"): "No significant evidence of the watermark",
    ("audit", "reject"): "The suspect model carries the watermark's trace",
    ("audit", "not_rejected"): "No significant evidence that the suspect learned from "
                               "watermarked text",
}


class RenderError(ReportError):
    """A report that cannot be rendered (missing plotting or template libraries included)."""


def _imports() -> tuple[Any, Any]:
    try:
        import jinja2
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise RenderError("rendering reports needs matplotlib and jinja2: pip install "
                          "'fingerprint[report]'") from err
    return jinja2, Figure


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax: Any) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa5b1")
    ax.tick_params(colors=INK, labelsize=9)


def curve_plot(report: Mapping[str, Any]) -> str | None:
    """log10 p against tuples scored, with the significance threshold; a PNG data URI."""
    points = (report.get("curve") or {}).get("points") or []
    if not points:
        return None
    _, Figure = _imports()
    xs = [0] + [int(p[0]) for p in points]
    ys = [0.0] + [as_float(p[1]) for p in points]
    fig = Figure(figsize=(6.4, 3.3), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(xs, ys, color=ACCENT, linewidth=2, marker="o", markersize=3.5)
    threshold = report["verdict"].get("log10_threshold")
    if threshold is not None:
        ax.axhline(threshold, color=REAL, linestyle="--", linewidth=1.2,
                   label=f"significance {report['verdict']['significance']:g}")
        ax.legend(frameon=False, fontsize=9, loc="lower left")
    ax.set_xlabel("tuples scored", color=INK, fontsize=10)
    ax.set_ylabel("log10 p", color=INK, fontsize=10)
    ax.set_xlim(left=0)
    _style(ax)
    return _png(fig)


def controls_plot(report: Mapping[str, Any]) -> str | None:
    """A histogram of the control keys' statistics with the real key's marked."""
    ctl = report.get("controls")
    if not ctl or not ctl.get("statistics"):
        return None
    _, Figure = _imports()
    values = [as_float(v) for v in ctl["statistics"]]
    real = as_float(report["results"]["statistic"])
    fig = Figure(figsize=(6.4, 3.3), layout="constrained")
    ax = fig.add_subplot()
    c_lo, c_hi = min(values), max(values)
    c_span = c_hi - c_lo or max(1.0, abs(c_hi) * 0.01)
    bins = max(10, min(40, int(math.sqrt(len(values)) * 3)))
    edges = [c_lo - 0.02 * c_span + i * 1.04 * c_span / bins for i in range(bins + 1)]
    ax.hist(values, bins=edges, color="#9fb3c8", edgecolor="white",
            label=f"{len(values)} random control keys")
    far = real > c_hi + 2.5 * c_span or real < c_lo - 2.5 * c_span
    if far:  # keep the controls readable; point at the real key, off scale
        right = real > c_hi
        ax.set_xlim(c_lo - 0.15 * c_span, c_hi + 1.2 * c_span) if right else \
            ax.set_xlim(c_lo - 1.2 * c_span, c_hi + 0.15 * c_span)
        x_edge = c_hi + 1.15 * c_span if right else c_lo - 1.15 * c_span
        ax.axvline(x_edge, color=REAL, linewidth=2.2, label="the real key (off scale)")
        ax.annotate(f"real key: {real:.6g} {'→' if right else '←'}", xy=(x_edge, 0.5),
                    xycoords=("data", "axes fraction"), ha="right" if right else "left",
                    va="center", color=REAL, fontsize=9, rotation=90)
    else:
        lo, hi = min(c_lo, real), max(c_hi, real)
        span = hi - lo or 1.0
        ax.axvline(real, color=REAL, linewidth=2.2, label="the real key")
        ax.set_xlim(lo - 0.08 * span, hi + 0.08 * span)
    scheme = report["test"].get("scheme")
    ax.set_xlabel("green tuples (statistic)" if scheme == "kgw" else "score (statistic)",
                  color=INK, fontsize=10)
    ax.set_ylabel("control keys", color=INK, fontsize=10)
    ax.legend(frameon=False, fontsize=9, loc="upper center")
    _style(ax)
    return _png(fig)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping) and obj:
        for k in sorted(obj):
            rows.extend(_flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(v, Mapping) for v in obj):
        for i, v in enumerate(obj):
            rows.extend(_flatten(v, f"{prefix}[{i}]"))
    else:
        rows.append((prefix, _show(obj)))
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) or "—"
    return str(value)


def _token_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    flags = (report.get("token_flags") or {}).get("sample") or []
    rows: list[dict[str, Any]] = []
    for item in flags:
        where = f"{item.get('source', '')} row {item.get('row', '')}".strip()
        if not rows or rows[-1]["where"] != where:
            rows.append({"where": where, "tokens": []})
        text = item.get("text")
        shown = text if isinstance(text, str) and text != "" else f"⟨{item.get('token')}⟩"
        shown = shown.replace("\n", "↵\n")
        if not item.get("scored"):
            cls, title = "tok-skip", "not scored (repeat or prompt)"
        elif "green" in item:
            cls = "tok-green" if item["green"] else "tok-red"
            title = "green" if item["green"] else "red"
        else:
            score = as_float(item.get("score", 0.0))
            cls = "tok-green" if score > math.log(2.0) else "tok-red"
            title = f"score {score:.3f}"
        rows[-1]["tokens"].append({"text": shown, "cls": cls,
                                   "title": f"token {item.get('token')}: {title}"})
    return rows


def signature_status(report: Mapping[str, Any], public_key: str | os.PathLike[str] | None
                     ) -> dict[str, str]:
    """The signature's state for display: ``state`` (valid, invalid, unchecked, unsigned)."""
    sig = report.get("signature")
    if public_key is not None:
        from fingerprint.report.sign import verify_report

        try:
            res = verify_report(dict(report), public_key)
        except FingerprintError as err:
            return {"state": "invalid", "text": f"Signature INVALID: {err}"}
        return {"state": "valid", "text": "Signature valid: signed by the Ed25519 key with "
                f"SHA-256 fingerprint {res.public_key_sha256}."}
    if isinstance(sig, Mapping):
        return {"state": "unchecked", "text": "Signed (Ed25519) by the key with SHA-256 "
                f"fingerprint {sig.get('public_key_sha256')}. Not checked while rendering: run "
                "`fingerprint verify REPORT --public-key KEY`."}
    return {"state": "unsigned", "text": "This report is not signed."}


def _ci_bar(results: Mapping[str, Any]) -> dict[str, float] | None:
    ci = results.get("green_rate_ci95")
    rate = results.get("green_rate")
    if not ci or rate is None:
        return None
    return {"low": 100 * as_float(ci["low"]), "high": 100 * as_float(ci["high"]),
            "rate": 100 * as_float(rate),
            "expected": 100 * as_float(results.get("expected_green_rate") or 0.0)}


def render_html(report: Mapping[str, Any], *,
                public_key: str | os.PathLike[str] | None = None,
                signature: Mapping[str, str] | None = None) -> str:
    """The report as a self-contained HTML page (a string). ``signature``: the state
    :func:`signature_status` already gave for this report and ``public_key``, if known."""
    jinja2, _ = _imports()
    body = {k: v for k, v in report.items() if k != "signature"}
    check_structure(body)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fingerprint.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pval"] = format_pvalue
    env.filters["show"] = _show
    verdict = report["verdict"]
    kind = report["kind"]
    decision = verdict.get("decision", "")
    headline = HEADLINES.get((kind, decision), {
        "inconclusive": "Inconclusive: the control keys failed calibration",
        "no_evidence": "No evidence: nothing was scored"}.get(decision, decision))
    results = report["results"]
    ctx = {
        "r": report,
        "headline": headline,
        "decision": decision,
        "results": results,
        "curve_png": curve_plot(report),
        "controls_png": controls_plot(report),
        "ci": _ci_bar(results),
        "token_rows": _token_rows(report),
        "test_rows": [(k, v) for k, v in _flatten(report["test"])
                      if not k.startswith("detector_config")],
        "suspect_rows": _flatten(report.get("suspect") or {}),
        "details_rows": _flatten(report["inputs"].get("details") or {}),
        "text_rows": _flatten(report.get("text") or {}),
        "env_rows": _flatten(report.get("environment") or {}),
        "timing_rows": _flatten(report.get("timing") or {}),
        "signature": signature if signature is not None else signature_status(report,
                                                                               public_key),
    }
    return env.get_template(TEMPLATE).render(**ctx)


def write_html(report: Mapping[str, Any] | str | os.PathLike[str],
               out: str | os.PathLike[str], *,
               public_key: str | os.PathLike[str] | None = None,
               signature: Mapping[str, str] | None = None) -> Path:
    """Render ``report`` (a dict or a report file) to the HTML file ``out``."""
    data = report if isinstance(report, Mapping) else load_report(report)
    path = Path(out)
    path.write_text(render_html(data, public_key=public_key, signature=signature),
                    encoding="utf-8")
    return path


__all__ = ["RenderError", "controls_plot", "curve_plot", "render_html", "signature_status",
           "write_html"]
