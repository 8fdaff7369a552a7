"""``fingerprint audit``: was a suspect model trained on our watermarked outputs?"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fingerprint.audit.controls import MIN_CONTROLS, AuditResult
from fingerprint.audit.reading import read_teacher
from fingerprint.cli_detect import add_prompt_context_argument
from fingerprint.cli_output import check_output, write_output
from fingerprint.detect.corpus import Skipped
from fingerprint.detect.detector import SCHEMES, DetectorConfig
from fingerprint.detect.tuples import DEDUP_POLICIES
from fingerprint.errors import ConfigError
from fingerprint.keys import WatermarkKey
from fingerprint.report.model import DEFAULT_SIGNIFICANCE, verdict_decision
from fingerprint.report.model import file_digest as report_file_digest


def add_parsers(sub: Any) -> None:
    """Register ``audit`` on the main parser's subparsers."""
    p = sub.add_parser("audit", help="radioactivity audit of a suspect model (open or closed)")
    p.add_argument("--mode", choices=("open", "closed"), required=True,
                   help="open: read the teacher's text through the suspect's weights; "
                        "closed: query the suspect and score its answers")
    p.add_argument("--suspect", required=True,
                   help="open: 'default' or a local model path; closed: an OpenAI-compatible "
                        "base URL (http://host:port/v1) or a local model path")
    p.add_argument("--suspect-model", default="default",
                   help="model name sent to the endpoint (closed mode)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's API key")
    p.add_argument("--teacher-corpus", required=True,
                   help="JSONL of watermarked completions (as written by `fingerprint generate`)")
    p.add_argument("--prompts", help="JSONL prompts to query the suspect with (closed mode)")
    p.add_argument("--key", required=True, help="watermark key file")
    p.add_argument("--scheme", choices=SCHEMES, default="kgw")
    p.add_argument("--prf", default="siphash24-v1")
    p.add_argument("--gamma", type=float, default=0.25)
    p.add_argument("--context-width", type=int, default=None)
    p.add_argument("--dedup", choices=DEDUP_POLICIES, default=None)
    add_prompt_context_argument(p)
    p.add_argument("--controls", type=controls_count, default=100,
                   help=f"random control keys (M, default 100, at least {MIN_CONTROLS}: fewer "
                        "say too little about the audit's calibration; 100 or more advised)")
    p.add_argument("--top-k", type=int, default=1, help="open mode: predictions scored per "
                                                         "position")
    p.add_argument("--filter-top-n", type=int, default=None,
                   help="closed mode: score only the N most frequent teacher windows (phi)")
    p.add_argument("--checkpoint", default=None,
                   help="closed mode: JSONL of the suspect's answers (resumable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random control keys (drawn when not given; recorded either "
                        "way, so controls can be redone)")
    p.add_argument("--significance", type=significance_level, default=DEFAULT_SIGNIFICANCE,
                   help="level of the verdict, printed and in the report (default "
                        f"{DEFAULT_SIGNIFICANCE:g}): H0 is rejected when p <= it")
    p.add_argument("--out", default="audit.json", help="machine-readable result (JSON)")
    p.add_argument("--report", default=None,
                   help="also write an evidence report here (JSON, plus .html beside it)")
    p.add_argument("--signing-key", default=None,
                   help="Ed25519 key (from `fingerprint keygen --signing`) to sign the report")
    p.set_defaults(func=cmd_audit)


def controls_count(text: str) -> int:
    """``--controls``: an integer, at least :data:`MIN_CONTROLS`."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < MIN_CONTROLS:
        raise argparse.ArgumentTypeError(
            f"{n} control keys are too few to check the audit's calibration: use at least "
            f"{MIN_CONTROLS} (100 or more advised)")
    return n


def significance_level(text: str) -> float:
    """``--significance``: a number strictly between 0 and 1."""
    try:
        level = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < level < 1.0:
        raise argparse.ArgumentTypeError(
            f"the significance level must lie strictly between 0 and 1, got {text}")
    return level


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, hex."""
    return report_file_digest(path)[0]


_SENTENCES = {
    "no_evidence": "NO EVIDENCE: nothing was scored, so H0 cannot be tested either way",
    "inconclusive": "INCONCLUSIVE: the controls failed calibration, the p-value cannot be "
                    "relied on",
    "reject": "REJECTED: the suspect's outputs carry the watermark",
    "not_rejected": "not rejected: no evidence the suspect was trained on watermarked text",
}


def verdict(res: AuditResult, significance: float) -> tuple[str, str]:
    """(decision, sentence) at ``significance``: the decision is the report's verdict."""
    decision = verdict_decision(res.detection, significance, res.controls.calibrated)
    return decision, _SENTENCES[decision]


def _why_nothing_scored(res: AuditResult) -> str:
    if res.mode == "open":
        return "every position of the teacher text was excluded or the texts are too short"
    info = res.inputs
    answers, empty = int(info.get("answers", 0)), int(info.get("empty_answers", 0))
    failed = len(info.get("failed_queries") or [])
    usable = answers - failed - empty
    if usable <= 0:
        return f"no usable answer: {answers} answers, {failed} failed, {empty} empty"
    rules = "made of the prompt" + (" or outside the filter phi" if info.get("filter_phi") else "")
    return f"every window of the {usable} usable answers was excluded ({rules})"


def print_summary(res: AuditResult, significance: float = DEFAULT_SIGNIFICANCE) -> None:
    """A one-screen summary of an audit, with its verdict at ``significance``."""
    d, c = res.detection, res.controls
    decision, sentence = verdict(res, significance)
    print(f"\n== audit ({res.mode} mode) ==")
    print(f"H0: {res.null_hypothesis}")
    print(f"tuples scored     {d.n_scored:,} of {d.n_positions:,} positions")
    if decision == "no_evidence":
        why = _why_nothing_scored(res)
        print(f"no evidence       no tuple was scored ({why}); there is no p-value to report")
    else:
        if d.green_rate is not None:
            print(f"green rate        {d.green_rate:.4f}  (gamma {res.config['gamma']})")
        elif d.score_sum is not None:
            print(f"score sum         {d.score_sum:.4f}")
        print(f"exact p           {d.pvalue:.3g}  (log10 p = {d.log10_pvalue:.2f})")
        print(f"controls          {c.n_keys} random keys (seed {c.seed}): empirical p "
              f"{c.empirical_pvalue:.3g}, KS p {c.ks_pvalue:.3g}, "
              f"{'calibrated' if c.calibrated else 'NOT CALIBRATED'}")
    print(f"verdict at {significance:g}  {sentence}")
    for w in res.warnings:
        print(f"WARNING: {w}")


def _print_skipped(skipped: list[Skipped], limit: int = 10) -> None:
    for s in skipped[:limit]:
        print(f"skipped teacher row {s.source}:{s.row}: {s.reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"skipped {len(skipped) - limit} more teacher rows", file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run an audit, write its result (and report), then print a summary."""
    from fingerprint.models import load_default_tokenizer, load_model, model_fingerprint

    key = WatermarkKey.load(args.key)
    cfg = DetectorConfig(scheme=args.scheme, prf=args.prf, gamma=args.gamma,
                         context_width=args.context_width, dedup=args.dedup,
                         prompt_context=args.prompt_context)
    if args.mode == "closed" and not args.prompts:
        raise ConfigError("closed mode needs --prompts (the prompts to query the suspect)")
    check_output(args.out)  # before the audit, which can take hours
    if args.report:
        check_output(args.report, "--report")
        check_output(Path(args.report).with_suffix(".html"), "--report")
    model: Any = None
    if args.mode == "open" or not args.suspect.startswith(("http://", "https://")):
        model, tok = load_model(args.suspect)
    else:
        tok = load_default_tokenizer()
    # ids outside the vocabulary cannot be the suspect's tokens: such rows are skipped up front
    teacher, skipped = read_teacher(args.teacher_corpus, vocab_size=len(tok))
    _print_skipped(skipped)
    inputs = {"teacher_corpus": {"path": str(args.teacher_corpus),
                                 "sha256": file_digest(args.teacher_corpus),
                                 "texts": len(teacher), "skipped_rows": len(skipped)}}
    if args.mode == "open":
        from fingerprint.audit.reading import audit_open

        res = audit_open(model, teacher, key, cfg, vocab_size=len(tok), top_k=args.top_k,
                         n_controls=args.controls, seed=args.seed, progress=True,
                         suspect_info={"kind": "weights", "spec": args.suspect,
                                       "model_sha256": model_fingerprint(model)},
                         inputs_info=inputs)
    else:
        from fingerprint.audit.clients import HFClient, OpenAIClient
        from fingerprint.audit.querying import audit_closed
        from fingerprint.watermark.generate import read_prompts

        lines, errors = read_prompts(args.prompts)
        for e in errors[:10]:
            print(f"skipped prompt {e}", file=sys.stderr)
        prompts = [p.prompt for p in lines]
        # not "prompts": audit_closed records the number of prompts under that name
        inputs["prompts_file"] = {"path": str(args.prompts),
                                  "sha256": file_digest(args.prompts), "count": len(prompts)}
        client: Any
        if model is None:
            client = OpenAIClient(args.suspect, args.suspect_model,
                                  api_key=os.environ.get(args.api_key_env),
                                  max_tokens=args.max_new_tokens, concurrency=args.concurrency,
                                  timeout=args.timeout, max_retries=args.retries,
                                  rate_limit=args.rate_limit)
        else:
            client = HFClient(model, tok, max_new_tokens=args.max_new_tokens)
        checkpoint = Path(args.checkpoint or Path(args.out).with_suffix(".answers.jsonl"))
        res = audit_closed(client, prompts, key, cfg, tokenizer=tok, checkpoint=checkpoint,
                           teacher=teacher if args.filter_top_n else None,
                           filter_top_n=args.filter_top_n, n_controls=args.controls,
                           seed=args.seed, progress=True, inputs_info=inputs)
        res.inputs["answers_checkpoint"] = {"path": str(checkpoint),
                                            "sha256": file_digest(checkpoint)}
    # written before anything is printed: a summary that fails must not lose the result
    write_output(args.out, json.dumps(res.to_dict(), indent=2))
    print(f"wrote {args.out}")
    if args.report:
        write_report(args, res, tok, model if args.mode == "open" else None)
    print_summary(res, args.significance)
    return 0


def write_report(args: argparse.Namespace, res: AuditResult, tokenizer: Any, model: Any) -> None:
    """The evidence report of an audit: JSON (signed when a signing key is given) and HTML."""
    from fingerprint.report.html import write_html
    from fingerprint.report.model import dump_report, report_from_audit
    from fingerprint.report.sign import public_key_path_for, sign_report

    inputs: dict[str, Any] = {}
    if args.mode == "open" or args.filter_top_n:  # a closed audit reads it for the filter only
        inputs["teacher"] = Path(args.teacher_corpus)
    if args.mode == "closed":
        inputs["prompts"] = Path(args.prompts)
        inputs["answers"] = Path(res.inputs["answers_checkpoint"]["path"])
    report = report_from_audit(res, inputs=inputs, significance=args.significance,
                               controls_seed=res.controls.seed, tokenizer=tokenizer,
                               tokenizer_spec="default", vocab_size=len(tokenizer),
                               suspect_model=model)
    public = None
    if args.signing_key:
        report = sign_report(report, args.signing_key)
        public = public_key_path_for(args.signing_key)
    path = dump_report(report, args.report)
    html = write_html(report, Path(args.report).with_suffix(".html"), public_key=public)
    print(f"wrote {path} ({'signed' if public else 'unsigned'}) and {html}")


__all__ = ["add_parsers", "cmd_audit", "controls_count", "file_digest", "print_summary",
           "significance_level", "verdict"]
