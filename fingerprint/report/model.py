"""The report: a versioned JSON document of one detection or audit, and its canonical bytes.

A report states the hypotheses in words, the test and every parameter, the key id (never the
key), SHA-256 digests of every input file, the suspect's identity, the numbers (counts,
statistic, p, log10 p, green rate with its Clopper-Pearson interval), the control keys, the
evidence curve, library versions and timestamps. ``docs/report.md`` documents it field by field.

The canonical form (:func:`canonical_bytes`) is UTF-8 JSON with sorted keys, no insignificant
whitespace, floats in Python's shortest round-trip ``repr`` and no NaN or Infinity, so one report
always serializes to the same bytes; signatures (:mod:`fingerprint.report.sign`) cover them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint import stats
from fingerprint.errors import FingerprintError

SCHEMA = "fingerprint-report/1"
SUPPORTED_SCHEMAS: tuple[str, ...] = (SCHEMA,)
KINDS: tuple[str, ...] = ("detection", "audit")
DEFAULT_SIGNIFICANCE = 1e-3
CI_CONFIDENCE = 0.95
FLAG_SAMPLE_MAX = 2000
REQUIRED_FIELDS: tuple[str, ...] = (
    "schema", "kind", "created_at", "verdict", "hypotheses", "test", "key", "inputs",
    "results", "controls", "curve", "environment", "procedure",
)
PACKAGES: tuple[str, ...] = ("fingerprint", "numpy", "scipy", "torch", "transformers", "numba",
                             "cryptography")
NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ReportError(FingerprintError, ValueError):
    """A report that cannot be built, read, verified or recomputed; ``part`` names what failed."""

    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


class ReportFormatError(ReportError):
    """A report file that is not a well-formed report: truncated, not JSON, not an object."""


class UnknownSchemaError(ReportError):
    """A report of a schema version this library does not read."""


# -- canonical JSON ---------------------------------------------------------------------------
def _check_canonical(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportFormatError(
                f"{path or 'the report'} is {value!r}: NaN and Infinity are not allowed in a "
                "report (encode them as the strings 'NaN', 'Infinity', '-Infinity')", path)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_canonical(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ReportFormatError(f"{path or 'the report'} has a non-string key {k!r}",
                                        path)
            _check_canonical(v, join_path(path, k))
        return
    raise ReportFormatError(
        f"{path or 'the report'} holds a {type(value).__name__}, which JSON cannot represent "
        "exactly; convert it with fingerprint.report.model.plain()", path)


def canonical_bytes(obj: Any) -> bytes:
    """The canonical serialization: sorted keys, no whitespace, ``repr`` floats, UTF-8.

    Raises :class:`ReportFormatError` for NaN, Infinity, non-string keys and non-JSON types.
    """
    _check_canonical(obj, "")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data``, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def join_path(parent: str, key: str) -> str:
    """The dotted path of ``key`` under ``parent``."""
    return key if not parent else f"{parent}.{key}"


def _reject_constant(name: str) -> Any:
    raise ReportFormatError(f"the report contains the JSON constant {name}, which is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ReportFormatError(f"the key {k!r} appears twice in one JSON object", k)
        out[k] = v
    return out


def parse_report_bytes(data: bytes, source: str = "the report") -> dict[str, Any]:
    """Parse report bytes strictly: UTF-8, one JSON object, no duplicate keys, no NaN."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportFormatError(f"{source} is not UTF-8 text (byte {err.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ReportFormatError(f"{source} is empty")
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        hint = " (the file looks truncated)" if err.pos >= len(text.rstrip()) else ""
        raise ReportFormatError(
            f"{source} is not valid JSON{hint}: {err.msg} at line {err.lineno}, column "
            f"{err.colno}") from None
    if not isinstance(obj, dict):
        raise ReportFormatError(f"{source} is not a JSON object but a {type(obj).__name__}")
    return obj


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report file (signed or not) strictly; see :func:`parse_report_bytes`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ReportFormatError(f"report file {p} does not exist") from None
    except OSError as err:
        raise ReportFormatError(f"cannot read report file {p}: {err}") from None
    return parse_report_bytes(data, f"report file {p}")


def dump_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` to ``path`` in canonical form (plus a final newline)."""
    p = Path(path)
    p.write_bytes(canonical_bytes(dict(report)) + b"\n")
    return p


def check_schema(report: Mapping[str, Any]) -> str:
    """The report's schema version; :class:`UnknownSchemaError` unless this library reads it."""
    schema = report.get("schema")
    if schema is None:
        raise UnknownSchemaError("the report has no 'schema' field: it is not a fingerprint "
                                 "report", "schema")
    if schema not in SUPPORTED_SCHEMAS:
        raise UnknownSchemaError(
            f"unknown report schema {schema!r}; this fingerprint reads {list(SUPPORTED_SCHEMAS)}"
            " (upgrade fingerprint to read newer reports)", "schema")
    return str(schema)


def check_structure(report: Mapping[str, Any]) -> None:
    """Refuse a report that misses a required field or has an unknown kind."""
    check_schema(report)
    for name in REQUIRED_FIELDS:
        if name not in report:
            raise ReportFormatError(f"the report has no {name!r} field", name)
    if report["kind"] not in KINDS:
        raise ReportFormatError(f"unknown report kind {report['kind']!r}; expected one of "
                                f"{list(KINDS)}", "kind")
    for name in ("verdict", "hypotheses", "test", "key", "inputs", "results", "procedure"):
        if not isinstance(report[name], dict):
            raise ReportFormatError(f"the report's {name!r} field is not an object", name)
    files = report["inputs"].get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str)
            and isinstance(f.get("sha256"), str) for f in files):
        raise ReportFormatError("inputs.files must be a list of {role, name, sha256, bytes}",
                                "inputs.files")


def leaf_paths(obj: Any, path: str = "") -> Iterator[tuple[str, list[str | int]]]:
    """Every leaf of a JSON tree as (dotted path, key list); empty containers are leaves."""
    yield from _leaves(obj, path, [])


def _leaves(obj: Any, path: str, keys: list[str | int]) -> Iterator[tuple[str, list[str | int]]]:
    if isinstance(obj, dict) and obj:
        for k in sorted(obj):
            yield from _leaves(obj[k], join_path(path, k), [*keys, k])
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]", [*keys, i])
    else:
        yield path, keys


# -- plain values -------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars to Python, tuples to lists, paths to strings, and
    non-finite floats to the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    return str(value)


def as_float(value: Any) -> float:
    """A report number back as a float (the strings of :func:`plain` included)."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    return float(value)


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return iso_utc(datetime.now(timezone.utc))


def iso_utc(when: datetime | float) -> str:
    """``when`` (a datetime or a POSIX timestamp) in UTC ISO 8601 with a ``Z``."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(float(when), timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def environment() -> dict[str, Any]:
    """The Python version, platform and versions of the libraries that compute the numbers."""
    from fingerprint import __version__

    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        if name == "fingerprint":
            packages[name] = __version__
            continue
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "implementation":
            platform.python_implementation(), "platform": platform.platform(terse=True),
            "machine": platform.machine(), "packages": packages}


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(SHA-256 hex, size in bytes) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def describe_inputs(inputs: Mapping[str, Path | str | Sequence[Path | str]] | None
                    ) -> list[dict[str, Any]]:
    """The ``inputs.files`` list: role, file name, SHA-256 and size of every input file.

    Files are named by their base name (a verifier finds them in one data folder), so two inputs
    may not share a base name.
    """
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for role, value in (inputs or {}).items():
        paths = [value] if isinstance(value, str | os.PathLike) else list(value)
        for p in map(Path, paths):
            if not p.is_file():
                raise ReportError(f"input file {p} ({role}) does not exist or is not a file",
                                  "inputs.files")
            if p.name in names:
                raise ReportError(
                    f"two input files are named {p.name!r} ({names[p.name]} and {role}); rename "
                    "one: a verifier looks inputs up by name in one folder", "inputs.files")
            names[p.name] = role
            digest, size = file_digest(p)
            out.append({"role": role, "name": p.name, "sha256": digest, "bytes": size})
    return out


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 over a tokenizer's vocabulary and special tokens (what decides the token ids)."""
    payload = {"vocab": sorted(tokenizer.get_vocab().items()),
               "special": sorted(map(str, getattr(tokenizer, "all_special_tokens", []) or []))}
    return sha256_hex(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())


# -- result containers --------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusDetection:
    """A detection over files with everything a report shows (see ``recompute.detect_files``).

    ``params`` are the procedure's parameters, recorded so that a verifier reruns it exactly.
    """

    result: Any  # DetectionResult
    paths: list[Path]
    curve: list[tuple[int, float]]
    controls: Any = None  # ControlsResult | None
    controls_seed: int | None = None
    token_flags: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


# -- builders -----------------------------------------------------------------------------------
def _scheme_words(scheme: str) -> str:
    if scheme == "kgw":
        return "green-list tokens"
    return "tokens with high keyed Gumbel values"


def _prf_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    from fingerprint.core.prf import prf_class

    cls = prf_class(str(config["prf"]))
    name = str(cls.name)
    version = name.rsplit("-", 1)[-1] if "-v" in name else None
    out: dict[str, Any] = {"prf": name, "prf_version": version}
    if config["scheme"] == "kgw":
        out["green_probability"] = float(cls.green_probability(float(config["gamma"])))
    return out


def _test_section(result: Any, *, mode: str | None, extra: Mapping[str, Any],
                  controls: Any, controls_seed: int | None) -> dict[str, Any]:
    cfg = dict(result.config)
    test: dict[str, Any] = {
        "name": result.test,
        "scheme": cfg["scheme"],
        "context_width": cfg["context_width"],
        "gamma": cfg["gamma"] if cfg["scheme"] == "kgw" else None,
        "gumbel_variant": None if cfg["scheme"] == "kgw" else cfg["scheme"],
        "dual_key_alpha": cfg["alpha"] if cfg["scheme"] == "dual_key_gumbel" else None,
        "dedup": cfg["dedup"],
        "skip_prompt_windows": cfg["skip_prompt_windows"],
        "detector_config": plain(cfg),
        "mode": mode,
        "controls": {"n_keys": None if controls is None else int(controls.n_keys),
                     "seed": controls_seed},
        **_prf_facts(cfg),
    }
    test.update(plain(dict(extra)))
    return test


def _results_section(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": result.statistic,
        "pvalue": result.pvalue,
        "log10_pvalue": result.log10_pvalue,
        "n_positions": result.n_positions,
        "n_scored": result.n_scored,
        "n_green": result.n_green,
        "score_sum": result.score_sum,
        "zscore": result.zscore,
        "vllm_pvalue": result.vllm_pvalue,
        "no_evidence": result.no_evidence,
        "green_rate": result.green_rate,
        "green_rate_ci95": None,
        "expected_green_rate": None,
    }
    if result.n_green is not None:
        lo, hi = stats.clopper_pearson(int(result.n_green), int(result.n_scored), CI_CONFIDENCE)
        out["green_rate_ci95"] = {"low": lo, "high": hi, "confidence": CI_CONFIDENCE,
                                  "method": "clopper-pearson"}
        out["expected_green_rate"] = _prf_facts(result.config).get("green_probability")
    return plain(out)


def _controls_section(controls: Any, real_statistic: float, seed: int | None
                      ) -> dict[str, Any] | None:
    if controls is None:
        return None
    statistics = [float(s) for s in controls.statistics]
    return plain({
        "n_keys": controls.n_keys,
        "seed": seed,
        "statistics": statistics,
        "log10_pvalues": list(controls.log10_pvalues),
        "empirical_pvalue": controls.empirical_pvalue,
        "n_at_least_real": int(sum(s >= real_statistic for s in statistics)),
        "ks_statistic": controls.ks_statistic,
        "ks_pvalue": controls.ks_pvalue,
        "fpr_at_001": controls.fpr_at_001,
        "calibrated": controls.calibrated,
    })


def _curve_section(curve: Sequence[tuple[int, float]] | None) -> dict[str, Any]:
    points = [[int(n), float(lp)] for n, lp in (curve or [])]
    return plain({"x": "tuples scored", "y": "log10 p", "points": points})


def format_pvalue(log10_p: float, digits: int = 3) -> str:
    """A p-value from its log10, readable even where the float underflows (``3.2e-645``)."""
    lp = float(log10_p)
    if not math.isfinite(lp):
        return "0" if lp < 0 else "NaN"
    if lp > -4:
        return f"{10.0 ** lp:.{digits}g}"
    exp = math.floor(lp)
    mant = 10.0 ** (lp - exp)
    if round(mant, digits - 1) >= 10.0:
        mant, exp = mant / 10.0, exp + 1
    return f"{mant:.{digits - 1}f}e{exp}"


def verdict_decision(result: Any, significance: float, calibrated: bool | None) -> str:
    """The verdict on a detection ``result`` at ``significance``: ``no_evidence`` (nothing
    scored), ``inconclusive`` (the controls failed calibration), ``reject`` (log10 p at or
    below log10 of the level) or ``not_rejected``. The rule of every report and summary."""
    if not 0.0 < significance < 1.0:
        raise ReportError(f"significance must lie strictly between 0 and 1, got {significance}")
    if result.no_evidence:
        return "no_evidence"
    if calibrated is False:
        return "inconclusive"
    if float(result.log10_pvalue) <= math.log10(significance):
        return "reject"
    return "not_rejected"


def _verdict(result: Any, significance: float, null: str, *, calibrated: bool | None
             ) -> dict[str, Any]:
    decision = verdict_decision(result, significance, calibrated)
    lp = float(result.log10_pvalue)
    threshold = math.log10(significance)
    p_text = f"p = {format_pvalue(lp)}"
    counts = f"{result.n_scored:,} scored tuples"
    if decision == "no_evidence":
        sentence = (f"No evidence either way: nothing was scored, so the null hypothesis H0 "
                    f"({null}) cannot be tested.")
    elif decision == "inconclusive":
        sentence = (f"Inconclusive: the control keys failed calibration, so {p_text} "
                    f"(log10 p = {lp:.2f}, {counts}) cannot be relied on to test H0 ({null}).")
    elif decision == "reject":
        sentence = (f"The null hypothesis H0 ({null}) is rejected at significance level "
                    f"{significance:g}: {p_text}, log10 p = {lp:.2f}, over {counts}.")
    else:
        sentence = (f"The null hypothesis H0 ({null}) is not rejected at significance level "
                    f"{significance:g}: {p_text}, log10 p = {lp:.2f}, over {counts}. This is "
                    "absence of evidence, not evidence that H0 is true.")
    return {"decision": decision, "significance": significance,
            "log10_threshold": threshold, "sentence": sentence}


def _text_section(tokenizer: Any, tokenizer_spec: str | None, normalize: Any,
                  sha: str | None = None) -> dict[str, Any]:
    if tokenizer is not None and not isinstance(tokenizer, str) and hasattr(tokenizer,
                                                                            "get_vocab"):
        sha = tokenizer_digest(tokenizer)
    spec = tokenizer if isinstance(tokenizer, str) else tokenizer_spec
    norm = None
    if normalize is not None:
        norm = normalize.to_dict() if hasattr(normalize, "to_dict") else dict(normalize)
    return plain({"tokenizer": {"spec": spec, "sha256": sha}, "normalize": norm})


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    out = plain(report)
    canonical_bytes(out)  # refuse anything the canonical form cannot carry, now
    return out


def report_from_detection(
    result: Any,
    *,
    inputs: Mapping[str, Path | str | Sequence[Path | str]] | None = None,
    significance: float = DEFAULT_SIGNIFICANCE,
    curve: Sequence[tuple[int, float]] | None = None,
    controls: Any = None,
    controls_seed: int | None = None,
    token_flags: Sequence[Mapping[str, Any]] | None = None,
    skipped: Sequence[Any] | None = None,
    tokenizer: Any = None,
    tokenizer_spec: str | None = None,
    normalize: Any = None,
    reader: Mapping[str, Any] | None = None,
    title: str | None = None,
    created_at: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """A report of a watermark detection.

    ``result`` is a :class:`~fingerprint.detect.detector.DetectionResult` (then ``inputs``
    names the corpus files it was computed from, read by ``detect_corpus``) or a
    :class:`CorpusDetection` from ``recompute.detect_files`` (curve, controls, flags and
    inputs come with it). ``tokenizer`` is a tokenizer object (its digest is recorded) or a
    spec (``"default"`` or a local path); ``reader`` holds the CorpusReader field options.
    """
    procedure: dict[str, Any]
    tokenizer_sha = None
    if isinstance(result, CorpusDetection):
        cd = result
        result = cd.result
        curve = cd.curve if curve is None else curve
        controls = cd.controls if controls is None else controls
        controls_seed = cd.controls_seed if controls_seed is None else controls_seed
        token_flags = cd.token_flags if token_flags is None else token_flags
        skipped = cd.skipped if skipped is None else skipped
        if inputs is None:
            inputs = {"corpus": list(cd.paths)}
        procedure = {"name": "detect_files", "params": dict(cd.params)}
        if tokenizer is None and tokenizer_spec is None:
            tokenizer_spec = cd.params.get("tokenizer")
            tokenizer_sha = cd.params.get("tokenizer_sha256")
        if normalize is None:
            normalize = cd.params.get("normalize")
    else:
        procedure = {"name": "detect_corpus", "params": {"vocab_size": None,
                                                         **dict(reader or {})}}
        if token_flags is None and result.token_flags:
            token_flags = result.token_flags
    files = describe_inputs(inputs)
    procedure["params"]["corpus"] = [f["name"] for f in files if f["role"] == "corpus"]
    key_id = result.key_id
    null = (f"the text was produced independently of watermark key {key_id}: each scored "
            "token's keyed value is as if drawn at random")
    alternative = (f"the text was produced with watermark key {key_id}: it over-represents "
                   f"{_scheme_words(result.config['scheme'])}")
    flags = list(token_flags or [])
    skipped_rows = [{"source": Path(str(s.source)).name, "row": s.row, "reason": s.reason}
                    for s in (skipped or [])]
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "detection",
        "title": title or "Watermark detection",
        "created_at": created_at or utc_now(),
        "verdict": _verdict(result, significance, null,
                            calibrated=None if controls is None else controls.calibrated),
        "hypotheses": {"null": null, "alternative": alternative,
                       "statistical_null": result.null_hypothesis, "test": result.test},
        "test": _test_section(result, mode=None, extra={}, controls=controls,
                              controls_seed=controls_seed),
        "key": {"key_id": key_id},
        "inputs": {"files": files, "details": {"skipped_rows": len(skipped_rows),
                                               "skipped": skipped_rows[:50]}},
        "text": _text_section(tokenizer, tokenizer_spec, normalize, tokenizer_sha),
        "suspect": None,
        "results": _results_section(result),
        "controls": _controls_section(controls, result.statistic, controls_seed),
        "curve": _curve_section(curve),
        "token_flags": {"total_in_sample": len(flags), "sample": flags[:FLAG_SAMPLE_MAX],
                        "note": "the first tokens of the corpus, scored within the whole "
                                "corpus (global dedup): 'scored' is false for repeats and "
                                "prompt positions"} if flags else None,
        "warnings": [],
        "notes": list(notes),
        "environment": environment(),
        "timing": {},
        "procedure": procedure,
    }
    return _finish(report)


def report_from_audit(
    result: Any,
    *,
    inputs: Mapping[str, Path | str | Sequence[Path | str]] | None = None,
    significance: float = DEFAULT_SIGNIFICANCE,
    controls_seed: int | None = None,
    tokenizer: Any = None,
    tokenizer_spec: str | None = None,
    normalize: Any = None,
    vocab_size: int | None = None,
    batch_tokens: int | None = None,
    suspect: Mapping[str, Any] | None = None,
    suspect_model: Any = None,
    query_dates: Sequence[str] | None = None,
    title: str | None = None,
    created_at: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """A report of a radioactivity audit (:class:`~fingerprint.audit.controls.AuditResult`).

    ``inputs`` maps roles to files: ``teacher`` (the watermarked corpus, JSONL of token ids),
    ``prompts`` and ``answers`` (the closed audit's prompts file and answers checkpoint).
    ``controls_seed`` is the ``seed`` the audit was run with (controls are recomputable only
    with it; by default the one the result records). A closed audit's ``teacher`` file is
    recomputed through the filter phi only when the audit used it. Open audits: ``vocab_size``
    and ``batch_tokens`` as passed to ``audit_open``, and ``suspect_model`` to record its
    weights' SHA-256. Closed audits: ``tokenizer`` and ``normalize`` as passed to
    ``audit_closed``.
    """
    det = result.detection
    files = describe_inputs(inputs)
    roles = {f["role"]: f["name"] for f in files}
    ident = dict(result.suspect)
    ident.update(dict(suspect or {}))
    if suspect_model is not None and "model_sha256" not in ident:
        from fingerprint.models import model_fingerprint

        ident["model_sha256"] = model_fingerprint(suspect_model)
    if query_dates is not None:
        ident["query_dates"] = list(query_dates)
    elif result.mode == "closed" and inputs is not None and "answers" in inputs:
        ident["answers_last_written"] = iso_utc(Path(str(inputs["answers"])).stat().st_mtime)
    cfg = dict(result.config)
    extra: dict[str, Any] = {"top_k": cfg.get("top_k"), "max_length": cfg.get("max_length")}
    if result.mode == "closed":
        phi = result.inputs.get("filter_phi")  # the teacher is an input of the filter only
        if normalize is None:  # what audit_closed applies when given none
            from fingerprint.detect.normalize import NormalizeConfig

            normalize = NormalizeConfig()
        extra["filters"] = {
            "exclude_prompt_windows": cfg.get("exclude_prompt_windows", True),
            "filter_phi": phi,
            "filter_top_n": cfg.get("filter_top_n")}
        params = {"answers": roles.get("answers"), "prompts": roles.get("prompts"),
                  "teacher": roles.get("teacher") if phi is not None else None,
                  "filter_top_n": cfg.get("filter_top_n"),
                  "normalize": {k: v for k, v in normalize.to_dict().items()
                                if not k.endswith("_data")}}
    else:
        extra["filters"] = {"skip_windows_seen_earlier_in_chunk": True}
        params = {"teacher": roles.get("teacher"), "vocab_size": vocab_size,
                  "top_k": cfg.get("top_k", 1), "max_length": cfg.get("max_length"),
                  "batch_tokens": batch_tokens}
    if controls_seed is None:
        controls_seed = getattr(result.controls, "seed", None)
    params["n_controls"] = int(result.controls.n_keys)
    params["controls_seed"] = controls_seed
    null = str(result.null_hypothesis)
    if "this watermark key" in null:
        null = null.replace("this watermark key", f"watermark key {det.key_id}", 1)
    else:
        null = f"{null} (watermark key {det.key_id})"
    what = "top predictions on the teacher's text" if result.mode == "open" else "answers"
    alternative = (f"the suspect model was trained (fine-tuned or distilled) on text carrying "
                   f"watermark key {det.key_id}: its {what} over-represent "
                   f"{_scheme_words(det.config['scheme'])}")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "audit",
        "title": title or f"Radioactivity audit ({result.mode} model)",
        "created_at": created_at or utc_now(),
        "verdict": _verdict(det, significance, null, calibrated=result.controls.calibrated),
        "hypotheses": {"null": null, "alternative": alternative,
                       "statistical_null": det.null_hypothesis, "test": det.test},
        "test": _test_section(det, mode=result.mode, extra=extra, controls=result.controls,
                              controls_seed=controls_seed),
        "key": {"key_id": det.key_id},
        "inputs": {"files": files, "details": plain(result.inputs)},
        "text": _text_section(tokenizer, tokenizer_spec, normalize),
        "suspect": plain(ident),
        "results": _results_section(det),
        "controls": _controls_section(result.controls, det.statistic, controls_seed),
        "curve": _curve_section(result.curve),
        "token_flags": None,
        "warnings": list(result.warnings),
        "notes": list(notes),
        "environment": environment(),
        "timing": plain(result.timing),
        "procedure": {"name": f"audit_{result.mode}", "params": params},
    }
    return _finish(report)


__all__ = [
    "KINDS",
    "SCHEMA",
    "SUPPORTED_SCHEMAS",
    "CorpusDetection",
    "ReportError",
    "ReportFormatError",
    "UnknownSchemaError",
    "as_float",
    "canonical_bytes",
    "check_schema",
    "check_structure",
    "describe_inputs",
    "dump_report",
    "environment",
    "file_digest",
    "format_pvalue",
    "leaf_paths",
    "load_report",
    "parse_report_bytes",
    "plain",
    "report_from_audit",
    "report_from_detection",
    "tokenizer_digest",
    "verdict_decision",
]
