"""``fingerprint detect`` and ``fingerprint calibrate``: command-line detection on files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.cli_output import check_output, write_output
from fingerprint.detect.corpus import CorpusReader, Skipped, detect_corpus, usable_records
from fingerprint.detect.detector import SCHEMES, Detector, DetectorConfig
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.detect.tuples import DEDUP_POLICIES
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey
from fingerprint.models import LazyTokenizer


def _add_test_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+",
                   help=".jsonl, .parquet, or .txt / .md / suffix-less files (one text each)")
    p.add_argument("--scheme", choices=SCHEMES, default="kgw")
    p.add_argument("--prf", default="siphash24-v1", help="siphash24-v1 (default) or philox")
    p.add_argument("--gamma", type=float, default=0.25, help="KGW green fraction")
    p.add_argument("--alpha", type=float, default=0.1, help="dual-key Gumbel weight of key B")
    p.add_argument("--context-width", type=int, default=None, help="h (default per scheme)")
    p.add_argument("--dedup", choices=DEDUP_POLICIES, default=None,
                   help="tuple (KGW default), context (Gumbel default), or none")
    p.add_argument("--skip-prompt-windows", action="store_true",
                   help="do not score completion windows that occur in the prompt")
    add_prompt_context_argument(p)
    p.add_argument("--tokenizer", default="default",
                   help="tokenizer for text inputs: 'default' (SmolLM2) or a local path")
    p.add_argument("--normalize", choices=("NFC", "NFKC", "none"), default="NFC")
    p.add_argument("--homoglyphs", action="store_true", help="map confusable characters")
    p.add_argument("--text-field", default=None)
    p.add_argument("--ids-field", default=None)
    p.add_argument("--prompt-ids-field", default=None)
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--engine", choices=("stream", "ray"), default=None,
                   help="stream: in-process, files read in bounded chunks; ray: on a Ray "
                        "cluster (pip install 'fingerprint[ray]'); see docs/scale.md")


def add_prompt_context_argument(p: argparse.ArgumentParser) -> None:
    """``--prompt-context`` / ``--no-prompt-context``, as the watermark was generated."""
    p.add_argument("--prompt-context", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the first completion tokens' windows read the row's prompt ids, "
                        "as at generation (default: yes for kgw, no for the Gumbel schemes, "
                        "as vLLM)")


def add_parsers(sub: Any) -> None:
    """Register ``detect`` and ``calibrate`` on the main parser's subparsers."""
    p = sub.add_parser("detect", help="test texts or token ids for a watermark key")
    _add_test_options(p)
    p.add_argument("--key", action="append", default=[],
                   help="key file (repeat for several keys: best key, corrected p)")
    p.add_argument("--int-key", type=int, action="append", default=[],
                   help="a vLLM integer key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("calibrate", help="p-values under many random keys: empirical FPR, KS")
    _add_test_options(p)
    p.add_argument("--n-keys", type=int, default=500)
    p.add_argument("--alpha-levels", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--seed", type=int, default=None,
                   help="draw the random keys from this seed (reproducible runs; default: the "
                        "OS's CSPRNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)


def _config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig(scheme=args.scheme, prf=args.prf, gamma=args.gamma, alpha=args.alpha,
                          context_width=args.context_width, dedup=args.dedup,
                          skip_prompt_windows=args.skip_prompt_windows,
                          prompt_context=args.prompt_context)


def _keys(args: argparse.Namespace) -> list[WatermarkKey]:
    keys = [WatermarkKey.load(k) for k in args.key]
    keys += [WatermarkKey.from_int(k) for k in args.int_key]
    if not keys:
        raise ConfigError("give the watermark key: --key key.file (or --int-key N for vLLM)")
    return keys


def _reader(args: argparse.Namespace) -> CorpusReader:
    return CorpusReader([Path(p) for p in args.inputs], text_field=args.text_field,
                        ids_field=args.ids_field, prompt_ids_field=args.prompt_ids_field)


def _normalize(args: argparse.Namespace) -> NormalizeConfig:
    return NormalizeConfig(form=args.normalize, homoglyphs=args.homoglyphs)


def _print_skipped(skipped: list[Skipped]) -> None:
    for s in skipped[:20]:
        print(f"skipped {s.source} row {s.row}: {s.reason}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped rows", file=sys.stderr)


def cmd_detect(args: argparse.Namespace) -> int:
    """Run the exact test on the inputs, print a table, write JSON."""
    cfg = _config(args)
    keys = _keys(args)
    out_path = check_output(args.out)
    tok = LazyTokenizer(args.tokenizer)
    rows = []
    skipped: list[Skipped] = []
    for key in keys:
        if args.engine:
            res, skipped = _detect_engine(args, key, cfg, tok)
            rows.append(res)
            continue
        reader = _reader(args)
        res, skipped = detect_corpus(Detector(key, cfg), reader, tokenizer=tok,
                                     normalize=_normalize(args), progress=not args.quiet)
        rows.append(res)
    best = int(np.argmin([r.log10_pvalue for r in rows]))
    from fingerprint import stats

    corrected = stats.combine_bonferroni_log10(rows[best].log10_pvalue, len(rows))
    out = {"config": cfg.to_dict(), "results": [r.to_dict() for r in rows],
           "best_key_id": rows[best].key_id, "family_wise_log10_pvalue": corrected,
           "skipped": [vars(s) for s in skipped]}
    if out_path is not None:
        write_output(out_path, json.dumps(out, indent=2))
    print(f"\n{'key id':<38}{'scored':>10}{'statistic':>14}{'log10 p':>12}{'p':>12}")
    for r in rows:
        print(f"{r.key_id:<38}{r.n_scored:>10}{r.statistic:>14.4g}{r.log10_pvalue:>12.3f}"
              f"{r.pvalue:>12.3g}")
    if len(rows) > 1:
        print(f"best key {rows[best].key_id}: family-wise (Bonferroni, {len(rows)} keys) "
              f"log10 p = {corrected:.3f}")
    print(f"H0: {rows[best].null_hypothesis}")
    if rows[best].no_evidence:
        print("no evidence: nothing was scored")
    _print_skipped(skipped)
    if out_path is not None:
        print(f"wrote {out_path}")
    return _exit_unusable(skipped, rows[best].n_positions == 0)


def _exit_unusable(skipped: list[Skipped], nothing_read: bool) -> int:
    """0, or 2 (a usage error) when rows were given but every one was skipped."""
    if skipped and nothing_read:
        print(f"error: every row with data was skipped ({len(skipped)}); check the field "
              "options (--ids-field, --text-field) and the reasons above", file=sys.stderr)
        return 2
    return 0


def _check_calibration_options(args: argparse.Namespace) -> None:
    """Refuse bad levels and key counts before any scoring."""
    if args.n_keys < 2:
        raise ConfigError(f"--n-keys must be at least 2, got {args.n_keys}")
    for a in args.alpha_levels:
        if not 0.0 < a < 1.0:
            raise ConfigError(f"--alpha-levels must lie strictly between 0 and 1, got {a}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Score the inputs under random keys; report empirical FPR and KS."""
    from fingerprint.detect.calibrate import calibrate

    cfg = _config(args)
    _check_calibration_options(args)
    out_path = check_output(args.out)
    progress = not args.quiet
    if args.engine:
        opts = {**_engine_options(args), "n_keys": args.n_keys,
                "alphas": tuple(args.alpha_levels), "seed": args.seed}
        if args.engine == "ray":
            from fingerprint.engines.ray_engine import calibrate_ray

            rep, skipped = calibrate_ray(args.inputs, cfg, progress=progress, **opts)
        else:
            from fingerprint.engines.stream import calibrate_stream

            rep, skipped = calibrate_stream(args.inputs, cfg, progress=progress, **opts)
    else:
        reader = _reader(args)
        tok = LazyTokenizer(args.tokenizer)
        seqs, proms = [], []
        skipped = []
        for rec, ids in usable_records(reader, tok, _normalize(args), None, skipped):
            seqs.append(ids)
            proms.append(np.asarray(rec.prompt_ids or [], dtype=np.int64))
        if not seqs:
            _print_skipped(skipped)
            raise InputError("nothing to calibrate on: the inputs hold no usable row")
        rep = calibrate(seqs, cfg, prompts=proms, n_keys=args.n_keys,
                        alphas=tuple(args.alpha_levels), seed=args.seed, progress=progress)
    return _finish_calibration(rep, skipped, out_path)


def _finish_calibration(rep: Any, skipped: list[Skipped], out_path: Path | None) -> int:
    """Write, then print, a calibration report: exit 0 if calibrated, 1 if not."""
    if rep.n_scored == 0:
        _print_skipped(skipped)
        raise InputError("nothing to calibrate on: no tuple was scored (a p-value of no "
                         "evidence is uniform by construction and calibrates nothing)")
    if out_path is not None:
        write_output(out_path, json.dumps({**rep.to_dict(), "skipped": [vars(s) for s in skipped]},
                                          indent=2))
    s = rep.summary
    print(f"\n{rep.n_keys} random keys, {rep.n_scored} scored tuples per key")
    for a, f, (lo, hi), ok in zip(s.alphas, s.fpr, s.fpr_ci, s.alpha_inside, strict=True):
        print(f"  alpha {a:<6} empirical FPR {f:.4f}  99% CI [{lo:.4f}, {hi:.4f}]  "
              f"{'ok' if ok else 'OUT OF INTERVAL'}")
    print(f"  KS vs U(0,1): statistic {s.ks_statistic:.4f}, p {s.ks_pvalue:.3g}")
    print("calibrated" if rep.calibrated else "NOT CALIBRATED: p-values are not uniform")
    _print_skipped(skipped)
    if out_path is not None:
        print(f"wrote {out_path}")
    return 0 if rep.calibrated else 1


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    from fingerprint.engines.stream import Fields

    return {"tokenizer": LazyTokenizer(args.tokenizer), "normalize": _normalize(args),
            "fields": Fields(args.text_field, args.ids_field, args.prompt_ids_field)}


def _detect_engine(args: argparse.Namespace, key: WatermarkKey, cfg: DetectorConfig,
                   tok: LazyTokenizer) -> tuple[Any, list[Skipped]]:
    """``detect --engine``: one key on the streaming or the Ray engine."""
    opts = {**_engine_options(args), "tokenizer": tok}
    if args.engine == "ray":
        from fingerprint.engines.ray_engine import detect_ray

        return detect_ray(args.inputs, cfg, key, progress=not args.quiet, **opts)
    from fingerprint.engines.stream import detect_stream

    return detect_stream(args.inputs, Detector(key, cfg), progress=not args.quiet, **opts)


__all__ = ["add_parsers", "cmd_calibrate", "cmd_detect"]
