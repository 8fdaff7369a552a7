"""``fingerprint demo``: the whole story on the embedded model, offline, on a CPU.

1. keys are made (a watermark key and a report-signing key);
2. the embedded SmolLM2-135M-Instruct teacher answers the shipped prompts, watermarked (KGW),
   and once more without a watermark;
3. a student is distilled from the watermarked answers, a control student from the plain ones;
4. both students are audited, with their weights (open mode) and by querying them (closed);
5. signed reports (JSON and HTML) are written and verified;
6. a summary table says who was caught.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

GAMMA = 0.25
DELTA = 4.0
CONTEXT_WIDTH = 1


def human_text(max_chars: int = 200_000) -> str:
    """English prose that ships with Python (the pydoc topic pages): text no key ever touched."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))[:max_chars]


def shipped_prompts() -> list[str]:
    """The instruction prompts that ship with the package."""
    from importlib.resources import files

    text = files("fingerprint").joinpath("data/prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


class _Steps:
    def __init__(self) -> None:
        self.n = 0
        self.t0 = time.perf_counter()

    def __call__(self, title: str) -> None:
        self.n += 1
        print(f"\n[{self.n}] {title}  (t = {time.perf_counter() - self.t0:.0f} s)", flush=True)


def _write_corpus(path: Path, results: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(results):
            f.write(json.dumps({"line": i + 1, "prompt": r.prompt, "completion": r.completion,
                                "prompt_token_ids": list(r.prompt_ids),
                                "completion_token_ids": list(r.completion_ids)}) + "\n")
    return path


def run_demo(out: Path, *, n_prompts: int = 48, max_new_tokens: int = 48,
             student_steps: int = 300, controls: int = 100) -> int:
    """Run the demo into ``out``; returns 0 when the distilled student alone is caught."""
    from fingerprint.audit.clients import HFClient
    from fingerprint.audit.querying import audit_closed
    from fingerprint.audit.reading import TeacherText, audit_open
    from fingerprint.detect.detector import DetectorConfig
    from fingerprint.distill import train_student
    from fingerprint.keys import WatermarkKey
    from fingerprint.models import load_default_model, model_fingerprint
    from fingerprint.report.html import write_html
    from fingerprint.report.model import dump_report, report_from_audit
    from fingerprint.report.sign import make_signing_key, sign_report, verify_report
    from fingerprint.watermark import generate

    out.mkdir(parents=True, exist_ok=True)
    for name in ("distilled", "control"):  # answers of an earlier run, to other students
        (out / f"{name}_answers.jsonl").unlink(missing_ok=True)
    step = _Steps()

    step("making keys: a secret watermark key and an Ed25519 report-signing key")
    key = WatermarkKey.generate()
    key_path = key.save(out / "watermark.key", overwrite=True)
    pub_path = make_signing_key(out / "signing.pem", overwrite=True)
    print(f"    {key_path} (0600), public key id {key.key_id}\n    {pub_path}")

    step("loading the embedded teacher, SmolLM2-135M-Instruct (cached after the first run)")
    teacher, tok = load_default_model()
    prompts = shipped_prompts()[:n_prompts]
    prompts_path = out / "prompts.jsonl"
    prompts_path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    print(f"    {len(prompts)} shipped prompts, {max_new_tokens} new tokens each")

    step(f"the teacher serves watermarked answers (KGW, gamma={GAMMA}, delta={DELTA}, "
         f"h={CONTEXT_WIDTH})")
    gen = dict(max_new_tokens=max_new_tokens, temperature=0.7, batch_size=16, seed=0)
    wm = generate(teacher, tok, prompts, key=key, scheme="kgw", gamma=GAMMA, delta=DELTA,
                  context_width=CONTEXT_WIDTH, **gen)
    wm_path = _write_corpus(out / "teacher_watermarked.jsonl", wm)
    print(f"    example: {wm[0].completion[:110]!r}")

    step("the teacher answers again, without a watermark (the control's training data)")
    plain = generate(teacher, tok, prompts, scheme="none", **gen)
    _write_corpus(out / "teacher_plain.jsonl", plain)

    step("distilling two students from scratch with the teacher's tokenizer")
    students = {}
    for name, corpus in (("distilled", wm), ("control", plain)):
        seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in corpus]
        students[name] = train_student(seqs, vocab_size=len(tok), steps=student_steps,
                                       progress=True, desc=f"training {name} student")

    cfg = DetectorConfig(scheme="kgw", gamma=GAMMA, context_width=CONTEXT_WIDTH)
    teacher_texts = [TeacherText(r.prompt_ids, r.completion_ids) for r in wm]
    rows = []
    for name, student in students.items():
        step(f"auditing the {name} student: open mode (its weights read the teacher's text)")
        info = {"kind": "weights", "name": f"{name} student",
                "model_sha256": model_fingerprint(student)}
        res_open = audit_open(student, teacher_texts, key, cfg, vocab_size=len(tok),
                              n_controls=controls, seed=1, progress=True, suspect_info=info)
        step(f"auditing the {name} student: closed mode (queried like an API)")
        client = HFClient(student, tok, max_new_tokens=max_new_tokens, batch_size=16)
        res_closed = audit_closed(client, prompts, key, cfg, tokenizer=tok,
                                  checkpoint=out / f"{name}_answers.jsonl", n_controls=controls,
                                  seed=1, progress=True)
        for mode, res in (("open", res_open), ("closed", res_closed)):
            inputs: dict[str, Any] = {"teacher": wm_path}
            if mode == "closed":
                inputs.update(prompts=prompts_path, answers=out / f"{name}_answers.jsonl")
            report = report_from_audit(
                res, inputs=inputs, controls_seed=1, tokenizer=tok, tokenizer_spec="default",
                vocab_size=len(tok),
                suspect_model=student if mode == "open" else None,
                title=f"Radioactivity audit of the {name} student ({mode} mode)")
            signed = sign_report(report, out / "signing.pem")
            json_path = dump_report(signed, out / f"report_{name}_{mode}.json")
            html_path = write_html(signed, out / f"report_{name}_{mode}.html",
                                   public_key=pub_path)
            verify_report(json_path, pub_path)
            rows.append((name, mode, res, json_path, html_path))

    step("reports written, signed and verified")
    print(f"\n{'student':<10}{'mode':<8}{'scored':>8}{'green':>8}{'log10 p':>10}"
          f"{'controls KS p':>15}  verdict")
    ok = True
    for name, mode, res, _, _ in rows:
        d = res.detection
        caught = d.log10_pvalue <= -6
        ok &= caught == (name == "distilled")
        print(f"{name:<10}{mode:<8}{d.n_scored:>8}{d.green_rate or 0:>8.3f}"
              f"{d.log10_pvalue:>10.2f}{res.controls.ks_pvalue:>15.3f}  "
              f"{'CAUGHT (p <= 1e-6)' if caught else 'not flagged'}")
    print("\nH0 (every audit): the student was not trained on text carrying the key.")
    print("reports (signed JSON, and HTML to open in a browser):")
    for _, _, _, j, h in rows:
        print(f"    {j}\n    {h}")
    print(f"verify one yourself: fingerprint verify {rows[0][3]} --public-key {pub_path}")
    return 0 if ok else 1


__all__ = ["human_text", "run_demo", "shipped_prompts"]
