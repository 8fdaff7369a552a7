"""Signed, self-checking reports of detections and audits: JSON, signature, recompute, HTML.

``render_html``/``write_html`` (matplotlib, jinja2) and ``recompute_report``/``detect_files``
(torch) are imported on first use.
"""

from typing import Any

from fingerprint.report.model import (
    SCHEMA,
    CorpusDetection,
    ReportError,
    ReportFormatError,
    UnknownSchemaError,
    canonical_bytes,
    dump_report,
    load_report,
    report_from_audit,
    report_from_detection,
)
from fingerprint.report.sign import (
    MissingSignatureError,
    SignatureMismatchError,
    SigningKeyError,
    VerifyResult,
    WrongPublicKeyError,
    make_signing_key,
    sign_report,
    verify_report,
)

_LAZY = {"render_html": "html", "write_html": "html", "recompute_report": "recompute",
         "detect_files": "recompute"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"fingerprint.report.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fingerprint.report' has no attribute {name!r}")


__all__ = [
    "SCHEMA",
    "CorpusDetection",
    "MissingSignatureError",
    "ReportError",
    "ReportFormatError",
    "SignatureMismatchError",
    "SigningKeyError",
    "UnknownSchemaError",
    "VerifyResult",
    "WrongPublicKeyError",
    "canonical_bytes",
    "detect_files",
    "dump_report",
    "load_report",
    "make_signing_key",
    "recompute_report",
    "render_html",
    "report_from_audit",
    "report_from_detection",
    "sign_report",
    "verify_report",
    "write_html",
]
