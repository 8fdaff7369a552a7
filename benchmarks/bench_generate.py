"""Cost and effect of watermarking generation: ours (KGW, Gumbel) against transformers' own KGW.

One run, on the embedded SmolLM2-135M-Instruct (CPU, float32), prompts from
``fingerprint/data/prompts.jsonl`` through the chat template, for batch sizes B = 1 and B = 16:

* ``plain``: ``model.generate`` with no watermark;
* ``ours-kgw``: :class:`~fingerprint.watermark.KGWWatermarkingConfig` (gamma 0.25, delta 2,
  h 2, siphash24-v1), i.e. after temperature like transformers' own (what ``generate`` uses);
* ``ours-gumbel``: :class:`~fingerprint.watermark.GumbelWatermarkingConfig` (h 4, siphash24-v1);
* ``hf-lefthash``, ``hf-selfhash``: transformers' ``WatermarkLogitsProcessor`` through its
  ``WatermarkingConfig`` (gamma 0.25, delta 2; h 1 for lefthash, h 4 for selfhash as in the
  KGW paper's "SelfHash").

Every method samples with the same settings (temperature 0.7, no top-k/top-p) and the same seed
(``torch.manual_seed`` before each call), with ``min_new_tokens = max_new_tokens`` (128) so that
all produce the same number of tokens. Methods are interleaved, repeat by repeat, in a rotating
order between two ``plain`` runs (both count for ``plain``), so that load changes hit them
alike; each is warmed up first (numba kernels load from their disk cache).

Printed per batch size and method:

* ``s/run``: the median wall time of a generate call, ``ms/step`` that over the tokens;
* ``overhead``: the median wall time relative to ``plain``'s (noisy on a shared machine), and
  ``cpu ovh``: the same with the CPU time of this process (all its threads), which waiting for
  a busy core does not inflate;
* ``in-run``: within each watermarked run, the time spent in the watermark processor relative to
  the rest of that run (median over repeats): a paired measure that load changes between runs
  do not bias;
* ``proc ms``: the watermark processor alone, one step on [B, 49152] logits, the best of many
  calls (its cost without waiting for a busy core), and ``proc %``: it relative to plain's
  ``ms/step``;
* ``ppl``: the perplexity of the generated completions under the same model at temperature 1;
* ``green``: the fraction of completion tokens that are green under each KGW scheme's own key
  (ours for ``ours-kgw`` and ``plain``, transformers' for ``hf-*``): far above 0.25 when marked.

Run from the repository root::

    python3 benchmarks/bench_generate.py            # B = 1 (3 repeats) and B = 16 (2 repeats)
    python3 benchmarks/bench_generate.py --quick    # 32 tokens, B = 1 and B = 4, 1 repeat
    python3 benchmarks/bench_generate.py --batch-sizes 1 16 --repeats 3 1 --json out.json

Timings depend on what else the machine is doing: the header prints the load average and the
footer the CPU time other processes took during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, WatermarkDetector, WatermarkingConfig
from transformers.generation.configuration_utils import BaseWatermarkingConfig
from transformers.generation.logits_process import WatermarkLogitsProcessor

from fingerprint import WatermarkKey, get_prf
from fingerprint.models import chat_prompts, load_default_model, vocab_size_of
from fingerprint.watermark import (
    GumbelLogitsProcessor,
    GumbelWatermarkingConfig,
    KGWLogitsProcessor,
    KGWWatermarkingConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RunMeter, load_average

PROMPTS_FILE = Path(__file__).resolve().parents[1] / "fingerprint" / "data" / "prompts.jsonl"
GAMMA, DELTA, KGW_H, GUMBEL_H = 0.25, 2.0, 2, 4
TEMPERATURE = 0.7
METHODS = ("plain", "ours-kgw", "ours-gumbel", "hf-lefthash", "hf-selfhash")
HF_H = {"hf-lefthash": 1, "hf-selfhash": 4}


def hf_config(method: str) -> WatermarkingConfig:
    return WatermarkingConfig(greenlist_ratio=GAMMA, bias=DELTA,
                              seeding_scheme=method.removeprefix("hf-"),
                              context_width=HF_H[method])


class Timed(LogitsProcessor):
    """Runs a processor and adds up the wall time spent in it."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        t = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t
        return out


class TimedWatermarking(BaseWatermarkingConfig):
    """A watermarking config whose processor is timed (placed last by transformers)."""

    def __init__(self, inner: BaseWatermarkingConfig, timer: Timed) -> None:
        self.inner, self.timer = inner, timer

    def validate(self) -> None:
        self.inner.validate()

    def construct_processor(self, vocab_size: int, device: Any = None) -> Timed:
        self.timer.inner = self.inner.construct_processor(vocab_size, device)
        return self.timer

    def to_dict(self) -> dict[str, Any]:
        return {"timed": type(self.inner).__name__}

    def __deepcopy__(self, memo: dict[int, Any]) -> TimedWatermarking:
        return self


def method_kwargs(method: str, key: WatermarkKey, pad: int, timer: Timed) -> dict[str, Any]:
    """The generate keywords that switch a method on, its processor timed by ``timer``."""
    if method == "ours-kgw":
        wm = KGWWatermarkingConfig(key, gamma=GAMMA, delta=DELTA, context_width=KGW_H,
                                   pad_token_id=pad)
        return {"watermarking_config": TimedWatermarking(wm, timer)}
    if method == "ours-gumbel":
        wm = GumbelWatermarkingConfig(key, context_width=GUMBEL_H)
        return {"watermarking_config": TimedWatermarking(wm, timer)}
    if method.startswith("hf-"):
        return {"watermarking_config": TimedWatermarking(hf_config(method), timer)}
    return {}


def processor_step_ms(method: str, key: WatermarkKey, b: int, vocab: int) -> float:
    """One watermark step alone on [b, vocab] logits and [b, 64] ids: best-of ms."""
    if method == "plain":
        return 0.0
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (b, 64), generator=gen)
    scores = torch.randn(b, vocab, generator=gen) * 3
    procs: dict[str, Callable[[], Any]] = {
        "ours-kgw": lambda: KGWLogitsProcessor(key, gamma=GAMMA, delta=DELTA,
                                               context_width=KGW_H),
        "ours-gumbel": lambda: GumbelLogitsProcessor(key, GUMBEL_H, check_placement=False),
    }
    if method in procs:
        proc = procs[method]()
    else:
        proc = WatermarkLogitsProcessor(vocab, "cpu", greenlist_ratio=GAMMA, bias=DELTA,
                                        seeding_scheme=method.removeprefix("hf-"),
                                        context_width=HF_H[method])
    proc(ids, scores)  # warm-up
    times = []
    budget = time.perf_counter() + 3.0
    while len(times) < 5 or (len(times) < 50 and time.perf_counter() < budget):
        if hasattr(proc, "reset"):
            proc.reset()
        t = time.perf_counter()
        proc(ids, scores)
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def perplexity(model: Any, sequences: torch.Tensor, prompt_mask: torch.Tensor) -> float:
    """exp(mean NLL) of the generated tokens (after the padded prompt) at temperature 1."""
    width = prompt_mask.shape[1]
    mask = torch.cat([prompt_mask, torch.ones_like(sequences[:, width:])], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=sequences, attention_mask=mask).logits[:, width - 1:-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, sequences[:, width:, None])[..., 0]
    return float(torch.exp(nll.mean()))


def green_fraction(method: str, key: WatermarkKey, model: Any, sequences: torch.Tensor,
                   prompt_mask: torch.Tensor) -> float | None:
    """Green share of the completions under ours (plain, ours-kgw) or transformers' scheme."""
    width = prompt_mask.shape[1]
    if method in ("plain", "ours-kgw"):
        prf = get_prf("siphash24-v1", key, "kgw")
        greens = []
        for b in range(sequences.shape[0]):
            seq = torch.cat([sequences[b, :width][prompt_mask[b].bool()], sequences[b, width:]])
            u = prf.score(seq.numpy(), KGW_H)[-(sequences.shape[1] - width):]
            greens.append(u < GAMMA)
        return float(np.concatenate(greens).mean())
    if method.startswith("hf-"):
        det = WatermarkDetector(model.config, "cpu", hf_config(method))
        out = det(sequences[:, width - HF_H[method]:], return_dict=True)
        return float(np.mean(out.green_fraction))
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average() or [float("nan")] * 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    meter = RunMeter()
    model, tokenizer = load_default_model()
    vocab = vocab_size_of(model)
    key = WatermarkKey.generate()
    prompts = [json.loads(line)["prompt"] for line in PROMPTS_FILE.read_text().splitlines()]
    report: dict[str, Any] = {"tokens": args.tokens, "temperature": TEMPERATURE, "batches": {}}
    for b, reps in zip(args.batch_sizes, args.repeats, strict=True):
        enc = tokenizer(chat_prompts(tokenizer, prompts[:b]), return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False)
        base = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": True,
                "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0,
                "pad_token_id": tokenizer.pad_token_id}
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        in_run: dict[str, list[float]] = {m: [] for m in METHODS}
        outputs: dict[str, torch.Tensor] = {}
        for m in METHODS:  # warm-up: kernels, caches, first-call paths
            with torch.inference_mode():
                model.generate(**enc, **{**base, "max_new_tokens": 4, "min_new_tokens": 4},
                               **method_kwargs(m, key, tokenizer.pad_token_id, Timed()))
        marked = METHODS[1:]
        for rep in range(reps):
            k = rep % len(marked)
            for m in ("plain", *marked[k:], *marked[:k], "plain"):
                timer = Timed()
                kw = method_kwargs(m, key, tokenizer.pad_token_id, timer)
                torch.manual_seed(1234)
                c, t = time.process_time(), time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(**enc, **base, **kw)
                times[m].append(time.perf_counter() - t)
                cpu[m].append(time.process_time() - c)
                in_run[m].append(100 * timer.seconds / (times[m][-1] - timer.seconds))
                outputs.setdefault(m, out)
                print(f"  B={b} repeat {rep + 1}/{reps} {m:<12} {times[m][-1]:7.2f} s "
                      f"(in the watermark: {timer.seconds:.2f} s)", file=sys.stderr, flush=True)
        rows = {}
        plain_s = statistics.median(times["plain"])
        plain_cpu = statistics.median(cpu["plain"])
        for m in METHODS:
            med = statistics.median(times[m])
            proc_ms = processor_step_ms(m, key, b, vocab)
            rows[m] = {
                "s_per_run": med, "ms_per_step": 1e3 * med / args.tokens,
                "overhead_pct": 100 * (med / plain_s - 1), "runs_s": times[m],
                "cpu_s": cpu[m],
                "cpu_overhead_pct": 100 * (statistics.median(cpu[m]) / plain_cpu - 1),
                "in_run_pct": statistics.median(in_run[m]), "in_run_runs_pct": in_run[m],
                "proc_ms": proc_ms, "proc_pct": 100 * proc_ms / (1e3 * plain_s / args.tokens),
                "ppl": perplexity(model, outputs[m], enc["attention_mask"]),
                "green": green_fraction(m, key, model, outputs[m], enc["attention_mask"]),
            }
        report["batches"][str(b)] = {"repeats": reps, "methods": rows}
        print_table(b, reps, args.tokens, rows)
    wall, others = meter.elapsed(), meter.other_cpu_seconds() or 0.0
    print(f"total {wall:.0f} s; other processes used {others:.0f} CPU-seconds of "
          f"{wall * (os.cpu_count() or 1):.0f} available during the run")
    report["other_cpu_s"] = others
    return report


def print_table(b: int, reps: int, tokens: int, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\nB={b}, {tokens} new tokens, temperature {TEMPERATURE}, median of {reps} run(s)")
    print(f"{'method':<12} {'s/run':>7} {'ms/step':>8} {'overhead':>9} {'cpu ovh':>8} "
          f"{'in-run':>7} {'proc ms':>8} {'proc %':>7} {'ppl':>6} {'green':>6}")
    for m, r in rows.items():
        green = "" if r["green"] is None else f"{r['green']:.3f}"
        proc = "" if m == "plain" else f"{r['proc_ms']:.2f}"
        proc_pct = "" if m == "plain" else f"{r['proc_pct']:.2f}%"
        over = "" if m == "plain" else f"{r['overhead_pct']:+.1f}%"
        cpu_over = "" if m == "plain" else f"{r['cpu_overhead_pct']:+.1f}%"
        in_run = "" if m == "plain" else f"{r['in_run_pct']:.2f}%"
        print(f"{m:<12} {r['s_per_run']:>7.2f} {r['ms_per_step']:>8.1f} {over:>9} "
              f"{cpu_over:>8} {in_run:>7} {proc:>8} {proc_pct:>7} {r['ppl']:>6.2f} {green:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="32 tokens, B = 1 and B = 4, one repeat (a smoke run)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per prompt (128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="batch sizes to run (default 1 16)")
    parser.add_argument("--repeats", type=int, nargs="+", default=None,
                        help="repeats for each batch size (default 3 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and numba threads (default: their own defaults)")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    args = parser.parse_args(argv)
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    if args.quick:
        args.tokens = 32
        args.batch_sizes, args.repeats = args.batch_sizes or [1, 4], args.repeats or [1, 1]
    else:
        args.batch_sizes, args.repeats = args.batch_sizes or [1, 16], args.repeats or [3, 2]
    if len(args.repeats) != len(args.batch_sizes):
        parser.error("give one --repeats value per batch size")
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
