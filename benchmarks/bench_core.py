"""Throughput benchmark of the keyed PRF core, with transformers' detector and a read-only limit.

What it measures, in one run, on the same random token ids (int64 in ``[0, 49152)``):

1. ``PRF.score`` throughput (tokens/s) for each PRF (``siphash24-v1``, ``philox4x32-10-v1``),
   context width ``h`` in {1, 4} and backend:

   * ``numpy->numba``: a numpy array through the fused numba kernel;
   * ``torch-cpu->numba``: a torch CPU tensor, which goes through the same kernel (zero-copy);
   * ``torch-ops cpu``: ``backend="torch"`` on the CPU, the vectorized tensor-op path that CUDA
     uses (slow on a CPU, so only measured on the smallest size);
   * ``torch cuda``: the tensor-op path on a GPU, when ``torch.cuda.is_available()``.

   Sizes: 1M and 20M tokens as one row ``[1, N]``, plus a batched ``[64, N / 64]`` shape of the
   largest size. Each case is warmed up once (the first call loads or compiles the numba kernel),
   then timed as the best of at least 3 repeats (more for fast cases, up to a small time budget)
   with ``time.perf_counter``.
2. transformers' ``WatermarkDetector`` (KGW "lefthash", ``h = 1``, CPU) on a slice of the same
   ids, sized to take a few seconds, next to ours. It reseeds a ``torch.Generator`` and draws a
   vocabulary permutation per token, then computes a z-score; it is timed with torch's default
   thread count and with one thread, and the faster is used for the ratio.
3. A limit reference: one fused ``numba`` pass that only reads each token and its ``h``
   predecessors and mixes them with a multiply-xor into a float64 output (no PRF). Ours is
   reported as a fraction of it.
4. The time to build one whole-vocabulary row (``PRF.row``, ``B = 1``) for V = 49,152 and
   V = 152,064, best of many calls, per PRF and backend.

Run it from the repository root::

    python3 benchmarks/bench_core.py                 # full run, a few minutes on 2 cores
    python3 benchmarks/bench_core.py --quick         # 1M tokens only, fewer repeats (~30 s)
    python3 benchmarks/bench_core.py --json out.json # also write every number to out.json
    python3 benchmarks/bench_core.py --threads 1     # per-core numbers (numba and torch threads)

Timings depend on what else the machine is doing: the header prints the load average, and the
footer the CPU time that other processes used during the run (best-of timing absorbs some noise,
but on a busy machine the numbers are lower bounds).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from fingerprint import WatermarkKey, get_prf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RunMeter,
    cuda_sync,
    fmt_load,
    fmt_rate,
    fmt_tokens,
    host_line,
    machine_info,
    measure,
    meets,
    no_sync,
    print_footer,
    print_table,
    section,
    time_call,
    write_json,
)

VOCAB = 49_152
PRFS = ("siphash24-v1", "philox4x32-10-v1")
DEFAULT_PRF = "siphash24-v1"
WIDTHS = (1, 4)
BATCH_ROWS = 64
ROW_VOCABS = (49_152, 152_064)
GAMMA = 0.25  # transformers' default greenlist ratio

TARGET_TOKENS_PER_S = {"siphash24-v1": 100e6, "philox4x32-10-v1": 50e6}
TARGET_ROW_MS = 1.0  # for V = 152,064
TARGET_ROW_VOCAB = 152_064
HF_REFERENCE_TOKENS_PER_S = 2_000.0


@dataclass
class Settings:
    """What one run measures: sizes and repeat counts."""

    quick: bool
    sizes: tuple[int, ...]
    repeats: int  # at least this many timed calls ...
    min_seconds: float  # ... and more, up to max_repeats, until this much time is spent
    max_repeats: int
    torch_ops_tokens: int
    row_calls: int
    hf_seconds: float
    hf_min_tokens: int
    hf_max_tokens: int
    hf_repeats: int


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(quick=True, sizes=(1_000_000,), repeats=2, min_seconds=0.2,
                        max_repeats=10, torch_ops_tokens=250_000,
                        row_calls=10, hf_seconds=1.0, hf_min_tokens=300, hf_max_tokens=5_000,
                        hf_repeats=1)
    return Settings(quick=False, sizes=(1_000_000, 20_000_000), repeats=3,
                    min_seconds=1.0, max_repeats=30, torch_ops_tokens=1_000_000, row_calls=50,
                    hf_seconds=3.0, hf_min_tokens=2_000, hf_max_tokens=20_000, hf_repeats=2)


# -- 1. core throughput -------------------------------------------------------------------------
@dataclass
class Case:
    """One backend's way of scoring a [B, T] int64 array."""

    backend: str
    make_input: Callable[[np.ndarray], Any]
    kwargs: dict[str, Any]
    sync: Callable[[], None]
    target_applies: bool


def backends_available() -> list[Case]:
    cases = [
        Case("numpy->numba", lambda a: a, {}, no_sync, True),
        Case("torch-cpu->numba", torch.from_numpy, {}, no_sync, True),
        Case("torch-ops cpu", torch.from_numpy, {"backend": "torch"}, no_sync, False),
    ]
    if torch.cuda.is_available():
        cases.append(Case("torch cuda", lambda a: torch.from_numpy(a).cuda(), {}, cuda_sync,
                          True))
    return cases


def slice_warmup(prf: Any, data: Any, h: int) -> Callable[[], Any]:
    """A warm-up call of the torch-ops path on a small slice."""
    return lambda: prf.score(data, h, backend="torch")


def bench_throughput(
    s: Settings, tokens: np.ndarray, keys: dict[str, Any]
) -> list[dict[str, Any]]:
    """Tokens/s of PRF.score for every PRF x backend x h x shape."""
    largest = s.sizes[-1]
    shapes: list[tuple[int, int]] = [(1, n) for n in s.sizes]
    shapes.append((BATCH_ROWS, largest // BATCH_ROWS))
    results: list[dict[str, Any]] = []
    for case in backends_available():
        for shape in shapes:
            if case.backend == "torch-ops cpu":
                if shape[0] != 1 or shape[1] != s.sizes[0]:
                    continue
                shape = (1, min(shape[1], s.torch_ops_tokens))
            n = shape[0] * shape[1]
            data = case.make_input(tokens[:n].reshape(shape))
            for name in PRFS:
                prf = keys[name]
                for h in WIDTHS:
                    def run(p: Any = prf, d: Any = data, hh: int = h,
                            kw: dict[str, Any] = case.kwargs) -> Any:
                        return p.score(d, hh, **kw)

                    warm, warm_tokens = None, n
                    if case.backend == "torch-ops cpu":  # nothing to compile: warm on a slice
                        warm_tokens = min(shape[1], 65_536)
                        warm = slice_warmup(prf, data[:, :warm_tokens], h)
                    first, times = measure(run, s.repeats, warmup=warm, sync=case.sync,
                                           min_seconds=s.min_seconds,
                                           max_repeats=s.max_repeats)
                    best = min(times)
                    rate = n / best
                    target = TARGET_TOKENS_PER_S[name] if case.backend != "torch-ops cpu" else None
                    results.append({
                        "prf": name, "backend": case.backend, "h": h, "shape": list(shape),
                        "tokens": n, "warmup_tokens": warm_tokens, "first_call_s": first,
                        "times_s": times, "best_s": best,
                        "median_s": statistics.median(times),
                        "tokens_per_s": rate, "target_tokens_per_s": target,
                        "meets_target": None if target is None else rate >= target,
                    })
                    print(f"  {name:17s} {case.backend:17s} h={h} {shape!s:16s} "
                          f"{fmt_rate(rate):>8s} tokens/s", file=sys.stderr, flush=True)
            del data
    return results


def print_throughput(results: list[dict[str, Any]]) -> None:
    order = {c.backend: i for i, c in enumerate(backends_available())}
    rows = []
    for r in sorted(results, key=lambda r: (PRFS.index(r["prf"]), r["h"], order[r["backend"]],
                                            r["tokens"], r["shape"][0])):
        target = r["target_tokens_per_s"]
        rows.append([
            r["prf"], r["backend"], str(r["h"]), f"[{r['shape'][0]}, {fmt_tokens(r['shape'][1])}]",
            f"{r['first_call_s'] * 1e3:,.0f}" + ("*" if r["warmup_tokens"] != r["tokens"] else ""),
            f"{r['best_s'] * 1e3:,.1f}",
            fmt_rate(r["tokens_per_s"]), "" if target is None else ">=" + fmt_rate(target),
            meets(r["meets_target"]),
        ])
    print_table(["PRF", "backend", "h", "shape [B, T]", "1st call ms", "best ms", "tokens/s",
                 "target", "meets"], rows)
    if any(r["warmup_tokens"] != r["tokens"] for r in results):
        print("* warm-up call on a 64k-token slice (the torch-ops path has nothing to compile)")


# -- 2. transformers' WatermarkDetector ---------------------------------------------------------
def make_hf_detector() -> Any:
    """transformers' KGW detector (lefthash, h = 1) for a 49,152-token vocabulary, offline."""
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    model_config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=4)
    wm = WatermarkingConfig(greenlist_ratio=GAMMA, seeding_scheme="lefthash", context_width=1)
    return WatermarkDetector(model_config=model_config, device="cpu", watermarking_config=wm)


def hf_slice(tokens: np.ndarray, n: int, bos: int | None) -> np.ndarray:
    """The first ``n`` ids not starting with BOS (the detector would drop a leading BOS)."""
    start = 0
    while bos is not None and int(tokens[start]) == bos:
        start += 1
    return np.ascontiguousarray(tokens[start : start + n])[None, :]


def bench_hf(s: Settings, tokens: np.ndarray, prf: Any) -> dict[str, Any]:
    detector = make_hf_detector()
    bos = detector.bos_token_id
    default_threads = torch.get_num_threads()
    runs: list[dict[str, Any]] = []
    try:
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            probe = torch.from_numpy(hf_slice(tokens, 200, bos))
            detector(probe[:, :20], return_dict=True)  # warm up
            probe_rate = probe.shape[1] / time_call(lambda p=probe: detector(p, return_dict=True),
                                                    no_sync)
            n = int(min(s.hf_max_tokens, max(s.hf_min_tokens, probe_rate * s.hf_seconds)))
            ids = torch.from_numpy(hf_slice(tokens, n, bos))
            times: list[float] = []
            out: Any = None
            for _ in range(s.hf_repeats):
                t0 = time.perf_counter()
                out = detector(ids, return_dict=True)
                times.append(time.perf_counter() - t0)
            scored = int(out.num_tokens_scored[0])
            runs.append({
                "torch_threads": threads, "tokens": n, "tokens_scored": scored,
                "times_s": times, "best_s": min(times), "tokens_per_s": scored / min(times),
                "green_fraction": float(out.green_fraction[0]), "z_score": float(out.z_score[0]),
            })
            print(f"  transformers WatermarkDetector, {threads} torch thread(s): "
                  f"{fmt_rate(runs[-1]['tokens_per_s'])} tokens/s on {n:,} tokens",
                  file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(default_threads)

    best = max(runs, key=lambda r: r["tokens_per_s"])
    # Ours on the identical slice, end to end: uniforms, green count and z-score.
    ids_np = hf_slice(tokens, best["tokens"], bos)

    def ours() -> float:
        u = prf.score(ids_np, 1)
        green = int(np.count_nonzero(u[:, 1:] < GAMMA))
        m = u.shape[1] - 1
        return (green - GAMMA * m) / math.sqrt(m * GAMMA * (1 - GAMMA))

    z = ours()
    _, times = measure(ours, 50)
    return {
        "hf_runs": runs, "hf_best": best,
        "ours_same_slice": {"tokens": best["tokens"], "best_s": min(times),
                            "tokens_per_s": best["tokens"] / min(times), "z_score": z},
    }


# -- 3. the read-only limit ---------------------------------------------------------------------
_MIX = np.uint64(0x9E3779B97F4A7C15)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_TO_UNIT = 1.0 / 9007199254740992.0


def make_limit_kernel(h: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """A parallel pass reading each token and its ``h`` predecessors (``h`` a constant)."""
    width = int(h)

    @numba.njit(parallel=True)
    def kernel(x: np.ndarray, out: np.ndarray) -> None:
        for t in numba.prange(x.shape[0]):
            acc = np.uint64(x[t]) * _MIX
            for j in range(1, width + 1):
                w = np.uint64(x[t - j]) if t >= j else _ALL_ONES
                acc = (acc ^ w) * _MIX
            out[t] = np.float64(acc >> np.uint64(11)) * _TO_UNIT

    return kernel


def bench_limit(
    s: Settings, tokens: np.ndarray, ours: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    n = s.sizes[-1]
    flat = tokens[:n]
    results = []
    for h in WIDTHS:
        kernel = make_limit_kernel(h)

        def run(k: Callable[[np.ndarray, np.ndarray], None] = kernel) -> np.ndarray:
            out = np.empty(flat.shape, dtype=np.float64)  # allocated per call, as in PRF.score
            k(flat, out)
            return out

        first, times = measure(run, max(s.repeats, 5), min_seconds=s.min_seconds,
                               max_repeats=s.max_repeats)
        rate = n / min(times)
        entry: dict[str, Any] = {"h": h, "tokens": n, "first_call_s": first, "times_s": times,
                                 "best_s": min(times), "tokens_per_s": rate, "ours": {}}
        for r in ours:
            if r["h"] == h and r["tokens"] == n and r["shape"][0] == 1 and \
                    r["backend"] == "numpy->numba":
                entry["ours"][r["prf"]] = {"tokens_per_s": r["tokens_per_s"],
                                           "fraction_of_limit": r["tokens_per_s"] / rate}
        results.append(entry)
    return results


# -- 4. whole-vocabulary rows -------------------------------------------------------------------
def bench_rows(s: Settings, keys: dict[str, Any]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    modes: list[tuple[str, Callable[[np.ndarray], Any], dict[str, Any], Callable[[], None]]] = [
        ("numpy->numba", lambda a: a, {}, no_sync),
        ("torch-ops cpu", torch.from_numpy, {"backend": "torch"}, no_sync),
    ]
    if torch.cuda.is_available():
        modes.append(("torch cuda", lambda a: torch.from_numpy(a).cuda(), {}, cuda_sync))
    results = []
    for backend, make, kw, sync in modes:
        for name in PRFS:
            prf = keys[name]
            for h in WIDTHS:
                ctx = make(rng.integers(0, VOCAB, size=(1, h), dtype=np.int64))
                for v in ROW_VOCABS:
                    def run(p: Any = prf, c: Any = ctx, vv: int = v,
                            k: dict[str, Any] = kw) -> Any:
                        return p.row(c, vv, **k)

                    calls = s.row_calls if backend != "torch-ops cpu" else max(5, s.row_calls // 5)
                    first, times = measure(run, calls, sync=sync)
                    best_ms = min(times) * 1e3
                    applies = v == TARGET_ROW_VOCAB and backend != "torch-ops cpu"
                    results.append({
                        "prf": name, "backend": backend, "h": h, "vocab_size": v, "calls": calls,
                        "first_call_ms": first * 1e3, "best_ms": best_ms,
                        "median_ms": statistics.median(times) * 1e3,
                        "target_ms": TARGET_ROW_MS if applies else None,
                        "meets_target": (best_ms <= TARGET_ROW_MS) if applies else None,
                    })
    return results


def print_rows(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        rows.append([
            r["prf"], r["backend"], str(r["h"]), f"{r['vocab_size']:,}", str(r["calls"]),
            f"{r['first_call_ms']:,.2f}", f"{r['best_ms']:,.3f}", f"{r['median_ms']:,.3f}",
            "" if r["target_ms"] is None else f"<={r['target_ms']:g}", meets(r["meets_target"]),
        ])
    print_table(["PRF", "backend", "h", "V", "calls", "1st ms", "best ms", "median ms",
                 "target", "meets"], rows)


# -- main ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1M tokens only and fewer repeats: a smoke run of about 30 s")
    parser.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    parser.add_argument("--threads", type=int, default=0,
                        help="numba and torch thread count (default: leave both as they are)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    s = settings_for(args.quick)
    meter = RunMeter()

    info = machine_info(processor=True)
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["cuda_device"] = torch.cuda.get_device_name(0)
    print("fingerprint core benchmark" + (" (--quick)" if s.quick else ""))
    print(f"machine : {host_line(info)}")
    print(f"software: python {info['python']}, numpy {info['numpy']}, numba {info['numba']} "
          f"({info['numba_threads']} threads), torch {info['torch']} ({info['torch_threads']} "
          f"threads), transformers {info['transformers']}")
    print(f"load avg: {fmt_load(info['load_average'])} (1, 5, 15 min)"
          f" | cuda: {info.get('cuda_device', 'not available')}")
    print(f"targets : {DEFAULT_PRF} >= {fmt_rate(TARGET_TOKENS_PER_S[DEFAULT_PRF])} tokens/s "
          f"(h=1..4); philox4x32-10-v1 >= {fmt_rate(TARGET_TOKENS_PER_S['philox4x32-10-v1'])} "
          f"tokens/s; row V=152,064 <= {TARGET_ROW_MS:g} ms; transformers detector "
          f"~{HF_REFERENCE_TOKENS_PER_S:,.0f} tokens/s (reference)")

    largest = s.sizes[-1]
    tokens = np.random.default_rng(args.seed).integers(0, VOCAB, size=largest, dtype=np.int64)
    key = WatermarkKey.generate()
    keys = {name: get_prf(name, key, "kgw") for name in PRFS}

    print("measuring PRF.score ...", file=sys.stderr, flush=True)
    throughput = bench_throughput(s, tokens, keys)
    section("1. PRF.score throughput (token ids in [0, 49152), int64; best of "
            f">= {s.repeats} after one warm-up call)")
    print_throughput(throughput)

    print("measuring transformers' WatermarkDetector ...", file=sys.stderr, flush=True)
    hf = bench_hf(s, tokens, keys[DEFAULT_PRF])
    ours_big = next(r for r in throughput if r["prf"] == DEFAULT_PRF and r["h"] == 1
                    and r["backend"] == "numpy->numba" and r["shape"] == [1, largest])
    hf_best = hf["hf_best"]
    hf["ours_largest"] = {"tokens": largest, "tokens_per_s": ours_big["tokens_per_s"]}
    hf["ratio_ours_over_hf"] = ours_big["tokens_per_s"] / hf_best["tokens_per_s"]
    hf["ratio_same_slice"] = hf["ours_same_slice"]["tokens_per_s"] / hf_best["tokens_per_s"]
    section(f"2. transformers WatermarkDetector (lefthash, h=1, gamma={GAMMA}) vs "
            f"{DEFAULT_PRF}, h=1, on the same ids")
    rows = []
    for r in hf["hf_runs"]:
        rows.append([f"transformers, {r['torch_threads']} torch thread(s)",
                     f"{r['tokens']:,}", f"{r['best_s']:,.3f}", fmt_rate(r["tokens_per_s"]),
                     f"{r['z_score']:+.2f}", f"~{HF_REFERENCE_TOKENS_PER_S:,.0f}"])
    same = hf["ours_same_slice"]
    rows.append(["ours, same slice (score + z)", f"{same['tokens']:,}",
                 f"{same['best_s']:,.6f}", fmt_rate(same["tokens_per_s"]),
                 f"{same['z_score']:+.2f}", ""])
    rows.append([f"ours, numpy->numba [1, {fmt_tokens(largest)}]", f"{largest:,}",
                 f"{ours_big['best_s']:,.3f}", fmt_rate(ours_big["tokens_per_s"]), "", ""])
    print_table(["detector", "tokens", "best s", "tokens/s", "z", "reference"], rows)
    print(f"ratio ours/theirs (h=1, {DEFAULT_PRF}, vs the faster transformers run): "
          f"{hf['ratio_ours_over_hf']:,.0f}x at [1, {fmt_tokens(largest)}]; "
          f"{hf['ratio_same_slice']:,.0f}x on the same {same['tokens']:,}-token slice")
    print("note: transformers reseeds a torch.Generator and draws a vocabulary permutation per "
          "token (deduplicating n-grams), and returns z-scores; ours returns per-token uniforms.")

    print("measuring the read-only limit ...", file=sys.stderr, flush=True)
    limit = bench_limit(s, tokens, throughput)
    section(f"3. Limit reference: one fused numba pass, read h+1 ids, multiply-xor, float64 out "
            f"([1, {fmt_tokens(largest)}])")
    rows = []
    for r in limit:
        fracs = ", ".join(f"{name} {o['fraction_of_limit']:.1%}" for name, o in r["ours"].items())
        rows.append([str(r["h"]), f"{r['best_s'] * 1e3:,.1f}", fmt_rate(r["tokens_per_s"]),
                     fracs])
    print_table(["h", "best ms", "tokens/s", "ours (numpy->numba) as a fraction of the limit"],
                rows)

    print("measuring PRF.row ...", file=sys.stderr, flush=True)
    row_results = bench_rows(s, keys)
    section("4. PRF.row: one whole-vocabulary row, B=1 (best of the calls after one warm-up)")
    print_rows(row_results)

    totals = print_footer(meter, info["cpus_usable"])
    if args.json:
        write_json(args.json, {
            "machine": info, "quick": s.quick, "seed": args.seed, "vocab": VOCAB,
            "targets": {"tokens_per_s": TARGET_TOKENS_PER_S, "row_ms": TARGET_ROW_MS,
                        "row_vocab": TARGET_ROW_VOCAB,
                        "transformers_reference_tokens_per_s": HF_REFERENCE_TOKENS_PER_S},
            "throughput": throughput, "transformers": hf, "limit": limit, "rows": row_results,
            **totals,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
