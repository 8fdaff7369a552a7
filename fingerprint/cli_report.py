"""``fingerprint verify``, ``fingerprint report render|sign`` and ``keygen --signing``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fingerprint.cli_output import check_output
from fingerprint.errors import ConfigError
from fingerprint.report.model import ReportError, dump_report, load_report
from fingerprint.report.sign import (
    SigningKeyError,
    load_public_key,
    make_signing_key,
    public_key_sha256,
    sign_report,
    verify_report,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RECOMPUTED = 3


def add_parsers(sub: Any) -> None:
    """Register ``verify`` and ``report``; give an already registered ``keygen`` ``--signing``."""
    p = sub.add_parser("verify", help="check a report's signature; with --data and --key, "
                       "recompute its numbers from its input files")
    p.add_argument("report", help="report JSON file")
    p.add_argument("--public-key", required=True, help="the signer's Ed25519 public key (PEM)")
    p.add_argument("--data", default=None,
                   help="folder holding the report's input files (checked by SHA-256, then "
                   "the statistic and p are recomputed)")
    p.add_argument("--key", default=None, help="watermark key file (needed with --data)")
    p.add_argument("--int-key", type=int, default=None, help="a vLLM integer key instead")
    p.add_argument("--suspect", default=None,
                   help="open-model audits: the suspect's checkpoint folder or .gguf file")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to use instead of the report's ('default' or a local path)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="render or sign a report")
    rsub = p.add_subparsers(dest="report_command", required=True)
    r = rsub.add_parser("render", help="write a self-contained HTML page of a report")
    r.add_argument("report", help="report JSON file")
    r.add_argument("--out", required=True, help="HTML file to write")
    r.add_argument("--public-key", default=None,
                   help="check the signature with this public key and show the outcome")
    r.set_defaults(func=cmd_render)
    s = rsub.add_parser("sign", help="sign a report with an Ed25519 signing key")
    s.add_argument("report", help="report JSON file")
    s.add_argument("--signing-key", required=True,
                   help="private key PEM (from `fingerprint keygen --signing`)")
    s.add_argument("--out", required=True, help="signed report file to write")
    s.set_defaults(func=cmd_sign)
    _extend_keygen(sub)


def _extend_keygen(sub: Any) -> None:
    keygen = getattr(sub, "choices", {}).get("keygen")
    if keygen is None:
        return
    try:
        keygen.add_argument("--signing", action="store_true",
                            help="make an Ed25519 report-signing key pair instead: private PEM "
                            "at --out (mode 0600), public PEM next to it (.pub.pem)")
    except argparse.ArgumentError:  # the keygen command handles --signing itself
        return
    plain_keygen = keygen.get_default("func")

    def run(args: argparse.Namespace) -> int:
        if args.signing:
            return cmd_keygen_signing(args)
        return int(plain_keygen(args))

    keygen.set_defaults(func=run)


def cmd_keygen_signing(args: argparse.Namespace) -> int:
    """``fingerprint keygen --signing --out FILE [--force]``."""
    if getattr(args, "from_int", None) is not None:
        raise ConfigError("--signing makes an Ed25519 key pair; --from-int does not apply")
    out = check_output(args.out, secret_ok=True)
    pub = make_signing_key(out, overwrite=bool(getattr(args, "force", False)))
    fp = public_key_sha256(load_public_key(pub))
    print(f"wrote {args.out} (private, mode 0600) and {pub} (public); public key sha256:{fp}")
    return EXIT_OK


def _failed(err: Exception) -> int:
    part = getattr(err, "part", None)
    where = f" at {part}" if part else ""
    print(f"verification FAILED{where}: {err}", file=sys.stderr)
    return EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the signature; with ``--data``, the input digests and the recomputed numbers."""
    from fingerprint.report.recompute import NotRecomputableError, recompute_report

    if args.data is not None and args.key is None and args.int_key is None:
        raise ConfigError("--data needs the watermark key: --key key.file (or --int-key N)")
    if args.key is not None and args.int_key is not None:
        raise ConfigError("pass either --key or --int-key, not both")
    if args.data is None and (args.key is not None or args.int_key is not None
                              or args.suspect is not None):
        raise ConfigError("--key, --int-key and --suspect recompute numbers: pass --data DIR too")
    _need_file(args.report, "report")
    _need_file(args.public_key, "--public-key")
    if args.data is not None and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data} is not a folder")
    try:
        res = verify_report(args.report, args.public_key)
    except (ReportError, SigningKeyError) as err:
        return _failed(err)
    print(f"signature OK: {args.report} ({res.kind} report, {res.schema}) was signed by public "
          f"key sha256:{res.public_key_sha256}")
    print(f"verdict: {res.verdict}")
    if args.data is None:
        print("numbers not recomputed (pass --data DIR --key KEY_FILE to recompute them)")
        return EXIT_OK
    key: Any = args.key if args.key is not None else args.int_key
    try:
        rec = recompute_report(load_report(args.report), args.data, key,
                               suspect=args.suspect, tokenizer=args.tokenizer)
    except NotRecomputableError as err:
        print(f"inputs: every file's SHA-256 matches ({args.data})")
        print(f"NOT RECOMPUTED ({err.part}): {err}", file=sys.stderr)
        return EXIT_NOT_RECOMPUTED
    except (ReportError, SigningKeyError) as err:
        return _failed(err)
    print(f"inputs: every file's SHA-256 matches ({args.data})")
    print(f"recomputed ({rec.procedure}): {len(rec.checked)} values match: "
          + ", ".join(rec.checked))
    for note in rec.notes:
        print(f"note: {note}")
    return EXIT_OK


def _need_file(path: str, what: str) -> None:
    """A usage error (exit 2), not a failed check, when a file given on the line is missing."""
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path} does not exist or is not a file")


def cmd_render(args: argparse.Namespace) -> int:
    """Write the HTML page of a report; with ``--public-key``, print the signature's state too
    (exit 1 when it is invalid, as ``verify`` does)."""
    from fingerprint.report.html import signature_status, write_html

    _need_file(args.report, "report")
    if args.public_key is not None:
        _need_file(args.public_key, "--public-key")
        load_public_key(args.public_key)  # a file that is not a public key is a usage error
    out_path = check_output(args.out)
    report = load_report(args.report)
    status = signature_status(report, args.public_key)
    out = write_html(report, out_path, public_key=args.public_key, signature=status)
    print(f"wrote {out}")
    print(status["text"], file=sys.stderr if status["state"] == "invalid" else sys.stdout)
    return EXIT_FAILED if status["state"] == "invalid" else EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign a report file; the signed report is written in canonical form."""
    out_path = check_output(args.out)
    signed = sign_report(load_report(args.report), args.signing_key)
    out = dump_report(signed, out_path)
    print(f"wrote {out}, signed by public key sha256:{signed['signature']['public_key_sha256']}")
    return EXIT_OK


__all__ = ["add_parsers", "cmd_keygen_signing", "cmd_render", "cmd_sign", "cmd_verify"]
