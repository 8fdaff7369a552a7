"""End-to-end detection benchmark: token ids (or text) in, exact p-value out.

What it measures, in one run:

1. ``Detector.detect`` throughput (tokens/s), token ids to exact p-value, on 1M and 20M tokens of
   two id distributions, each as one sequence and as 10,000 sequences of equal length:

   * ``uniform``: ids drawn uniformly from ``[0, 49152)``;
   * ``zipf``: a heavy-tailed, natural-language-like distribution,
     ``np.minimum(rng.zipf(1.3, n), 49151)``, where a few ids (and so a few windows) repeat a lot.

   Configurations: KGW (``h = 2``, ``siphash24-v1``) with dedup ``"tuple"`` (the default: each
   distinct (window, token) once, globally), ``"context"`` and ``"none"``; Gumbel (``h = 4``,
   ``siphash24-v1``, dedup ``"context"``). Each detector is warmed up once on a small input (the
   numba kernels compile or load from disk on first use); then each case is timed as the best of
   3 calls (2 at 20M), with fewer calls when one call already exceeds a time budget, and a 20M
   case is skipped when its 1M case projects it far beyond that budget.
2. transformers' ``WatermarkDetector`` (KGW "lefthash", ``h = 1``, ``ignore_repeated_ngrams``, CPU)
   on a slice of the uniform ids sized to take a few seconds, next to our ``Detector`` (KGW,
   ``h = 1``, tuple dedup) on the same slice and on the 1M ids. transformers runs with torch's
   default thread count or with one thread, whichever is faster on a short probe (on a busy
   machine one thread can be many times faster).
3. vLLM 0.33's Gumbel detector algorithm, re-expressed here without vLLM: a Python loop over the
   tokens that builds the windows with a ``seen_contexts`` set for dedup, ``torch.tensor`` of the
   windows, the Philox PRF as vectorized torch int64 ops, ``-log1p(-u)`` summed in float64, and a
   Python loop for the integer-shape Gamma survival function. It is timed (500k uniform ids, the
   faster torch thread count as in 2.) against our Gumbel detector with the same PRF
   (``philox4x32-10-v1``, ``h = 4``, context dedup) on the same ids, and the two results are
   checked to agree (same number of scored tokens, score within 1e-9 relative).
4. Text in: on about 2 MB of English prose (Python's pydoc topics, repeated), the time of the raw
   fast-tokenizer call, of ``encode_text`` (normalization, tokenization with offsets, spans), and
   of scoring the resulting ids; the scoring share of the total is reported.

Run it from the repository root::

    python3 benchmarks/bench_detect.py                  # full run, about 6 minutes on 2 cores
    python3 benchmarks/bench_detect.py --quick          # small sizes, one call each (a smoke run)
    python3 benchmarks/bench_detect.py --json out.json  # also write every number to out.json
    python3 benchmarks/bench_detect.py --threads 1      # numba and torch on one thread

The process caps its own address space (``--mem-limit-gib``, default: what it uses at start plus
60% of the available memory) so that a case whose dedup table grows out of bounds fails with a
``MemoryError``, reported in the table, instead of exhausting the machine.

Timings depend on what else the machine is doing: the header prints the load average, and the
footer the CPU time that other processes used during the run (on a busy machine the numbers are
lower bounds; rerun when it is quiet).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from fingerprint import WatermarkKey, get_prf
from fingerprint.detect.detector import DetectionResult, Detector
from fingerprint.detect.text import detect_text, encode_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RunMeter,
    best_of,
    fmt_load,
    fmt_rate,
    fmt_tokens,
    host_line,
    machine_info,
    meets,
    print_footer,
    print_table,
    proc_field_bytes,
    progress,
    repeat_for,
    section,
    timed,
    write_json,
)

VOCAB = 49_152
ZIPF_EXPONENT = 1.3
GAMMA = 0.25
TARGET_DEDUP = 20e6  # tokens/s with global (context, token) dedup
TARGET_NO_DEDUP = 80e6  # tokens/s without dedup
TARGET_VLLM_RATIO = 30.0  # ours / vLLM's algorithm
TARGET_SCORING_SHARE = 0.20  # of tokenization + scoring
PHILOX = "philox4x32-10-v1"
VLLM_KEY = 0x5EED_CAFE_F00D_1234
VLLM_WIDTH = 4

# name -> Detector keyword arguments
CASES: dict[str, dict[str, Any]] = {
    "kgw h=2 dedup=tuple": {"scheme": "kgw", "dedup": "tuple", "context_width": 2},
    "kgw h=2 dedup=context": {"scheme": "kgw", "dedup": "context", "context_width": 2},
    "kgw h=2 dedup=none": {"scheme": "kgw", "dedup": "none", "context_width": 2},
    "gumbel h=4 dedup=context": {"scheme": "gumbel", "dedup": "context", "context_width": 4},
}


@dataclass
class Settings:
    """What one run measures: sizes, repeat counts and time budgets."""

    quick: bool
    sizes: tuple[int, ...]
    n_seqs: int
    repeats: dict[int, int]  # size -> timed calls (at most)
    budget_s: dict[int, float]  # size -> stop repeating once this much time is spent
    project_limit_s: float  # skip a larger size projected to take longer than this per call
    hf_seconds: float
    hf_min_tokens: int
    hf_max_tokens: int
    vllm_tokens: int
    vllm_repeats: int
    vllm_budget_s: float
    text_chars: int
    text_repeats: int


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(quick=True, sizes=(200_000,), n_seqs=1_000, repeats={200_000: 1},
                        budget_s={200_000: 2.0}, project_limit_s=10.0, hf_seconds=1.0,
                        hf_min_tokens=300, hf_max_tokens=5_000, vllm_tokens=100_000,
                        vllm_repeats=1, vllm_budget_s=5.0, text_chars=300_000, text_repeats=1)
    return Settings(quick=False, sizes=(1_000_000, 20_000_000), n_seqs=10_000,
                    repeats={1_000_000: 3, 20_000_000: 2},
                    budget_s={1_000_000: 10.0, 20_000_000: 25.0}, project_limit_s=30.0,
                    hf_seconds=4.0, hf_min_tokens=2_000, hf_max_tokens=50_000,
                    vllm_tokens=500_000, vllm_repeats=2, vllm_budget_s=20.0, text_chars=2_000_000,
                    text_repeats=2)


# -- memory -------------------------------------------------------------------------------------
def cap_address_space(limit_gib: float | None) -> int | None:
    """Cap this process's address space; returns the cap in bytes (None: no cap set)."""
    if limit_gib is not None and limit_gib <= 0:
        return None
    if limit_gib is None:
        avail = proc_field_bytes("/proc/meminfo", "MemAvailable")
        vm = proc_field_bytes("/proc/self/status", "VmSize")
        if avail is None or vm is None:
            return None
        limit = vm + int(0.6 * avail) + (2 << 30)  # + 2 GiB for thread stacks and arenas
    else:
        limit = int(limit_gib * (1 << 30))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        return None
    return limit


# -- output helpers -----------------------------------------------------------------------------
def result_summary(res: DetectionResult) -> dict[str, Any]:
    return {"n_scored": res.n_scored, "n_positions": res.n_positions, "n_green": res.n_green,
            "score_sum": res.score_sum, "pvalue": res.pvalue, "log10_pvalue": res.log10_pvalue}


# -- data ---------------------------------------------------------------------------------------
def make_ids(dist: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0 if dist == "uniform" else 1])
    if dist == "uniform":
        return rng.integers(0, VOCAB, size=n, dtype=np.int64)
    return np.minimum(rng.zipf(ZIPF_EXPONENT, n), VOCAB - 1).astype(np.int64)


def as_input(ids: np.ndarray, n_seqs: int) -> list[np.ndarray]:
    """One sequence, or ``n_seqs`` equal-length sequences (views, no copy)."""
    if n_seqs == 1:
        return [ids]
    return list(ids.reshape(n_seqs, -1))


# -- 1. Detector.detect throughput --------------------------------------------------------------
def target_for(case: str) -> float:
    return TARGET_NO_DEDUP if CASES[case]["dedup"] == "none" else TARGET_DEDUP


def bench_detect(s: Settings, key: WatermarkKey, data: dict[str, np.ndarray]
                 ) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    shapes = (1, s.n_seqs)
    for case, kw in CASES.items():
        det = Detector(key, **kw)
        warm = make_ids("uniform", 4_000, 7)
        det.detect([warm])
        det.detect(as_input(warm, 40))
        for dist, ids in data.items():
            for n_seqs in shapes:
                prev: dict[str, Any] | None = None
                for n in s.sizes:
                    entry: dict[str, Any] = {
                        "case": case, "config": kw, "dist": dist, "tokens": n,
                        "sequences": n_seqs, "target_tokens_per_s": target_for(case)}
                    results.append(entry)
                    if prev is not None:
                        if "best_s" not in prev:
                            entry["skipped"] = f"{fmt_tokens(prev['tokens'])} case failed"
                            prev = entry
                            continue
                        projected = prev["best_s"] * n / prev["tokens"]
                        if projected > s.project_limit_s:
                            entry["skipped"] = (f"projected {projected:,.0f} s per call from "
                                                f"{fmt_tokens(prev['tokens'])}")
                            entry["projected_s"] = projected
                            prev = entry
                            continue
                    seqs = as_input(ids[:n], n_seqs)
                    try:
                        times, res = best_of(lambda d=det, q=seqs: d.detect(q), s.repeats[n],
                                             s.budget_s[n])
                    except MemoryError as err:
                        entry["error"] = f"MemoryError: {err}"
                        progress(f"  {case:26s} {dist:8s} {fmt_tokens(n):>4s} x{n_seqs:<6d} "
                                 "MemoryError")
                        prev = entry
                        continue
                    best = min(times)
                    rate = n / best
                    entry.update({"times_s": times, "best_s": best, "tokens_per_s": rate,
                                  "meets_target": rate >= entry["target_tokens_per_s"],
                                  "result": result_summary(res)})
                    progress(f"  {case:26s} {dist:8s} {fmt_tokens(n):>4s} x{n_seqs:<6d} "
                             f"{fmt_rate(rate):>7s} tokens/s ({len(times)} call(s), best "
                             f"{best:.2f} s)")
                    prev = entry
                    del seqs
    return results


def print_detect(results: list[dict[str, Any]]) -> None:
    rows = []
    notes: list[str] = []
    order = list(CASES)
    for r in sorted(results, key=lambda r: (r["dist"] != "uniform", r["tokens"],
                                            r["sequences"], order.index(r["case"]))):
        if "best_s" in r:
            res = r["result"]
            cells = [f"{res['n_scored'] / r['tokens']:.1%}", str(len(r["times_s"])),
                     f"{r['best_s']:,.3f}", fmt_rate(r["tokens_per_s"])]
            tail = [meets(r["meets_target"]), f"{res['log10_pvalue']:.2f}"]
        else:
            notes.append(r.get("error") or f"skipped: {r['skipped']}")
            what = "failed" if "error" in r else "skipped"
            cells, tail = ["", "", "", f"{what} [{len(notes)}]"], ["", ""]
        rows.append([r["case"], r["dist"], fmt_tokens(r["tokens"]), f"{r['sequences']:,}",
                     *cells, ">=" + fmt_rate(r["target_tokens_per_s"]), *tail])
    print_table(["detector", "ids", "tokens", "seqs", "scored", "calls", "best s", "tokens/s",
                 "target", "meets", "log10 p"], rows)
    for i, note in enumerate(notes, start=1):
        print(f"[{i}] {note}")


# -- 2. transformers' WatermarkDetector ---------------------------------------------------------
def make_hf_detector() -> tuple[Any, bool]:
    """transformers' KGW detector (lefthash, h = 1) for a 49,152-token vocabulary, offline."""
    import inspect

    try:
        from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig
    except ImportError:  # older layouts
        from transformers import LlamaConfig
        from transformers.generation.configuration_utils import WatermarkingConfig
        from transformers.generation.watermarking import WatermarkDetector

    model_config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=4)
    wm = WatermarkingConfig(greenlist_ratio=GAMMA, seeding_scheme="lefthash", context_width=1)
    kwargs: dict[str, Any] = {}
    dedup = "ignore_repeated_ngrams" in inspect.signature(WatermarkDetector).parameters
    if dedup:
        kwargs["ignore_repeated_ngrams"] = True
    det = WatermarkDetector(model_config=model_config, device="cpu", watermarking_config=wm,
                            **kwargs)
    return det, dedup


def hf_slice(ids: np.ndarray, n: int, bos: int | None) -> np.ndarray:
    """``n`` ids that do not start with BOS (the detector would drop a leading BOS)."""
    start = 0
    while bos is not None and int(ids[start]) == bos:
        start += 1
    return np.ascontiguousarray(ids[start : start + n])


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_choices() -> list[int]:
    """Torch thread counts to try for the torch-based references: the default, and 1."""
    return sorted({torch.get_num_threads(), 1}, reverse=True)


def bench_hf(s: Settings, key: WatermarkKey, ids: np.ndarray) -> dict[str, Any]:
    hf, hf_dedup = make_hf_detector()
    bos = hf.bos_token_id
    probe = torch.from_numpy(hf_slice(ids, 300, bos))[None, :]
    hf(probe[:, :30], return_dict=True)  # warm up
    probes: dict[int, float] = {}
    for threads in thread_choices():  # on a busy machine, one thread can be much faster
        with torch_threads(threads):
            dt, _ = timed(lambda: hf(probe, return_dict=True))
        probes[threads] = probe.shape[1] / dt
    threads = max(probes, key=lambda t: probes[t])
    n = int(min(s.hf_max_tokens, max(s.hf_min_tokens, probes[threads] * s.hf_seconds)))
    sl = hf_slice(ids, n, bos)
    t_ids = torch.from_numpy(sl)[None, :]
    with torch_threads(threads):
        dt, out = timed(lambda: hf(t_ids, return_dict=True))
    hf_scored = int(out.num_tokens_scored[0])
    theirs = {"tokens": n, "seconds": dt, "tokens_per_s": n / dt, "tokens_scored": hf_scored,
              "green": int(out.num_green_tokens[0]), "z_score": float(out.z_score[0]),
              "ignore_repeated_ngrams": hf_dedup, "torch_threads": threads,
              "probe_tokens_per_s_by_threads": probes}
    progress(f"  transformers WatermarkDetector: {fmt_rate(theirs['tokens_per_s'])} tokens/s on "
             f"{n:,} tokens ({threads} torch thread(s))")

    det = Detector(key, scheme="kgw", context_width=1, gamma=GAMMA)  # tuple dedup
    det.detect([sl[:100]])
    times = repeat_for(lambda: det.detect([sl]), 5, 0.5)
    res = det.detect([sl])
    ours_slice = {"tokens": n, "best_s": min(times), "tokens_per_s": n / min(times),
                  "calls": len(times), "result": result_summary(res)}
    big = ids[: s.sizes[0]]
    times, res = best_of(lambda: det.detect([big]), 3)
    ours_big = {"tokens": len(big), "best_s": min(times), "tokens_per_s": len(big) / min(times),
                "calls": len(times), "result": result_summary(res)}
    return {"theirs": theirs, "ours_same_slice": ours_slice, "ours_large": ours_big,
            "ratio_same_slice": ours_slice["tokens_per_s"] / theirs["tokens_per_s"],
            "ratio_large": ours_big["tokens_per_s"] / theirs["tokens_per_s"]}


def print_hf(r: dict[str, Any]) -> None:
    t, o, b = r["theirs"], r["ours_same_slice"], r["ours_large"]
    rows = [
        ["transformers WatermarkDetector", f"{t['tokens']:,}", f"{t['tokens_scored']:,}", "1",
         f"{t['seconds']:,.3f}", fmt_rate(t["tokens_per_s"]), "1x"],
        ["ours, Detector, same slice", f"{o['tokens']:,}", f"{o['result']['n_scored']:,}",
         str(o["calls"]), f"{o['best_s']:,.5f}", fmt_rate(o["tokens_per_s"]),
         f"{r['ratio_same_slice']:,.0f}x"],
        [f"ours, Detector, {fmt_tokens(b['tokens'])} ids", f"{b['tokens']:,}",
         f"{b['result']['n_scored']:,}", str(b["calls"]), f"{b['best_s']:,.3f}",
         fmt_rate(b["tokens_per_s"]), f"{r['ratio_large']:,.0f}x"],
    ]
    print_table(["detector (KGW h=1, gamma=0.25, dedup)", "tokens", "scored", "calls", "best s",
                 "tokens/s", "ours/theirs"], rows)
    dedup = "ignore_repeated_ngrams=True" if t["ignore_repeated_ngrams"] else \
        "no dedup option in this transformers version"
    probes = ", ".join(f"{k} thread(s) {fmt_rate(v)}"
                       for k, v in t["probe_tokens_per_s_by_threads"].items())
    print(f"transformers: lefthash, {dedup}, {t['torch_threads']} torch thread(s), the faster on "
          f"a 300-token probe ({probes} tokens/s); it reseeds a "
          "torch.Generator and draws a vocabulary permutation per distinct n-gram, and returns a "
          "z-score. Ours: siphash24-v1, (window, token) dedup, exact binomial p-value. Ours "
          "also scores the first token (its window is padding), transformers does not.")


# -- 3. vLLM 0.33's Gumbel detector algorithm ---------------------------------------------------
def vllm_prepare_inputs(tokens: list[int], w: int, dedup: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [N, w] and targets [N, 1] as vLLM builds them: a Python loop with a seen set."""
    prefix = [-1] * w
    seen_contexts: set[tuple[int, ...]] = set()
    contexts: list[list[int]] = []
    targets: list[int] = []
    for token in tokens:
        context = tuple(prefix[-w:])
        if not (dedup and context in seen_contexts):
            seen_contexts.add(context)
            contexts.append(list(context))
            targets.append(token)
        prefix.append(token)
    contexts_t = torch.tensor(contexts, dtype=torch.int64).reshape(-1, w)
    targets_t = torch.tensor(targets, dtype=torch.int64).reshape(-1, 1)
    return contexts_t, targets_t


def vllm_gamma_sf(score: float, n: int) -> float:
    """P(Gamma(n, 1) >= score) for an integer shape, summed in a Python loop as vLLM does."""
    if n <= 0 or score <= 0.0:
        return 1.0
    log_score = math.log(score)
    log_terms: list[float] = []
    for i in range(n):
        log_terms.append(i * log_score - math.lgamma(i + 1))
    top = max(log_terms)
    log_sum = top + math.log(sum(math.exp(t - top) for t in log_terms))
    log_p = -score + log_sum
    return min(1.0, math.exp(min(0.0, log_p)))


def vllm_detect(prf: Any, tokens: list[int], w: int) -> dict[str, Any]:
    contexts, targets = vllm_prepare_inputs(tokens, w, dedup=True)
    # vLLM's uniform(contexts [N, w], targets [N, 1]): the same function as PRF.pairs on the
    # torch path, which takes the targets as [N] (a view, no copy)
    u = prf.pairs(contexts, targets[:, 0], backend="torch")
    scores = -torch.log1p(-u.double())
    score = scores.sum().item()
    n = int(targets.shape[0])
    return {"n": n, "score": score, "pvalue": vllm_gamma_sf(score, n)}


def bench_vllm(s: Settings, ids: np.ndarray) -> dict[str, Any]:
    key = WatermarkKey.from_int(VLLM_KEY)
    prf = get_prf(PHILOX, key)
    sl = ids[: s.vllm_tokens]
    tokens = sl.tolist()  # vLLM gets the ids as a Python list
    vllm_detect(prf, tokens[:1000], VLLM_WIDTH)
    probe = tokens[: max(1, len(tokens) // 20)]
    probes: dict[int, float] = {}
    for threads in thread_choices():  # on a busy machine, one thread can be much faster
        with torch_threads(threads):
            dt, _ = timed(lambda: vllm_detect(prf, probe, VLLM_WIDTH))
        probes[threads] = len(probe) / dt
    threads = max(probes, key=lambda t: probes[t])
    with torch_threads(threads):
        times, ref = best_of(lambda: vllm_detect(prf, tokens, VLLM_WIDTH), s.vllm_repeats,
                             s.vllm_budget_s)
        dt_prep, (contexts, targets) = timed(
            lambda: vllm_prepare_inputs(tokens, VLLM_WIDTH, dedup=True))
        dt_prf, _ = timed(lambda: prf.pairs(contexts, targets[:, 0], backend="torch"))
        dt_p, _ = timed(lambda: vllm_gamma_sf(ref["score"], ref["n"]))
    theirs = {"tokens": len(tokens), "times_s": times, "best_s": min(times),
              "tokens_per_s": len(tokens) / min(times), "torch_threads": threads,
              "probe_tokens_per_s_by_threads": probes,
              "phases_s": {"prepare_inputs": dt_prep, "prf_torch": dt_prf, "pvalue_loop": dt_p},
              **ref}
    progress(f"  vLLM-style Gumbel detector: {fmt_rate(theirs['tokens_per_s'])} tokens/s "
             f"({threads} torch thread(s))")

    det = Detector(key, scheme="gumbel", prf=PHILOX, context_width=VLLM_WIDTH, dedup="context")
    det.detect([sl[:1000]])
    times, res = best_of(lambda: det.detect([sl]), 3)
    ours = {"tokens": len(sl), "times_s": times, "best_s": min(times),
            "tokens_per_s": len(sl) / min(times), "result": result_summary(res),
            "vllm_pvalue": res.vllm_pvalue}
    rel = abs(res.score_sum - ref["score"]) / max(abs(ref["score"]), 1e-300)
    agree = res.n_scored == ref["n"] and rel <= 1e-9
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    return {"theirs": theirs, "ours": ours, "score_rel_diff": rel, "agree": agree,
            "ratio": ratio, "target_ratio": TARGET_VLLM_RATIO,
            "meets_target": ratio >= TARGET_VLLM_RATIO}


def print_vllm(r: dict[str, Any]) -> None:
    t, o = r["theirs"], r["ours"]
    rows = [
        ["vLLM 0.33 algorithm (re-expressed)", f"{t['tokens']:,}", f"{t['n']:,}",
         f"{t['score']:,.6f}", f"{t['pvalue']:.4g}", f"{t['best_s']:,.3f}",
         fmt_rate(t["tokens_per_s"])],
        ["ours, Detector", f"{o['tokens']:,}", f"{o['result']['n_scored']:,}",
         f"{o['result']['score_sum']:,.6f}", f"{o['vllm_pvalue']:.4g}", f"{o['best_s']:,.3f}",
         fmt_rate(o["tokens_per_s"])],
    ]
    print_table(["Gumbel detector (philox, h=4, context dedup)", "tokens", "scored", "score",
                 "vLLM p", "best s", "tokens/s"], rows)
    ph = t["phases_s"]
    print(f"vLLM algorithm: {t['torch_threads']} torch thread(s) (the faster on a probe); one "
          f"call = prepare_inputs loop {ph['prepare_inputs']:.2f} s + Philox torch ops "
          f"{ph['prf_torch']:.2f} s + p-value loop {ph['pvalue_loop']:.2f} s")
    print(f"ratio ours/vLLM: {r['ratio']:,.0f}x (target >= {r['target_ratio']:g}x: "
          f"{meets(r['meets_target'])}); same n and score within 1e-9 relative: "
          f"{'yes' if r['agree'] else 'NO'} (relative difference {r['score_rel_diff']:.1e}); "
          f"ours exact log10 p = {o['result']['log10_pvalue']:.3f}")


# -- 4. text in ---------------------------------------------------------------------------------
def english_text(n_chars: int) -> str:
    from fingerprint.demo import human_text

    base = human_text(max_chars=1 << 62)
    reps = -(-n_chars // (len(base) + 2))
    return "\n\n".join([base] * reps)[:n_chars]


def bench_text(s: Settings, key: WatermarkKey) -> dict[str, Any]:
    from fingerprint.models import load_default_tokenizer

    dt_load, tok = timed(load_default_tokenizer)
    text = english_text(s.text_chars)
    vocab = len(tok)
    tok(text[:2000], add_special_tokens=False)
    encode_text(text[:2000], tok)

    raw_times, raw = best_of(lambda: tok(text, add_special_tokens=False)["input_ids"],
                             s.text_repeats)
    enc_times, enc = best_of(lambda: encode_text(text, tok), s.text_repeats)
    ids = enc.ids
    out: dict[str, Any] = {
        "chars": len(text), "utf8_bytes": len(text.encode("utf-8")), "vocab": vocab,
        "tokenizer_load_s": dt_load, "tokenizer_fast": bool(getattr(tok, "is_fast", False)),
        "raw_tokens": len(raw), "tokens": len(ids),
        "raw_tokenizer": {"times_s": raw_times, "best_s": min(raw_times)},
        "encode_text": {"times_s": enc_times, "best_s": min(enc_times)},
        "scoring": {},
    }
    for case in ("kgw h=2 dedup=tuple", "gumbel h=4 dedup=context"):
        det = Detector(key, **CASES[case])
        det.detect([ids[:1000]], vocab_size=vocab)
        times, res = best_of(lambda d=det: d.detect([ids], vocab_size=vocab),
                             max(2, s.text_repeats))
        best = min(times)
        share = best / (best + min(enc_times))
        out["scoring"][case] = {
            "times_s": times, "best_s": best, "tokens_per_s": len(ids) / best,
            "share_of_total": share, "share_vs_raw_tokenizer": best / (best + min(raw_times)),
            "meets_target": share <= TARGET_SCORING_SHARE, "result": result_summary(res)}
    det = Detector(key, **CASES["kgw h=2 dedup=tuple"])
    dt, res = timed(lambda: detect_text(det, text, tok))
    out["detect_text_kgw"] = {"seconds": dt, "n_scored": res.n_scored,
                              "log10_pvalue": res.log10_pvalue}
    progress(f"  text: {len(ids):,} tokens, encode_text {min(enc_times):.2f} s")
    return out


def print_text(r: dict[str, Any]) -> None:
    enc, raw = r["encode_text"]["best_s"], r["raw_tokenizer"]["best_s"]
    n = r["tokens"]
    print(f"text: {r['chars']:,} chars ({r['utf8_bytes'] / 1e6:.2f} MB UTF-8) of pydoc prose, "
          f"{n:,} tokens after normalization ({r['raw_tokens']:,} raw); fast tokenizer: "
          f"{r['tokenizer_fast']}, loaded in {r['tokenizer_load_s']:.1f} s")
    rows = [["raw tokenizer call (no normalization, no offsets)", f"{raw:,.3f}",
             fmt_rate(r["raw_tokens"] / raw), "", "", ""],
            ["encode_text (normalize + tokenize with offsets + spans)", f"{enc:,.3f}",
             fmt_rate(n / enc), "", "", ""]]
    for case, sc in r["scoring"].items():
        rows.append([f"scoring: Detector.detect, {case}", f"{sc['best_s']:,.3f}",
                     fmt_rate(sc["tokens_per_s"]), f"{sc['share_of_total']:.1%}",
                     f"<={TARGET_SCORING_SHARE:.0%}", meets(sc["meets_target"])])
    d = r["detect_text_kgw"]
    rows.append(["detect_text, kgw h=2 (one call: encode + score + per-token flags)",
                 f"{d['seconds']:,.3f}", fmt_rate(n / d["seconds"]), "", "", ""])
    print_table(["step", "best s", "tokens/s", "scoring share", "target", "meets"], rows)
    print("scoring share = scoring / (encode_text + scoring); against the raw tokenizer call "
          "alone: " + ", ".join(f"{c.split()[0]} {sc['share_vs_raw_tokenizer']:.1%}"
                                for c, sc in r["scoring"].items()))


# -- main ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one call per case: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the token ids")
    parser.add_argument("--threads", type=int, default=None,
                        help="numba and torch thread count (default: theirs)")
    parser.add_argument("--mem-limit-gib", type=float, default=None,
                        help="address-space cap in GiB (default: current + 60%% of available "
                             "memory; 0: no cap)")
    args = parser.parse_args(argv)
    s = settings_for(args.quick)
    meter = RunMeter()

    if args.threads is not None:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    info = machine_info()
    Detector(WatermarkKey.generate(), dedup="none").detect([np.arange(100)])  # starts numba
    info["numba_threading_layer"] = numba.threading_layer()
    cap = cap_address_space(args.mem_limit_gib)
    info["address_space_cap_bytes"] = cap
    print("fingerprint detection benchmark" + (" (--quick)" if s.quick else ""))
    print(f"machine : {host_line(info)}")
    print(f"software: python {info['python']}, numpy {info['numpy']}, numba {info['numba']} "
          f"({info['numba_threads']} threads, {info['numba_threading_layer']}), torch "
          f"{info['torch']} ({info['torch_threads']} threads), transformers "
          f"{info['transformers']}")
    print(f"load avg: {fmt_load(info['load_average'])} (1, 5, 15 min) | "
          f"address-space cap: {f'{cap / 2**30:.1f} GiB' if cap else 'none'}")
    print(f"targets : >= {fmt_rate(TARGET_DEDUP)} tokens/s with global dedup (stated for "
          f"(context, token) dedup, applied to context dedup too); >= {fmt_rate(TARGET_NO_DEDUP)}"
          f" tokens/s without dedup; >= {TARGET_VLLM_RATIO:g}x vLLM's Gumbel detector; scoring "
          f"<= {TARGET_SCORING_SHARE:.0%} of tokenize + score")

    key = WatermarkKey.generate()
    largest = s.sizes[-1]
    data = {dist: make_ids(dist, largest, args.seed) for dist in ("uniform", "zipf")}

    print("measuring Detector.detect ...", file=sys.stderr, flush=True)
    detect = bench_detect(s, key, data)
    section(f"1. Detector.detect: token ids -> exact p-value (best of <= "
            f"{max(s.repeats.values())} calls after a small warm-up)")
    print_detect(detect)
    print(f"ids: uniform in [0, {VOCAB}) or min(zipf({ZIPF_EXPONENT}), {VOCAB - 1}); seqs: one "
          f"sequence, or {s.n_seqs:,} of equal length; scored: share of tokens scored after "
          "dedup; PRF siphash24-v1. Without dedup, repeated (window, token) tuples count again "
          "and again, so on repetitive ids (zipf) the p-value is not valid: that is what dedup "
          "is for.")

    print("measuring transformers' WatermarkDetector ...", file=sys.stderr, flush=True)
    hf = bench_hf(s, key, data["uniform"])
    section(f"2. transformers WatermarkDetector vs ours, KGW h=1, gamma={GAMMA}, uniform ids")
    print_hf(hf)

    print("measuring vLLM's Gumbel detector algorithm ...", file=sys.stderr, flush=True)
    vllm = bench_vllm(s, data["uniform"])
    section(f"3. vLLM 0.33 Gumbel detector algorithm vs ours ({fmt_tokens(s.vllm_tokens)} "
            "uniform ids)")
    print_vllm(vllm)

    print("measuring text in ...", file=sys.stderr, flush=True)
    text = bench_text(s, key)
    section("4. Text in: tokenization vs scoring")
    print_text(text)

    totals = print_footer(meter, info["cpus_usable"])
    if args.json:
        write_json(args.json, {
            "machine": info, "quick": s.quick, "seed": args.seed, "vocab": VOCAB,
            "settings": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                         for k, v in vars(s).items()},
            "targets": {"dedup_tokens_per_s": TARGET_DEDUP,
                        "no_dedup_tokens_per_s": TARGET_NO_DEDUP,
                        "vllm_ratio": TARGET_VLLM_RATIO, "scoring_share": TARGET_SCORING_SHARE},
            "detect": detect, "transformers": hf, "vllm": vllm, "text": text,
            **totals,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
