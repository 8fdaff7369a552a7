"""The ``fingerprint`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fingerprint.cli_output import check_output
from fingerprint.errors import FingerprintError
from fingerprint.keys import WatermarkKey


def _cmd_keygen(args: argparse.Namespace) -> int:
    if getattr(args, "signing", False):  # an Ed25519 key for signing reports
        from fingerprint.cli_report import cmd_keygen_signing

        return cmd_keygen_signing(args)
    if args.from_int is not None:
        key = WatermarkKey.from_int(args.from_int)
        print("warning: an integer key holds at most 64 bits; use it only to interoperate "
              "with vLLM", file=sys.stderr)
    else:
        key = WatermarkKey.generate()
    path = key.save(check_output(args.out, secret_ok=True), overwrite=args.force)
    print(f"wrote {path} (mode 0600), key id {key.key_id}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fingerprint.demo import run_demo

    return run_demo(Path(args.out), n_prompts=args.prompts, max_new_tokens=args.new_tokens,
                    student_steps=args.steps, controls=args.controls)


def _cmd_generate(args: argparse.Namespace) -> int:
    from fingerprint.errors import ConfigError
    from fingerprint.models import load_model
    from fingerprint.watermark.generate import generate_jsonl, make_watermark

    if args.no_watermark:
        if args.key is not None:
            raise ConfigError("pass either --key or --no-watermark, not both")
        key, scheme = None, "none"
    elif args.key is None:
        raise ConfigError("--key KEY_FILE is required (make one with `fingerprint keygen`); "
                          "pass --no-watermark for an unwatermarked control corpus")
    else:
        key, scheme = WatermarkKey.load(args.key), args.scheme
    make_watermark(scheme, key, gamma=args.gamma, delta=args.delta,  # check before loading
                   context_width=args.context_width, prf=args.prf)
    check_output(args.out, make_folders=True)  # generate makes the folders it needs
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(args.model, device=device)
    counts = generate_jsonl(
        model, tokenizer, args.prompts, args.out, model_name=args.model,
        max_prompts=args.max_prompts, progress=not args.quiet, key=key, scheme=scheme,
        gamma=args.gamma, delta=args.delta, context_width=args.context_width, prf=args.prf,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, do_sample=not args.greedy, chat=not args.no_chat,
        batch_size=args.batch_size, seed=args.seed)
    left = counts["total"] - counts["done_before"] - counts["generated"]
    print(f"wrote {counts['generated']} results to {args.out} ({counts['done_before']} were "
          f"already there, {left} left, {counts['broken_lines']} broken prompt lines skipped)")
    return 0


def add_watermark_arguments(p: argparse.ArgumentParser) -> None:
    """The watermark scheme's public settings, shared by ``generate`` and ``serve``."""
    p.add_argument("--scheme", choices=("kgw", "gumbel"), default="kgw")
    p.add_argument("--gamma", type=float, default=0.25, help="KGW green fraction (0.25)")
    p.add_argument("--delta", type=float, default=2.0, help="KGW green logit bias (2.0)")
    p.add_argument("--context-width", type=int, default=None,
                   help="window width h, 1..16 (default: 2 for kgw, 4 for gumbel)")
    p.add_argument("--prf", default="siphash24-v1",
                   help="keyed PRF: siphash24-v1 (default) or philox4x32-10-v1 (vLLM)")


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

    from fingerprint.audit.controls import MIN_CONTROLS
    from fingerprint.cli_audit import controls_count

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded model")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--prompts", type=int, default=48, help="shipped prompts to answer")
    p.add_argument("--new-tokens", type=int, default=48, help="tokens per answer")
    p.add_argument("--steps", type=int, default=300, help="student training steps")
    p.add_argument("--controls", type=controls_count, default=100,
                   help=f"random control keys per audit (at least {MIN_CONTROLS})")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="generate watermarked completions of a prompts file "
                       "(resumable)")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"prompt": ...} a line')
    p.add_argument("--out", required=True,
                   help="JSONL results file; rerunning continues where a run stopped")
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2) or a local checkpoint folder / .gguf file")
    p.add_argument("--key", default=None, help="secret key file (from `fingerprint keygen`)")
    p.add_argument("--no-watermark", action="store_true",
                   help="generate without a watermark (a control corpus); no key needed")
    add_watermark_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding (KGW or --no-watermark only)")
    p.add_argument("--no-chat", action="store_true",
                   help="feed prompts raw instead of through the chat template")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="seed torch's RNG for each batch")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--max-prompts", type=int, default=None,
                   help="stop after this many new results (rerun to continue)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_generate)

    from fingerprint.cli_audit import add_parsers as add_audit_parsers
    from fingerprint.cli_detect import add_parsers as add_detect_parsers

    add_detect_parsers(sub)
    add_audit_parsers(sub)

    from fingerprint.cli_report import add_parsers as add_report_parsers

    add_report_parsers(sub)

    from fingerprint.cli_serve import add_parsers as add_serve_parsers

    add_serve_parsers(sub)
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
    except OSError as err:  # a file the command could not read or write
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
