"""Radioactivity experiment: are students distilled from watermarked answers caught by the audit?

One run, on the embedded SmolLM2-135M-Instruct teacher:

1. the teacher answers the shipped prompts (``fingerprint/data/prompts.jsonl``) twice, sampling at
   temperature 0.7: once watermarked (KGW by default: gamma 0.25, delta 4, h 1) and once without
   a watermark;
2. for each watermarked fraction rho (default 0, 0.05, 0.25, 1) a student is trained from scratch
   (:func:`fingerprint.distill.train_student`, same seed, same number of training tokens) on a
   mixture made by prompt: a fixed random rho share of the prompts contributes its watermarked
   answer, every other prompt its unwatermarked one (the sets are nested: the 5% set lies inside
   the 25% set);
3. each student is audited with ``M`` random-key controls:

   * ``open``: its weights read the whole watermarked corpus (the provider does not know which
     of its answers the suspect trained on);
   * ``open-seen`` (for 0 < rho < 1): its weights read only the watermarked answers it was
     trained on (the supervised setting of the literature, an upper bound on what reading can
     show);
   * ``closed``: it is queried like an API (greedy answers to the same prompts through
     :class:`~fingerprint.audit.clients.HFClient`) and its answers are scored;

4. null controls: the untouched base model (SmolLM2 itself, never trained on watermarked text)
   is audited in open mode; the rho = 0 student is a null too;
5. negative control: the rho = 0 student (open and closed) and the base model (open) are audited
   again with ``dedup="none"``: every repeated (window, token) counts again, which the
   radioactivity literature warns inflates the evidence; the random-key controls are expected
   to fail calibration there.

It prints one table (suspect, rho, mode, dedup, tuples scored, green rate, log10 p, the controls'
KS p-value, the empirical p-value of the real key among the controls, whether the controls are
calibrated), the audits' time split, and checks the targets. Everything is written under
``--out``: the teacher corpora, the students' answers, ``results.json`` and a plot of log10 p
against the tuples scored so far (``results_log10p.png``, or ``--plot``).

Teacher corpora and trained students are cached under ``--out`` keyed by their settings, so a
rerun with the same settings only redoes the audits.

Run from the repository root::

    python3 benchmarks/radioactivity/run.py                 # the CPU budget (see README.md)
    python3 benchmarks/radioactivity/run.py --quick         # a smoke run, a few minutes
    python3 benchmarks/radioactivity/run.py --device cuda --new-tokens 256 --steps 2000 \\
        --batch-size 32 --seq-len 256                       # a GPU budget
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.audit.clients import HFClient
from fingerprint.audit.controls import AuditResult
from fingerprint.audit.querying import audit_closed
from fingerprint.audit.reading import TeacherText, audit_open
from fingerprint.demo import shipped_prompts
from fingerprint.detect.detector import DetectorConfig
from fingerprint.distill import train_student
from fingerprint.keys import WatermarkKey
from fingerprint.models import load_default_model
from fingerprint.watermark import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import cpu_model

TARGET_CLOSED_RHO1 = -12.0  # log10 p of the rho = 1 student, closed mode
TARGET_OPEN_RHO005 = -5.0  # log10 p of the rho = 0.05 student, open mode
TARGET_FORWARD_SHARE = 0.90  # share of a reading-mode audit's wall time in the model forward


# --------------------------------------------------------------------------- helpers


class Clock:
    """Prints numbered stages with the elapsed time, and keeps each stage's duration."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.stages: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, title: str) -> None:
        self.close()
        self.current = title
        print(f"\n== {title}  (t = {time.perf_counter() - self.t0:.0f} s, "
              f"load average {os.getloadavg()[0]:.1f})", flush=True)

    def close(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.stages[self.current] = now - self.last
        self.last = now
        self.current = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def machine_info(device: str) -> dict[str, Any]:
    """What ran the experiment."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device,
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def experiment_key(seed: int) -> WatermarkKey:
    """A 256-bit watermark key derived from ``seed``, so that a rerun reuses the same key."""
    secret = hashlib.sha256(f"fingerprint radioactivity experiment/{seed}".encode()).digest()
    return WatermarkKey(secret, "master256")


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Answer:
    """One teacher answer (token ids and text)."""

    prompt: str
    prompt_ids: list[int]
    completion_ids: list[int]
    completion: str


def teacher_answers(path: Path, settings: dict[str, Any], make: Any) -> list[Answer]:
    """Answers cached in ``path`` when written with ``settings``, else ``make()`` (and cache)."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        if lines and json.loads(lines[0]).get("settings") == settings:
            print(f"   reusing {path}")
            return [Answer(**json.loads(line)) for line in lines[1:]]
    results = make()
    answers = [Answer(r.prompt, list(r.prompt_ids), list(r.completion_ids), r.completion)
               for r in results]
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"settings": settings}) + "\n")
        for a in answers:
            f.write(json.dumps(a.__dict__) + "\n")
    return answers


def mixture(wm: list[Answer], plain: list[Answer], rho: float, order: np.ndarray
            ) -> tuple[list[list[int]], list[int]]:
    """Training sequences with the watermarked answers of the first ``round(rho * n)`` prompts
    of ``order`` and the unwatermarked answers of the others; also those prompts' indices."""
    k = round(rho * len(wm))
    marked = sorted(int(i) for i in order[:k])
    chosen = set(marked)
    seqs = [(wm[i] if i in chosen else plain[i]) for i in range(len(wm))]
    return [a.prompt_ids + a.completion_ids for a in seqs], marked


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    suspect: str
    rho: float | None
    mode: str
    dedup: str
    result: AuditResult

    def to_dict(self) -> dict[str, Any]:
        d = self.result.detection
        c = self.result.controls
        return {
            "suspect": self.suspect, "rho": self.rho, "mode": self.mode, "dedup": self.dedup,
            "n_scored": d.n_scored, "n_positions": d.n_positions, "green_rate": d.green_rate,
            "log10_pvalue": d.log10_pvalue, "zscore": d.zscore,
            "controls": {"n_keys": c.n_keys, "ks_statistic": c.ks_statistic,
                         "ks_pvalue": c.ks_pvalue, "fpr_at_001": c.fpr_at_001,
                         "empirical_pvalue": c.empirical_pvalue, "calibrated": c.calibrated,
                         "log10_pvalues": c.log10_pvalues},
            "curve": self.result.curve, "timing": self.result.timing,
            "inputs": self.result.inputs, "warnings": self.result.warnings,
        }


def fmt_rho(rho: float | None) -> str:
    return "-" if rho is None else f"{rho:g}"


def print_table(rows: list[Row]) -> str:
    head = (f"{'suspect':<10}{'rho':>6}  {'mode':<10}{'dedup':<7}{'scored':>8}{'green':>8}"
            f"{'log10 p':>10}{'ctrl KS p':>11}{'emp p':>8}  calibrated")
    lines = [head, "-" * len(head)]
    for r in rows:
        d, c = r.result.detection, r.result.controls
        green = "-" if d.green_rate is None else f"{d.green_rate:.3f}"
        lines.append(
            f"{r.suspect:<10}{fmt_rho(r.rho):>6}  {r.mode:<10}{r.dedup:<7}{d.n_scored:>8}"
            f"{green:>8}{d.log10_pvalue:>10.2f}{c.ks_pvalue:>11.3g}{c.empirical_pvalue:>8.3f}"
            f"  {'yes' if c.calibrated else 'NO'}")
    text = "\n".join(lines)
    print(text)
    return text


def forward_shares(rows: list[Row]) -> tuple[str, list[dict[str, Any]]]:
    """Time split of every reading-mode audit (tuple dedup rows)."""
    lines = [f"{'suspect':<10}{'rho':>6}  {'mode':<10}{'forward s':>10}{'scoring s':>10}"
             f"{'controls s':>11}{'fwd/all':>9}{'fwd/(fwd+score)':>17}"]
    out = []
    for r in rows:
        if not r.mode.startswith("open"):
            continue
        t = r.result.timing
        fwd, sc, ctl = t["forward_s"], t["scoring_s"], t["controls_s"]
        share_all = fwd / max(fwd + sc + ctl, 1e-12)
        share_read = fwd / max(fwd + sc, 1e-12)
        out.append({"suspect": r.suspect, "rho": r.rho, "mode": r.mode, "dedup": r.dedup,
                    "forward_s": fwd, "scoring_s": sc, "controls_s": ctl,
                    "forward_share": share_all, "forward_share_reading": share_read})
        lines.append(f"{r.suspect:<10}{fmt_rho(r.rho):>6}  {r.mode:<10}{fwd:>10.2f}{sc:>10.2f}"
                     f"{ctl:>11.2f}{share_all:>9.1%}{share_read:>17.1%}"
                     + ("   (dedup=none)" if r.dedup == "none" else ""))
    text = "\n".join(lines)
    print(text)
    return text, out


def plot_title(args: dict[str, Any], n_prompts: int) -> str:
    wm = (f"gamma={args['gamma']} delta={args['delta']} " if args["scheme"] == "kgw" else "")
    return (f"{args['scheme'].upper()} {wm}h={args['context_width']}; "
            f"{n_prompts} prompts x {args['new_tokens']} tokens; "
            f"students {args['steps']} steps x {args['batch_size']} x {args['seq_len']} tokens; "
            f"M={args['controls']}")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """log10 p against tuples scored (the audits' curves): open mode left, closed mode right.

    The y axis is linear down to log10 p = -10 and logarithmic in |log10 p| beyond, so that the
    null rows near 0 and the rho = 1 rows far below stay readable on one axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    colors: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for ax, modes, name in ((axes[0], ("open", "open-seen"), "open mode (reading)"),
                            (axes[1], ("closed",), "closed mode (querying, greedy answers)")):
        for r in rows:
            if r["mode"] not in modes:
                continue
            rho = r["rho"]
            label = "base SmolLM2 (null)" if rho is None else f"student rho = {rho:g}"
            if r["mode"] == "open-seen":
                label += ", trained-on texts only"
            if r["dedup"] == "none":
                label += ", dedup=none (negative control)"
            color = colors.setdefault(f"{r['suspect']}{rho}", cmap(len(colors) % 10))
            xs = [0] + [n for n, _ in r["curve"]]
            ys = [0.0] + [lp for _, lp in r["curve"]]
            style = ":" if r["dedup"] == "none" else ("--" if r["mode"] == "open-seen" else "-")
            ax.plot(xs, ys, style, marker="o" if len(xs) <= 4 else None, markersize=4,
                    color=color, label=label)
        ax.set_yscale("symlog", linthresh=10)
        low = min([-12.0] + [lp for r in rows if r["mode"] in modes for _, lp in r["curve"]])
        ticks = [t for t in (0, -2, -4, -6, -8, -10, -20, -50, -100, -200, -500, -1000)
                 if t >= low * 1.5]
        ax.set_yticks(ticks, [str(t) for t in ticks])
        for y, text in ((TARGET_OPEN_RHO005, "p = 1e-5"), (TARGET_CLOSED_RHO1, "p = 1e-12")):
            ax.axhline(y, color="grey", lw=0.7, ls="--")
            ax.text(0.99, y, text, transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", fontsize=7, color="grey")
        ax.set_xlabel("tuples scored")
        ax.set_ylabel("log10 p of the real key (symlog)")
        ax.set_title(name)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompts", type=int, default=200, help="shipped prompts used (at most 200)")
    p.add_argument("--new-tokens", type=int, default=32, help="teacher tokens per answer")
    p.add_argument("--answer-tokens", type=int, default=64,
                   help="tokens per student answer in closed mode")
    p.add_argument("--steps", type=int, default=300, help="training steps per student")
    p.add_argument("--batch-size", type=int, default=8, help="student training batch (windows)")
    p.add_argument("--seq-len", type=int, default=64, help="student training window (tokens)")
    p.add_argument("--controls", type=int, default=100, help="random-key controls (M)")
    p.add_argument("--rhos", default="0,0.05,0.25,1", help="watermarked fractions")
    p.add_argument("--scheme", choices=("kgw", "gumbel"), default="kgw")
    p.add_argument("--gamma", type=float, default=0.25)
    p.add_argument("--delta", type=float, default=4.0)
    p.add_argument("--context-width", type=int, default=1, help="h, the watermark's window")
    p.add_argument("--gen-batch", type=int, default=100, help="teacher generation batch size")
    p.add_argument("--phi", action="store_true",
                   help="closed mode: score only windows of the teacher's watermarked corpus")
    p.add_argument("--no-base", action="store_true", help="skip the base-model audits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (teacher and audits; the "
                   "students train on the CPU)")
    p.add_argument("--out", type=Path, default=Path("runs/radioactivity"))
    p.add_argument("--plot", type=Path, default=None,
                   help="plot path (default OUT/results_log10p.png)")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the plot from OUT/results.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 16 prompts, 16 tokens, 30 steps, 20 controls")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.answer_tokens = 16, 16, 16
        args.steps, args.controls, args.gen_batch = 30, 20, 16
    if min(args.prompts, args.new_tokens, args.answer_tokens, args.steps, args.controls) < 1:
        p.error("budgets must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if args.replot:
        saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
        plot_path = args.plot or out / "results_log10p.png"
        plot(saved["rows"], plot_path,
             plot_title(saved["args"], saved["generation"]["prompts"]))
        print(f"wrote {plot_path}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    rhos = sorted({float(x) for x in args.rhos.split(",")})
    info = machine_info(args.device)
    print("machine:", json.dumps(info))
    print("command:", " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))

    clock("loading the teacher, SmolLM2-135M-Instruct")
    teacher, tok = load_default_model(device=args.device)
    vocab = len(tok)
    key = experiment_key(args.seed)
    prompts = shipped_prompts()[: args.prompts]
    wm_public = {"scheme": args.scheme, "gamma": args.gamma, "delta": args.delta,
                 "context_width": args.context_width}
    gen = {"max_new_tokens": args.new_tokens, "temperature": 0.7, "prompts": len(prompts),
           "seed": args.seed}
    print(f"   {len(prompts)} prompts, {args.new_tokens} new tokens, key id {key.key_id}")
    wm_text = (f"scheme {args.scheme}, gamma {args.gamma}, delta {args.delta}, "
               f"h {args.context_width}" if args.scheme == "kgw"
               else f"scheme {args.scheme}, h {args.context_width}")

    def run_generate(scheme: str, seed: int) -> Any:
        kw: dict[str, Any] = {}
        if scheme != "none":
            kw = {"key": key, "gamma": args.gamma, "delta": args.delta,
                  "context_width": args.context_width}
        t0 = time.perf_counter()
        res = []
        for i in range(0, len(prompts), args.gen_batch):
            res += generate(teacher, tok, prompts[i : i + args.gen_batch], scheme=scheme,
                            max_new_tokens=args.new_tokens, temperature=0.7,
                            batch_size=args.gen_batch, seed=seed + i, **kw)
            n = sum(len(r.completion_ids) for r in res)
            print(f"   {len(res)}/{len(prompts)} answers, {n} tokens, "
                  f"{n / (time.perf_counter() - t0):.1f} tok/s", flush=True)
        return res

    clock(f"teacher answers, watermarked ({wm_text}), temperature 0.7")
    wm = teacher_answers(out / "teacher_watermarked.jsonl", {**gen, **wm_public},
                         lambda: run_generate(args.scheme, args.seed))
    clock("teacher answers, unwatermarked (same prompts)")
    plain = teacher_answers(out / "teacher_plain.jsonl", {**gen, "scheme": "none"},
                            lambda: run_generate("none", args.seed + 1))
    n_wm = sum(len(a.completion_ids) for a in wm)
    n_plain = sum(len(a.completion_ids) for a in plain)
    n_prompt = sum(len(a.prompt_ids) for a in wm)
    print(f"   corpus: {n_wm} watermarked and {n_plain} unwatermarked completion tokens, "
          f"{n_prompt} prompt tokens")

    cfg = DetectorConfig(scheme=args.scheme, gamma=args.gamma, context_width=args.context_width)
    cfg_none = DetectorConfig(scheme=args.scheme, gamma=args.gamma,
                              context_width=args.context_width, dedup="none")
    teacher_texts = [TeacherText(a.prompt_ids, a.completion_ids) for a in wm]
    order = np.random.default_rng(args.seed).permutation(len(prompts))
    train_kw = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                "seed": args.seed}
    rows: list[Row] = []
    students_dir = out / "students"
    students_dir.mkdir(exist_ok=True)

    def audit_reading(model: Any, texts: list[TeacherText], config: DetectorConfig) -> AuditResult:
        return audit_open(model, texts, key, config, vocab_size=vocab,
                          n_controls=args.controls, seed=args.seed + 1)

    def audit_querying(model: Any, name: str, config: DetectorConfig) -> AuditResult:
        client = HFClient(model, tok, max_new_tokens=args.answer_tokens, batch_size=16)
        return audit_closed(client, prompts, key, config, tokenizer=tok,
                            checkpoint=out / f"answers_{name}.jsonl",
                            teacher=teacher_texts if args.phi else None,
                            n_controls=args.controls, seed=args.seed + 1)

    def add(suspect: str, rho: float | None, mode: str, res: AuditResult) -> None:
        row = Row(suspect, rho, mode, str(res.config.get("dedup")), res)
        rows.append(row)
        d, c = res.detection, res.controls
        green = "-" if d.green_rate is None else f"{d.green_rate:.3f}"
        print(f"   {mode:<9} dedup={row.dedup:<6} scored {d.n_scored:>6}  green "
              f"{green:>5}  log10 p {d.log10_pvalue:9.2f}  controls KS p "
              f"{c.ks_pvalue:.3g}  emp p {c.empirical_pvalue:.3f}  calibrated {c.calibrated}",
              flush=True)

    clock("warm-up: one small reading audit, so that no timed audit includes compiling or "
          "loading the scoring kernels")
    from fingerprint.models import tiny_llama

    warm = tiny_llama(vocab, hidden_size=32, num_layers=1, num_heads=2, seed=args.seed)
    for config in (cfg, cfg_none):
        audit_open(warm, teacher_texts[:4], key, config, vocab_size=vocab, n_controls=2,
                   seed=args.seed)
    del warm

    losses: dict[str, float] = {}
    for rho in rhos:
        seqs, marked = mixture(wm, plain, rho, order)
        name = f"rho{rho:g}"
        clock(f"student rho = {rho:g}: {len(marked)} of {len(prompts)} answers watermarked; "
              f"training {args.steps} steps x {args.batch_size} x {args.seq_len} tokens")
        digest = settings_digest({"train": train_kw, "gen": gen, "wm": wm_public,
                                  "marked": marked, "rho": rho})
        ckpt = students_dir / f"{name}-{digest}.pt"
        if ckpt.is_file():
            student = tiny_llama(vocab, hidden_size=128, num_layers=2, num_heads=4,
                                 seed=args.seed)
            student.load_state_dict(torch.load(ckpt, weights_only=True))
            student.eval()
            print(f"   reusing {ckpt}")
        else:
            student = train_student(seqs, vocab_size=vocab, **train_kw, device=args.device,
                                    progress=False)
            torch.save(student.state_dict(), ckpt)
        student.to(args.device)
        with torch.no_grad():  # the student's loss on its own training stream, for the record
            flat = np.concatenate(seqs)
            n = min(64, len(flat) // args.seq_len) * args.seq_len
            stream = torch.as_tensor(flat[:n], device=args.device).view(-1, args.seq_len)
            losses[name] = float(student(input_ids=stream, labels=stream).loss)
        print(f"   training-stream loss {losses[name]:.3f}")
        add("student", rho, "open", audit_reading(student, teacher_texts, cfg))
        if 0 < rho < 1:
            seen = [teacher_texts[i] for i in marked]
            add("student", rho, "open-seen", audit_reading(student, seen, cfg))
        add("student", rho, "closed", audit_querying(student, name, cfg))
        if rho == 0:
            add("student", rho, "open", audit_reading(student, teacher_texts, cfg_none))
            add("student", rho, "closed", audit_querying(student, name, cfg_none))
        del student

    if not args.no_base:
        clock("base model (SmolLM2 itself, never trained on watermarked text), open mode")
        add("base", None, "open", audit_reading(teacher, teacher_texts, cfg))
        add("base", None, "open", audit_reading(teacher, teacher_texts, cfg_none))
    clock.close()

    order_key = {"student": 0, "base": 1}
    rows.sort(key=lambda r: (r.dedup == "none", order_key[r.suspect], r.rho or 0,
                             ["open", "open-seen", "closed"].index(r.mode)))
    print(f"\n== results ({wm_text}; M = {args.controls} control keys; "
          f"H0: the suspect was not trained on text carrying the key)\n")
    table = print_table(rows)
    print("\n== reading-mode audits: where the wall time goes\n")
    split_text, split = forward_shares(rows)

    def find(rho: float | None, mode: str, suspect: str = "student") -> Row | None:
        return next((r for r in rows if r.suspect == suspect and r.rho == rho
                     and r.mode == mode and r.dedup != "none"), None)

    checks = []
    r1 = find(1.0, "closed")
    if r1 is not None:
        lp = r1.result.detection.log10_pvalue
        checks.append(("rho = 1, closed mode: p <= 1e-12", lp <= TARGET_CLOSED_RHO1,
                       f"log10 p = {lp:.2f}"))
    r005, r005_seen = find(0.05, "open"), find(0.05, "open-seen")
    if r005_seen is not None:  # Sander et al.'s supervised open-model setting
        lp = r005_seen.result.detection.log10_pvalue
        other = ("" if r005 is None else "; reading all the teacher's answers (unsupervised): "
                 f"log10 p = {r005.result.detection.log10_pvalue:.2f}")
        checks.append(("rho = 0.05, open mode, reading the watermarked answers it trained on: "
                       "p <= 1e-5", lp <= TARGET_OPEN_RHO005, f"log10 p = {lp:.2f}{other}"))
    for r in rows:
        if r.dedup == "none" or not (r.rho == 0 or r.suspect == "base"):
            continue
        c = r.result.controls
        checks.append((f"null {r.suspect} rho={fmt_rho(r.rho)} {r.mode}: controls ~ U(0,1)",
                       c.calibrated, f"KS p = {c.ks_pvalue:.3g}, FPR at 0.01 = "
                       f"{c.fpr_at_001:.2f}, real-key log10 p = "
                       f"{r.result.detection.log10_pvalue:.2f}"))
    for s in split:
        if s["dedup"] == "none":
            continue
        checks.append((f"reading audit {s['suspect']} rho={fmt_rho(s['rho'])} {s['mode']}: "
                       f">= 90% of wall time in the forward", s["forward_share"] >= 0.9,
                       f"{s['forward_share']:.1%} (of forward + scoring: "
                       f"{s['forward_share_reading']:.1%})"))
    for r in rows:
        if r.dedup == "none":
            c = r.result.controls
            checks.append((f"negative control {r.suspect} rho={fmt_rho(r.rho)} {r.mode} "
                           "dedup=none: controls NOT calibrated (expected)", not c.calibrated,
                           f"KS p = {c.ks_pvalue:.3g}, FPR at 0.01 = {c.fpr_at_001:.2f}"))
    print("\n== targets\n")
    for name, ok, detail in checks:
        print(f"   [{'met' if ok else 'NOT met'}] {name}: {detail}")

    stages = {k: round(v, 1) for k, v in clock.stages.items()}
    print("\n== wall time by stage\n")
    for k, v in stages.items():
        print(f"   {v:8.1f} s  {k}")
    print(f"   {clock.total:8.1f} s  total (load average now {os.getloadavg()[0]:.1f})")

    plot_path = args.plot or out / "results_log10p.png"
    plot([r.to_dict() for r in rows], plot_path, plot_title(vars(args), len(prompts)))
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info, "key_id": key.key_id, "watermark": wm_public, "generation": gen,
        "corpus_tokens": {"watermarked": n_wm, "plain": n_plain, "prompt": n_prompt},
        "training": train_kw, "training_stream_loss": losses,
        "rows": [r.to_dict() for r in rows], "table": table, "time_split": split,
        "time_split_table": split_text,
        "checks": [{"target": n, "met": ok, "detail": d} for n, ok, d in checks],
        "stages_s": stages, "total_s": round(clock.total, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'results.json'} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
