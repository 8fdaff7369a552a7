"""The ``fingerprint`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fingerprint.errors import FingerprintError
from fingerprint.keys import WatermarkKey


def _cmd_keygen(args: argparse.Namespace) -> int:
    if args.from_int is not None:
        key = WatermarkKey.from_int(args.from_int)
        print("warning: an integer key holds at most 64 bits; use it only to interoperate "
              "with vLLM", file=sys.stderr)
    else:
        key = WatermarkKey.generate()
    path = key.save(args.out, overwrite=args.force)
    print(f"wrote {path} (mode 0600), key id {key.key_id}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fingerprint.demo import run_demo

    return run_demo(Path(args.out), max_tokens=args.tokens)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fingerprint",
        description="Keyed LLM watermarks, exact detection, and radioactivity audits.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make a new secret watermark key file (mode 0600)")
    p.add_argument("--out", required=True, help="where to write the key file")
    p.add_argument("--from-int", type=int, default=None,
                   help="wrap a vLLM-style integer key (weaker: at most 64 bits)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded model")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--tokens", type=int, default=4000, help="human-text tokens to score")
    p.set_defaults(func=_cmd_demo)

    from fingerprint.cli_detect import add_parsers as add_detect_parsers

    add_detect_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fingerprint`` command."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = int(args.func(args))
    except FingerprintError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
