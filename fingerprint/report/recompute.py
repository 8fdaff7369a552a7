"""Recompute a report's numbers from its input files, and check they match.

A verifier holding the watermark key and the input files reruns the report's procedure:

* detection reports: the detector over the corpus files (``detect_files`` or ``detect_corpus``,
  whichever the report names), with the report's configuration;
* closed-model audits: the suspect's answers are re-scored from the answers checkpoint (no
  model and no network: a replay client serves the recorded answers to ``audit_closed``);
* open-model audits: the teacher's text is read through the suspect again, which needs the
  suspect's weights.

Every input file is looked up by name in one folder and its SHA-256 checked before anything is
computed. Counts and statistics must match exactly, log10 p to 1e-12 relative; the control keys
are recomputed too when the report records their seed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint import models
from fingerprint.audit.clients import Answer, prompts_sha256
from fingerprint.audit.controls import run_controls
from fingerprint.audit.reading import TeacherText
from fingerprint.audit.reading import read_teacher as read_teacher_rows
from fingerprint.detect.calibrate import ScoredBatch
from fingerprint.detect.corpus import (
    BATCH_TOKENS,
    CorpusReader,
    Skipped,
    detect_corpus,
    usable_records,
)
from fingerprint.detect.detector import Detector, DetectorConfig, pack_batches
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.errors import InputError
from fingerprint.keys import WatermarkKey, as_key
from fingerprint.report.model import (
    CorpusDetection,
    ReportError,
    file_digest,
    plain,
    tokenizer_digest,
)

REL_TOL = 1e-12
DEFAULT_FLUSH_RECORDS = 256
DEFAULT_FLAG_TOKENS = 300
NORMALIZE_SETTINGS = ("form", "strip_invisible", "strip_bidi", "homoglyphs")


class InputDigestError(ReportError):
    """An input file missing from the data folder, or not the file the report was made from."""


class RecomputeMismatchError(ReportError):
    """Recomputed numbers that differ from the report's."""


class NotRecomputableError(ReportError):
    """A report whose numbers cannot be recomputed from what was given."""


@dataclass(frozen=True)
class RecomputeResult:
    """What was recomputed and matched; ``notes`` say what could not be (and why)."""

    procedure: str
    checked: list[str]
    controls_checked: bool
    notes: list[str] = field(default_factory=list)


# -- tokenizers ---------------------------------------------------------------------------------
def load_tokenizer(spec: str) -> Any:
    """``"default"`` (the embedded SmolLM2 tokenizer) or a local tokenizer folder; a path that
    is not on this machine makes the report not recomputable here."""
    if spec != "default" and not Path(spec).exists():
        raise NotRecomputableError(f"tokenizer {spec!r} is not a local path (nothing is "
                                   "downloaded); pass --tokenizer PATH", "text.tokenizer")
    return models.load_tokenizer(spec)


class LazyTokenizer(models.LazyTokenizer):
    """A tokenizer loaded on first use (id corpora never need one); checks a recorded digest."""

    def __init__(self, tokenizer: Any, sha256: str | None = None) -> None:
        super().__init__(tokenizer)
        self._sha256 = sha256
        self._checked = False

    def get(self) -> Any:
        """The tokenizer, loaded (and its digest checked) on the first call."""
        if self._tok is None:
            if self._spec is None:
                raise NotRecomputableError("the corpus holds text but no tokenizer is known; "
                                           "pass a tokenizer", "text.tokenizer")
            self._tok = load_tokenizer(self._spec)
        if not self._checked and self._sha256 is not None:
            got = tokenizer_digest(self._tok)
            if got != self._sha256:
                raise RecomputeMismatchError(
                    f"the tokenizer is not the report's: its SHA-256 is {got}, the report "
                    f"records {self._sha256} (text.tokenizer.sha256)", "text.tokenizer.sha256")
        self._checked = True
        return self._tok


def _normalize_from(settings: Mapping[str, Any] | None) -> NormalizeConfig | None:
    if settings is None:
        return None
    return NormalizeConfig(**{k: settings[k] for k in NORMALIZE_SETTINGS if k in settings})


def _normalize_settings(normalize: NormalizeConfig | None) -> dict[str, Any] | None:
    if normalize is None:
        return None
    return {k: getattr(normalize, k) for k in NORMALIZE_SETTINGS}


# -- detection over files -----------------------------------------------------------------------
def _row_flags(x: np.ndarray, mask: np.ndarray | None, start: np.ndarray | None,
               sel: np.ndarray, values: np.ndarray, r: int, scheme: str, gamma: float
               ) -> list[dict[str, Any]]:
    m = np.ones(x.shape[1], dtype=bool) if mask is None else mask[r]
    cols = np.nonzero(m)[0]
    if start is not None:
        cols = cols[cols >= start[r]]
    out = []
    for i, c in enumerate(cols):
        item: dict[str, Any] = {"index": i, "token": int(x[r, c]), "scored": bool(sel[r, c])}
        v = float(values[r, c])
        if scheme == "kgw":
            item["green"] = v < gamma
        else:
            item["score"] = v
        out.append(item)
    return out


def detect_files(
    key: WatermarkKey | int | str,
    paths: Sequence[str | os.PathLike[str]],
    config: DetectorConfig | None = None,
    *,
    tokenizer: Any = None,
    normalize: NormalizeConfig | None = None,
    text_field: str | None = None,
    ids_field: str | None = None,
    prompt_ids_field: str | None = None,
    vocab_size: int | None = None,
    n_controls: int = 100,
    controls_seed: int | None = None,
    flush_records: int = DEFAULT_FLUSH_RECORDS,
    flag_tokens: int = DEFAULT_FLAG_TOKENS,
) -> CorpusDetection:
    """Test corpus files (.txt, .jsonl, .parquet) with everything a report shows.

    Like :func:`~fingerprint.detect.corpus.detect_corpus` (global dedup, broken rows skipped
    and listed), plus: the evidence curve (one point every ``flush_records`` records), the
    first ``flag_tokens`` per-token flags, and ``n_controls`` control keys (seeded by
    ``controls_seed``; a random seed is drawn and recorded when None, so that a verifier can
    recompute them). ``tokenizer`` is an object or a spec (``"default"`` or a local path).
    """
    cfg = config or DetectorConfig()
    if flush_records < 1:
        raise InputError("flush_records must be at least 1")
    if n_controls < 0:
        raise InputError("n_controls must be >= 0")
    det = Detector(key, cfg)
    files = [Path(p) for p in paths]
    reader = CorpusReader(files, text_field=text_field, ids_field=ids_field,
                          prompt_ids_field=prompt_ids_field)
    tok = tokenizer if isinstance(tokenizer, LazyTokenizer) else LazyTokenizer(tokenizer)
    state = det.new_state()
    scored: list[ScoredBatch] = []
    curve: list[tuple[int, float]] = []
    flags: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    seqs: list[np.ndarray] = []
    proms: list[np.ndarray] = []
    recs: list[tuple[str, int]] = []
    pending = 0

    def flush() -> None:
        offset = 0
        for x, m, s in pack_batches(seqs, proms, cfg.prompt_gap):
            out = det.update(state, x, mask=m, score_from=s, vocab_size=vocab_size,
                             return_values=True)
            assert out is not None
            sel, values = out
            if n_controls:
                scored.append(ScoredBatch(x, m, sel))
            for r in range(x.shape[0]):
                if len(flags) >= flag_tokens:
                    break
                source, row = recs[offset + r]
                for item in _row_flags(x, m, s, sel, values, r, cfg.scheme, cfg.gamma):
                    flags.append({"source": source, "row": row, **item})
            offset += x.shape[0]
        if seqs:
            curve.append((state.suff.n_scored, det.result(state).log10_pvalue))
        seqs.clear()
        proms.clear()
        recs.clear()

    for rec, ids in usable_records(reader, tok, normalize, vocab_size, skipped):
        seqs.append(ids)
        proms.append(np.asarray(rec.prompt_ids or [], dtype=np.int64))
        recs.append((Path(rec.source).name, rec.row))
        pending += len(ids)
        if pending >= BATCH_TOKENS or len(seqs) >= flush_records:
            flush()
            pending = 0
    flush()
    flags = flags[:flag_tokens]
    if tok.available and flags:
        for item in flags:
            item["text"] = tok.decode([item["token"]])
    real = det.result(state)
    controls = None
    if n_controls:
        if controls_seed is None:
            controls_seed = secrets.randbits(63)
        controls = run_controls(scored, cfg, real, n_keys=n_controls, seed=controls_seed)
    params = {
        "text_field": text_field, "ids_field": ids_field, "prompt_ids_field": prompt_ids_field,
        "vocab_size": vocab_size, "flush_records": flush_records, "flag_tokens": flag_tokens,
        "batch_tokens": BATCH_TOKENS, "n_controls": n_controls,
        "controls_seed": controls_seed if n_controls else None,
        "tokenizer": tokenizer if isinstance(tokenizer, str) else None,
        "tokenizer_sha256": (tokenizer_digest(tokenizer) if tokenizer is not None
                             and not isinstance(tokenizer, str | LazyTokenizer) else None),
        "normalize": _normalize_settings(normalize),
    }
    return CorpusDetection(result=real, paths=files, curve=curve, controls=controls,
                           controls_seed=controls_seed if n_controls else None,
                           token_flags=flags, skipped=skipped, params=params)


def read_teacher(path: str | os.PathLike[str]) -> list[TeacherText]:
    """The teacher corpus as an audit reads it (``fingerprint.audit.reading.read_teacher``)."""
    return read_teacher_rows(path)[0]


# -- inputs -------------------------------------------------------------------------------------
def check_inputs(report: Mapping[str, Any], data_dir: str | os.PathLike[str]
                 ) -> dict[str, Path]:
    """Find every input file of ``report`` in ``data_dir`` and check its SHA-256.

    Returns {file name: path}. Raises :class:`InputDigestError` naming the first missing or
    altered file.
    """
    base = Path(data_dir)
    if not base.is_dir():
        raise InputDigestError(f"data folder {base} does not exist", "inputs")
    found: dict[str, Path] = {}
    for i, entry in enumerate(report["inputs"]["files"]):
        name, role = entry["name"], entry.get("role", "input")
        if Path(name).name != name or name in ("", ".", ".."):
            raise InputDigestError(f"input file name {name!r} is not a plain file name",
                                   f"inputs.files[{i}].name")
        path = base / name
        if not path.is_file():
            raise InputDigestError(f"input file {name} ({role}) is not in {base}",
                                   f"inputs.files[{i}]")
        digest, size = file_digest(path)
        if digest != entry["sha256"]:
            raise InputDigestError(
                f"input file {name} ({role}) is not the file the report was made from: its "
                f"SHA-256 is {digest} ({size} bytes), the report records {entry['sha256']} "
                f"({entry.get('bytes')} bytes)", f"inputs.files[{i}].sha256")
        found[name] = path
    return found


# -- comparison ---------------------------------------------------------------------------------
def _close(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    a, b = float(a), float(b)
    if a == b:
        return True
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= REL_TOL * max(abs(a), abs(b))


class _Checker:
    def __init__(self) -> None:
        self.checked: list[str] = []
        self.mismatches: list[tuple[str, Any, Any]] = []

    def exact(self, path: str, reported: Any, got: Any) -> None:
        self.checked.append(path)
        if reported != plain(got):
            self.mismatches.append((path, reported, plain(got)))

    def close(self, path: str, reported: Any, got: Any) -> None:
        self.checked.append(path)
        if not _close(reported, plain(got)):
            self.mismatches.append((path, reported, plain(got)))

    def raise_if_any(self) -> None:
        if not self.mismatches:
            return
        lines = [f"{p}: the report says {r!r}, recomputed {g!r}"
                 for p, r, g in self.mismatches[:8]]
        raise RecomputeMismatchError(
            "recomputed numbers do not match the report: " + "; ".join(lines),
            self.mismatches[0][0])


def _check_results(chk: _Checker, reported: Mapping[str, Any], res: Any) -> None:
    for name in ("n_positions", "n_scored", "n_green", "score_sum", "statistic", "no_evidence"):
        chk.exact(f"results.{name}", reported.get(name), getattr(res, name))
    chk.close("results.log10_pvalue", reported.get("log10_pvalue"), res.log10_pvalue)


def _check_curve(chk: _Checker, reported: Mapping[str, Any], curve: Sequence[Any]) -> None:
    points = reported.get("points", [])
    chk.checked.append("curve.points")
    if len(points) != len(curve):
        chk.mismatches.append(("curve.points", f"{len(points)} points", f"{len(curve)} points"))
        return
    for i, ((n, lp), (n2, lp2)) in enumerate(zip(points, curve, strict=True)):
        if n != n2 or not _close(lp, lp2):
            chk.mismatches.append((f"curve.points[{i}]", [n, lp], [n2, lp2]))
            return


def _check_controls(chk: _Checker, reported: Mapping[str, Any] | None, controls: Any) -> None:
    if reported is None or controls is None:
        return
    chk.exact("controls.n_keys", reported.get("n_keys"), controls.n_keys)
    chk.exact("controls.statistics", reported.get("statistics"),
              [float(s) for s in controls.statistics])
    got_lp = list(controls.log10_pvalues)
    rep_lp = reported.get("log10_pvalues") or []
    chk.checked.append("controls.log10_pvalues")
    if len(rep_lp) != len(got_lp) or not all(
            _close(a, b) for a, b in zip(rep_lp, got_lp, strict=True)):
        chk.mismatches.append(("controls.log10_pvalues", "as reported", "differs"))
    chk.exact("controls.empirical_pvalue", reported.get("empirical_pvalue"),
              controls.empirical_pvalue)
    chk.close("controls.ks_statistic", reported.get("ks_statistic"), controls.ks_statistic)
    chk.close("controls.ks_pvalue", reported.get("ks_pvalue"), controls.ks_pvalue)
    chk.exact("controls.calibrated", reported.get("calibrated"), controls.calibrated)


def _controls_plan(report: Mapping[str, Any], notes: list[str]) -> tuple[int, int | None, bool]:
    """(number of control keys to run, seed, whether they can be compared)."""
    ctl = report.get("controls")
    if not ctl:
        return 0, None, False
    seed = ctl.get("seed")
    if seed is None:
        notes.append("controls: not recomputable, the report records no control seed")
        return 2, None, False
    return int(ctl["n_keys"]), int(seed), True


# -- closed audits: replaying recorded answers --------------------------------------------------
def read_answers(path: Path) -> tuple[dict[str, Any], dict[int, Answer]]:
    """An answers checkpoint's header and answers (the last line of an index wins)."""
    lines = path.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or "client" not in header:
        raise NotRecomputableError(f"{path.name} is not an answers checkpoint (no header line)",
                                   "inputs.files")
    answers: dict[int, Answer] = {}
    body = [ln for ln in lines[1:] if ln.strip()]
    for i, line in enumerate(body):
        try:
            a = Answer.from_json(line)
        except InputError:
            if i == len(body) - 1:  # a run killed mid-write: the audit dropped it too
                break
            raise NotRecomputableError(f"{path.name} is corrupt at answer line {i + 2}",
                                       "inputs.files") from None
        answers[a.index] = a
    return header, answers


class ReplayClient:
    """A suspect client that serves the answers recorded in a checkpoint, and nothing else."""

    def __init__(self, identity: Mapping[str, Any], answers: Mapping[int, Answer]) -> None:
        self._identity = copy.deepcopy(dict(identity))
        self._answers = dict(answers)

    def identity(self) -> dict[str, Any]:
        """The identity recorded in the checkpoint's header."""
        return copy.deepcopy(self._identity)

    def query(self, prompts: list[tuple[int, str]]) -> Iterator[Answer]:
        """The recorded answers of ``prompts`` (a failed query replays as failed)."""
        for index, _ in prompts:
            if index not in self._answers:
                raise NotRecomputableError(
                    f"the answers checkpoint has no answer to prompt {index}: the audit cannot "
                    "be replayed without querying the suspect", "inputs.files")
            yield self._answers[index]


def _closed_prompts(files: Mapping[str, Path], params: Mapping[str, Any],
                    header: Mapping[str, Any], answers: Mapping[int, Answer]) -> list[str]:
    name = params.get("prompts")
    if name:
        from fingerprint.watermark.generate import read_prompts

        prompts = [p.prompt for p in read_prompts(files[name])[0]]
        if prompts_sha256(prompts) != header.get("prompts_sha256"):
            raise RecomputeMismatchError(
                f"the prompts file {name} does not hold the prompts the answers checkpoint "
                f"{params.get('answers')} was written for", "inputs.files")
        return prompts
    n = int(header.get("n_prompts", -1))
    if n < 0 or any(i not in answers for i in range(n)):
        raise NotRecomputableError("the report names no prompts file and the answers "
                                   "checkpoint does not hold every prompt", "inputs.files")
    prompts = [answers[i].prompt for i in range(n)]
    if prompts_sha256(prompts) != header.get("prompts_sha256"):
        raise NotRecomputableError("the answers checkpoint's prompts do not match its header",
                                   "inputs.files")
    return prompts


def _recompute_closed(report: Mapping[str, Any], files: Mapping[str, Path], key: WatermarkKey,
                      cfg: DetectorConfig, tok: LazyTokenizer, chk: _Checker, notes: list[str]
                      ) -> bool:
    from fingerprint.audit.querying import audit_closed

    params = report["procedure"]["params"]
    answers_name = params.get("answers")
    if not answers_name or answers_name not in files:
        raise NotRecomputableError("not recomputable: the report names no answers checkpoint "
                                   "among its inputs", "procedure.params.answers")
    header, answers = read_answers(files[answers_name])
    prompts = _closed_prompts(files, params, header, answers)
    teacher = read_teacher(files[params["teacher"]]) if params.get("teacher") else None
    n_keys, seed, compare = _controls_plan(report, notes)
    with tempfile.TemporaryDirectory(prefix="fingerprint-verify-") as tmp:
        checkpoint = Path(tmp) / answers_name
        shutil.copyfile(files[answers_name], checkpoint)
        res = audit_closed(
            ReplayClient(header["client"], answers), prompts, key, cfg, tokenizer=tok.get(),
            checkpoint=checkpoint, teacher=teacher, filter_top_n=params.get("filter_top_n"),
            normalize=_normalize_from(params.get("normalize")), n_controls=max(n_keys, 2),
            seed=seed)
    _check_results(chk, report["results"], res.detection)
    _check_curve(chk, report["curve"], res.curve)
    details = report["inputs"].get("details") or {}
    for name in ("prompts", "answers", "failed_queries", "empty_answers", "filter_phi"):
        if name in details:
            chk.exact(f"inputs.details.{name}", details[name], res.inputs.get(name))
    if compare:
        _check_controls(chk, report["controls"], res.controls)
    return compare


def _recompute_open(report: Mapping[str, Any], files: Mapping[str, Path], key: WatermarkKey,
                    cfg: DetectorConfig, suspect: Any, chk: _Checker, notes: list[str]
                    ) -> bool:
    from fingerprint.audit.reading import audit_open

    if suspect is None:
        raise NotRecomputableError(
            "open-model audit: not recomputable without the suspect's weights (pass "
            "--suspect PATH); the signature and the input digests were checked", "suspect")
    if isinstance(suspect, str | os.PathLike):
        from fingerprint.models import load_model

        suspect = load_model(suspect if isinstance(suspect, str) else Path(suspect))[0]
    recorded = (report.get("suspect") or {}).get("model_sha256")
    if recorded:
        from fingerprint.models import model_fingerprint

        got = model_fingerprint(suspect)
        if got != recorded:
            raise RecomputeMismatchError(
                f"the suspect's weights are not the audited model's: SHA-256 {got}, the report "
                f"records {recorded} (suspect.model_sha256)", "suspect.model_sha256")
    params = report["procedure"]["params"]
    if not params.get("teacher") or params["teacher"] not in files:
        raise NotRecomputableError("not recomputable: the report names no teacher corpus",
                                   "procedure.params.teacher")
    if params.get("vocab_size") is None:
        raise NotRecomputableError("not recomputable: the report does not record the "
                                   "teacher's vocab_size", "procedure.params.vocab_size")
    n_keys, seed, compare = _controls_plan(report, notes)
    extra = {k: params[k] for k in ("top_k", "max_length", "batch_tokens")
             if params.get(k) is not None}
    res = audit_open(suspect, read_teacher(files[params["teacher"]]), key, cfg,
                     vocab_size=int(params["vocab_size"]), n_controls=max(n_keys, 2), seed=seed,
                     **extra)
    _check_results(chk, report["results"], res.detection)
    _check_curve(chk, report["curve"], res.curve)
    if compare:
        _check_controls(chk, report["controls"], res.controls)
    return compare


def _recompute_detection(report: Mapping[str, Any], files: Mapping[str, Path],
                         key: WatermarkKey, cfg: DetectorConfig, tok: LazyTokenizer,
                         chk: _Checker, notes: list[str]) -> bool:
    proc = report["procedure"]
    params = proc["params"]
    names = params.get("corpus") or [f["name"] for f in report["inputs"]["files"]
                                     if f.get("role") == "corpus"]
    if not names:
        raise NotRecomputableError("not recomputable: the report names no corpus file",
                                   "procedure.params.corpus")
    paths = [files[n] for n in names]
    normalize = _normalize_from((report.get("text") or {}).get("normalize"))
    fields = {k: params.get(k) for k in ("text_field", "ids_field", "prompt_ids_field")}
    if proc["name"] == "detect_corpus":
        res, _ = detect_corpus(Detector(key, cfg), CorpusReader(paths, **fields),
                               tokenizer=tok, normalize=normalize,
                               vocab_size=params.get("vocab_size"))
        _check_results(chk, report["results"], res)
        if report.get("controls"):
            notes.append("controls: not recomputed (detect_corpus reports carry no procedure "
                         "for them)")
        return False
    n_keys, seed, compare = _controls_plan(report, notes)
    cd = detect_files(key, paths, cfg, tokenizer=tok, normalize=normalize,
                      vocab_size=params.get("vocab_size"), n_controls=n_keys if compare else 0,
                      controls_seed=seed, flush_records=int(params["flush_records"]),
                      flag_tokens=0, **fields)
    _check_results(chk, report["results"], cd.result)
    _check_curve(chk, report["curve"], cd.curve)
    if compare:
        _check_controls(chk, report["controls"], cd.controls)
    return compare


def recompute_report(
    report: Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    key: WatermarkKey | int | str,
    *,
    suspect: Any = None,
    tokenizer: Any = None,
) -> RecomputeResult:
    """Check the input digests, rerun the report's procedure and compare every number.

    ``key`` is the watermark key (object, vLLM integer or key file); its id must be the
    report's. ``suspect`` (a model or a checkpoint path) is needed for open-model audits only;
    ``tokenizer`` overrides the report's tokenizer spec. Raises :class:`InputDigestError`,
    :class:`RecomputeMismatchError` or :class:`NotRecomputableError`, each naming the part.
    """
    files = check_inputs(report, data_dir)
    key = as_key(key)
    if key.key_id != report["key"]["key_id"]:
        raise RecomputeMismatchError(
            f"the watermark key given has id {key.key_id}, the report's key is "
            f"{report['key']['key_id']} (key.key_id)", "key.key_id")
    recorded = dict(report["test"]["detector_config"])
    # reports from before the setting existed let given prompts fill the first windows
    recorded.setdefault("prompt_context", True)
    cfg = DetectorConfig.from_dict(recorded)
    text = report.get("text") or {}
    tok_info = text.get("tokenizer") or {}
    tok = LazyTokenizer(tokenizer if tokenizer is not None else tok_info.get("spec"),
                        tok_info.get("sha256"))
    proc = str(report["procedure"].get("name"))
    chk = _Checker()
    notes: list[str] = []
    if proc in ("detect_files", "detect_corpus"):
        compared = _recompute_detection(report, files, key, cfg, tok, chk, notes)
    elif proc == "audit_closed":
        if not tok.available:
            raise NotRecomputableError("closed audit: the report records no tokenizer; pass "
                                       "one (--tokenizer)", "text.tokenizer")
        compared = _recompute_closed(report, files, key, cfg, tok, chk, notes)
    elif proc == "audit_open":
        compared = _recompute_open(report, files, key, cfg, suspect, chk, notes)
    else:
        raise NotRecomputableError(f"unknown procedure {proc!r}", "procedure.name")
    chk.raise_if_any()
    return RecomputeResult(procedure=proc, checked=chk.checked, controls_checked=compared,
                           notes=notes)


__all__ = [
    "InputDigestError",
    "LazyTokenizer",
    "NotRecomputableError",
    "RecomputeMismatchError",
    "RecomputeResult",
    "ReplayClient",
    "check_inputs",
    "detect_files",
    "load_tokenizer",
    "read_answers",
    "read_teacher",
    "recompute_report",
]
