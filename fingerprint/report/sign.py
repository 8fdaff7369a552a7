"""Ed25519 signatures over a report's canonical bytes, and their verification.

A signed report carries a detached ``signature`` block::

    {"algorithm": "ed25519", "canonicalization": "fingerprint-canonical-json/1",
     "public_key_sha256": "<SHA-256 of the raw 32-byte public key>",
     "value": "<base64 signature over canonical_bytes(report without 'signature')>",
     "field_sha256": {"results.log10_pvalue": "<SHA-256 of that field's canonical bytes>", ...}}

The signature covers every field but the block itself. ``field_sha256`` (every field down to
three levels) lets a failed verification name the field that changed; a verifier also checks it
against the content, so no part of a signed report can change unnoticed. Reordering keys or
re-encoding the file (indentation, escapes) leaves the canonical bytes, hence the signature,
intact; any changed value fails.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fingerprint.errors import KeyFileError
from fingerprint.report.model import (
    ReportError,
    ReportFormatError,
    canonical_bytes,
    check_schema,
    check_structure,
    join_path,
    load_report,
    parse_report_bytes,
    sha256_hex,
)

ALGORITHM = "ed25519"
CANONICALIZATION = "fingerprint-canonical-json/1"
FIELD_DEPTH = 3
SIGNATURE_FIELDS = frozenset({"algorithm", "canonicalization", "public_key_sha256", "value",
                              "field_sha256"})


class SigningKeyError(KeyFileError):
    """A signing key file that cannot be used: missing, unsafe permissions, wrong type."""


class MissingSignatureError(ReportError):
    """A report without a ``signature`` block."""


class WrongPublicKeyError(ReportError):
    """A report signed by another key than the public key given to check it."""


class SignatureMismatchError(ReportError):
    """A signature that does not match the report: a field, or the signature, was changed."""


class UnsupportedSignatureError(ReportError):
    """A signature block of an unknown algorithm or canonicalization."""


# -- keys ---------------------------------------------------------------------------------------
def public_key_path_for(private_key_path: str | os.PathLike[str]) -> Path:
    """Where :func:`make_signing_key` puts the public key: ``x.pem`` -> ``x.pub.pem``."""
    p = Path(private_key_path)
    stem = p.name[:-4] if p.name.endswith(".pem") else p.name
    return p.with_name(stem + ".pub.pem")


def make_signing_key(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Make an Ed25519 signing key: private PEM at ``path`` (mode 0600), public PEM next to it.

    Returns the public key's path (see :func:`public_key_path_for`). Refuses to overwrite either
    file unless ``overwrite``.
    """
    priv_path = Path(path)
    pub_path = public_key_path_for(priv_path)
    if not overwrite:
        for p in (priv_path, pub_path):
            if p.exists():
                raise SigningKeyError(f"{p} already exists; pass overwrite=True (or --force) "
                                      "to replace it")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(priv_path, flags, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{priv_path} already exists; pass overwrite=True (or --force) to "
                              "replace it") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, priv)
    finally:
        os.close(fd)
    pub_path.write_bytes(pub)
    return pub_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM; refuses a file that group or others can access."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SigningKeyError(f"signing key {p} does not exist; make one with "
                              "`fingerprint keygen --signing --out FILE`") from None
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"signing key {p} is not a regular file")
    if st.st_mode & 0o077:
        raise SigningKeyError(f"signing key {p} is accessible by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}` and retry")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{p} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read an Ed25519 public key PEM (SubjectPublicKeyInfo)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"public key {p} does not exist") from None
    except OSError as err:
        raise SigningKeyError(f"cannot read public key {p}: {err}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{p} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def public_key_sha256(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: the signer's fingerprint."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)


# -- signing ------------------------------------------------------------------------------------
def _body(report: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "signature"}


def field_digests(body: Mapping[str, Any], depth: int = FIELD_DEPTH) -> dict[str, str]:
    """SHA-256 of the canonical bytes of every field down to ``depth`` levels (dotted paths)."""
    out: dict[str, str] = {}

    def walk(obj: Any, path: str, level: int) -> None:
        out[path] = sha256_hex(canonical_bytes(obj))
        if isinstance(obj, dict) and level < depth:
            for k, v in obj.items():
                walk(v, join_path(path, k), level + 1)

    for k, v in body.items():
        walk(v, k, 1)
    return out


def sign_report(report: Mapping[str, Any], private_key_path: str | os.PathLike[str]
                ) -> dict[str, Any]:
    """A copy of ``report`` with a detached Ed25519 ``signature`` block (replacing any old one).

    The signature covers :func:`~fingerprint.report.model.canonical_bytes` of the report
    without its ``signature`` field.
    """
    key = load_private_key(private_key_path)
    body = _body(report)
    check_structure(body)
    message = canonical_bytes(body)
    signature = {
        "algorithm": ALGORITHM,
        "canonicalization": CANONICALIZATION,
        "public_key_sha256": public_key_sha256(key),
        "value": base64.b64encode(key.sign(message)).decode("ascii"),
        "field_sha256": field_digests(body),
    }
    return {**body, "signature": signature}


# -- verification -------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking a report. ``ok`` is False only when errors are not raised."""

    ok: bool
    source: str
    schema: str | None = None
    kind: str | None = None
    key_id: str | None = None
    public_key_sha256: str | None = None
    verdict: str | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    part: str | None = None
    error_type: str | None = None


def _changed_fields(recorded: Any, body: Mapping[str, Any]) -> list[str] | None:
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
        return None
    current = field_digests(body)
    changed = [p for p in sorted(set(recorded) | set(current))
               if recorded.get(p) != current.get(p)]
    leaves = [p for p in changed
              if not any(q.startswith(p + ".") for q in changed if q != p)]
    out = []
    for p in leaves:
        if p not in recorded:
            out.append(f"{p} (added)")
        elif p not in current:
            out.append(f"{p} (removed)")
        else:
            out.append(p)
    return out


def _as_report(report: Any) -> tuple[dict[str, Any], str]:
    if isinstance(report, str | os.PathLike):
        return load_report(report), f"report file {report}"
    if isinstance(report, bytes | bytearray):
        return parse_report_bytes(bytes(report)), "the report"
    if isinstance(report, Mapping):
        return dict(report), "the report"
    raise ReportFormatError(f"expected a report path, bytes or dict, got "
                            f"{type(report).__name__}")


def verify_signature(report: Mapping[str, Any], public_key_path: str | os.PathLike[str]
                     ) -> str:
    """Check the ``signature`` block of a parsed report; returns the signer's fingerprint.

    Raises :class:`MissingSignatureError`, :class:`UnsupportedSignatureError`,
    :class:`WrongPublicKeyError` or :class:`SignatureMismatchError`, each naming the failing
    part (for a changed field: its dotted path).
    """
    check_schema(report)
    sig = report.get("signature")
    if sig is None:
        raise MissingSignatureError("the report is not signed: it has no 'signature' block "
                                    "(sign it with `fingerprint report sign`)", "signature")
    if not isinstance(sig, dict):
        raise ReportFormatError("the report's 'signature' field is not an object", "signature")
    unknown = sorted(set(sig) - SIGNATURE_FIELDS)
    if unknown:
        raise UnsupportedSignatureError(
            f"unknown field signature.{unknown[0]} in the signature block",
            f"signature.{unknown[0]}")
    missing = sorted(SIGNATURE_FIELDS - set(sig))
    if missing:
        raise ReportFormatError(f"the signature block has no {missing[0]!r} field",
                                f"signature.{missing[0]}")
    if sig["algorithm"] != ALGORITHM:
        raise UnsupportedSignatureError(
            f"unsupported signature algorithm {sig['algorithm']!r} (signature.algorithm); "
            f"expected {ALGORITHM!r}", "signature.algorithm")
    if sig["canonicalization"] != CANONICALIZATION:
        raise UnsupportedSignatureError(
            f"unsupported canonicalization {sig['canonicalization']!r} "
            f"(signature.canonicalization); expected {CANONICALIZATION!r}",
            "signature.canonicalization")
    pub = load_public_key(public_key_path)
    expected = public_key_sha256(pub)
    if sig["public_key_sha256"] != expected:
        raise WrongPublicKeyError(
            f"wrong public key: the report was signed by key sha256:{sig['public_key_sha256']}"
            f" (signature.public_key_sha256), but {public_key_path} is key sha256:{expected}",
            "signature.public_key_sha256")
    try:
        value = base64.b64decode(str(sig["value"]), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureMismatchError("signature.value is not valid base64",
                                     "signature.value") from None
    body = _body(report)
    message = canonical_bytes(body)
    try:
        if len(value) != 64:
            raise InvalidSignature
        pub.verify(value, message)
    except InvalidSignature:
        changed = _changed_fields(sig["field_sha256"], body)
        if changed:
            raise SignatureMismatchError(
                "signature mismatch: the report was changed after signing; changed field(s): "
                + ", ".join(changed[:10]), changed[0].split(" ")[0]) from None
        raise SignatureMismatchError(
            "signature mismatch: the report's fields are as signed, but signature.value does "
            "not match them (the signature itself was altered)", "signature.value") from None
    if sig["field_sha256"] != field_digests(body):
        raise SignatureMismatchError(
            "signature.field_sha256 was altered: its digests do not match the signed content",
            "signature.field_sha256")
    return expected


def verify_report(
    report: str | os.PathLike[str] | bytes | Mapping[str, Any],
    public_key_path: str | os.PathLike[str],
    *,
    raise_errors: bool = True,
) -> VerifyResult:
    """Verify a report file (or bytes, or parsed dict) against an Ed25519 public key.

    Checks, in order: the file is complete UTF-8 JSON (no duplicate keys, no NaN), the schema
    version is known, a signature block exists, the public key is the signer's, and the
    signature matches the canonical content. Raises a :class:`~fingerprint.report.model.
    ReportError` subclass naming the failing part; with ``raise_errors=False`` returns a
    :class:`VerifyResult` with ``ok=False`` instead.
    """
    source = str(report) if isinstance(report, str | os.PathLike) else "the report"
    try:
        data, source = _as_report(report)
        fingerprint = verify_signature(data, public_key_path)
        check_structure(_body(data))
    except (ReportError, SigningKeyError) as err:
        if raise_errors:
            raise
        return VerifyResult(ok=False, source=source, error=str(err),
                            part=getattr(err, "part", None), error_type=type(err).__name__)
    return VerifyResult(
        ok=True, source=source, schema=data["schema"], kind=data["kind"],
        key_id=data["key"].get("key_id"), public_key_sha256=fingerprint,
        verdict=data["verdict"].get("sentence"), checks=["signature"])


__all__ = [
    "ALGORITHM",
    "CANONICALIZATION",
    "MissingSignatureError",
    "SignatureMismatchError",
    "SigningKeyError",
    "UnsupportedSignatureError",
    "VerifyResult",
    "WrongPublicKeyError",
    "field_digests",
    "load_private_key",
    "load_public_key",
    "make_signing_key",
    "public_key_path_for",
    "public_key_sha256",
    "sign_report",
    "verify_report",
    "verify_signature",
]
