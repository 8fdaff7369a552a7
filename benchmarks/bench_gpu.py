"""GPU benchmark: PRF scoring throughput, the watermark processors' step time, the reading audit.

Everything runs on one device, ``--device`` (default ``cuda`` when a GPU is visible, else
``cpu``). On a GPU, tensors take the fused Triton kernels by themselves (the same integer words
and float mapping as the CPU kernels, bit for bit; ``tests/test_triton.py`` and
``tests/test_cuda.py`` check it), and the eager torch ops (the path without Triton) are measured
beside them. On the CPU the torch ops are forced (``backend="torch"``, and for the processors
the PRF's routing switched so that CPU tensors take them too), and the numba kernels, which CPU
users get by default, are measured beside them for reference. CPU numbers are not GPU numbers:
the targets are judged only on a CUDA device.

1. Scoring: ``PRF.score`` on a ``[B, T]`` int64 tensor already on the device (64 x 2**20, about
   67M tokens, on a GPU), both PRFs (``siphash24-v1``, ``philox4x32-10-v1``), h = 2 and 4. One
   warm-up call, then repeats timed with CUDA events (and a synchronized wall clock); tokens/s
   from the best repeat. Target on an H100: >= 1e9 tokens/s.
2. Watermark processor step: ``KGWLogitsProcessor`` / ``GumbelLogitsProcessor.__call__`` on
   ``[B, V]`` float32 logits and ``[B, ctx]`` input ids on the device, B = 256, V = 152,064 on a
   GPU. The input grows by one token a step, as in ``generate``, so each call is a steady-state
   step (window tracking and, for Gumbel, single-turn dedup included; a ``dedup none`` row shows
   the cost without it). A few warm-up steps, then many steps, each synchronized: median and p90
   wall time per step, and the median of the GPU time between CUDA events. Target on an H100:
   <= 0.2 ms per step. With Triton, ``kernel only`` rows time the fused steps alone
   (``PRF.fused_green_add``, ``PRF.fused_gumbel_argmax``).
3. Reading-mode audit: ``audit_open`` over a synthetic teacher corpus (random token ids; the
   cost does not depend on the text) with the suspect model on the device: the embedded
   SmolLM2-135M (``--model default``) or a tiny random Llama (``--model tiny``, the ``--quick``
   default). Tokens/s over the whole audit and without its control keys, and the share of the
   time spent in the model's forward (``AuditResult.timing``).

Run it from the repository root::

    python3 benchmarks/bench_gpu.py                      # on the GPU if there is one
    python3 benchmarks/bench_gpu.py --quick              # small sizes, tiny model: a smoke run
    python3 benchmarks/bench_gpu.py --device cpu --quick # the CUDA code path on the CPU
    python3 benchmarks/bench_gpu.py --json out.json      # also write every number to out.json

``--batch``, ``--vocab``, ``--score-shape`` and ``--steps`` override the sizes. Running out of
device memory is reported for the case that did, and the run goes on with the next case.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint import WatermarkKey, get_prf
from fingerprint.core import prf as prf_module
from fingerprint.watermark import GumbelLogitsProcessor, KGWLogitsProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RunMeter,
    fmt_load,
    host_line,
    machine_info,
    meets,
    no_sync,
    print_footer,
    print_table,
    progress,
    section,
    write_json,
)
from _common import fmt_rate as _fmt_rate

PRFS = ("siphash24-v1", "philox4x32-10-v1")
SCORE_WIDTHS = (2, 4)
SCORE_VOCAB = 152_064
TARGET_TOKENS_PER_S = 1e9  # scoring, on an H100
TARGET_STEP_MS = 0.2  # processor step at B = 256, V = 152,064, on an H100
TARGET_BATCH = 256
TARGET_VOCAB = 152_064
TARGET_GPU = "H100"
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)


@dataclass
class Settings:
    """Sizes and repeat counts of one run."""

    quick: bool
    score_shape: tuple[int, int]  # the device path's [B, T]
    numba_shape: tuple[int, int]  # the CPU kernels' [B, T] (reference rows on a CPU run)
    score_repeats: int
    batch: int
    vocab: int
    ctx: int
    warmup_steps: int
    steps: int
    step_budget_s: float  # stop a processor case early once this much time is spent
    model: str
    texts: int
    prompt_tokens: int
    completion_tokens: int
    audit_batch_tokens: int
    controls: int


def settings_for(device: torch.device, quick: bool, model: str | None) -> Settings:
    gpu = device.type == "cuda"
    if gpu:
        return Settings(
            quick=quick, score_shape=(64, 1 << 18) if quick else (64, 1 << 20),
            numba_shape=(0, 0), score_repeats=3 if quick else 10, batch=TARGET_BATCH,
            vocab=TARGET_VOCAB, ctx=128, warmup_steps=3, steps=30 if quick else 200,
            step_budget_s=20.0 if quick else 60.0, model=model or ("tiny" if quick else "default"),
            texts=64 if quick else 512, prompt_tokens=32, completion_tokens=224 if quick else 480,
            audit_batch_tokens=32_768, controls=20 if quick else 100)
    return Settings(
        quick=quick, score_shape=(4, 1 << 15) if quick else (16, 1 << 16),
        numba_shape=(4, 1 << 18) if quick else (16, 1 << 20), score_repeats=2 if quick else 3,
        batch=2 if quick else 4, vocab=TARGET_VOCAB, ctx=128, warmup_steps=1,
        steps=3 if quick else 5, step_budget_s=10.0 if quick else 30.0,
        model=model or ("tiny" if quick else "default"), texts=32 if quick else 16,
        prompt_tokens=16 if quick else 32, completion_tokens=112 if quick else 224,
        audit_batch_tokens=4_096, controls=20 if quick else 100)


# -- timing -------------------------------------------------------------------------------------
def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None]:
    """(synchronized wall seconds, CUDA-event seconds or None) of one call of ``fn``."""
    sync = synchronizer(device)
    sync()
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        wall = time.perf_counter() - t0
        return wall, start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, None


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def is_oom(err: BaseException) -> bool:
    return isinstance(err, OOM_ERRORS) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err).lower())


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def oom_message(what: str, device: torch.device) -> str:
    extra = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        extra = f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free now)"
    return (f"OUT OF MEMORY on {device} for {what}{extra}: skipped. Use a smaller size "
            "(--score-shape, --batch, --vocab) or a device with more memory.")


def torch_ops_everywhere() -> Any:
    """Inside: every tensor the PRF receives takes the torch ops, CPU and CUDA tensors alike.
    Outside, CPU tensors go to the numba kernels and CUDA tensors to Triton (when present)."""
    return prf_module.tensor_path("torch")


# -- machine and output -------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    """The host (:func:`machine_info`) and the device the benchmark runs on."""
    info = machine_info()
    info.update(cuda_available=torch.cuda.is_available(), device=str(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_gib=props.total_memory / 2**30,
                    cuda_runtime=torch.version.cuda,
                    device_capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = f"CPU: {info['cpu_model']}"
    return info


def fmt_rate(x: float) -> str:
    """A rate with two decimals and a k/M/G suffix (GPU rates reach billions)."""
    return _fmt_rate(x, digits=2, giga=True)


# -- 1. scoring ---------------------------------------------------------------------------------
def bench_scoring(s: Settings, device: torch.device, key: WatermarkKey) -> list[dict[str, Any]]:
    gpu = device.type == "cuda"
    cases: list[tuple[str, tuple[int, int], dict[str, Any]]] = []
    if gpu and prf_module.triton_available():
        cases.append(("triton (default)", s.score_shape, {}))
    cases.append(("torch ops" + ("" if gpu else " (CUDA path)"), s.score_shape,
                  {"backend": "torch"}))
    if not gpu:
        cases.append(("numba (CPU default)", s.numba_shape, {"backend": "numba"}))
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    for path, shape, kw in cases:
        n = shape[0] * shape[1]
        try:
            x = torch.from_numpy(rng.integers(0, SCORE_VOCAB, shape, dtype=np.int64)).to(device)
        except Exception as err:
            if not is_oom(err):
                raise
            progress(oom_message(f"a {list(shape)} token tensor", device))
            results.append({"path": path, "shape": list(shape), "error": "out of memory"})
            continue
        for name in PRFS:
            prf = get_prf(name, key, "kgw")
            for h in SCORE_WIDTHS:
                entry: dict[str, Any] = {"path": path, "prf": name, "h": h, "shape": list(shape),
                                         "tokens": n}

                def run(p: Any = prf, xx: torch.Tensor = x, hh: int = h,
                        k: dict[str, Any] = kw) -> Any:
                    return p.score(xx, hh, vocab_size=SCORE_VOCAB, **k)

                try:
                    first, _ = timed_call(run, device)
                    walls, events = [], []
                    for _ in range(s.score_repeats):
                        w, e = timed_call(run, device)
                        walls.append(w)
                        if e is not None:
                            events.append(e)
                except Exception as err:
                    if not is_oom(err):
                        raise
                    free_memory(device)
                    progress(oom_message(f"{name} h={h} on {list(shape)}", device))
                    entry["error"] = "out of memory"
                    results.append(entry)
                    continue
                best = min(events) if events else min(walls)
                rate = n / best
                applies = gpu
                entry.update(
                    first_call_s=first, wall_s=walls, event_s=events or None, best_s=best,
                    median_s=statistics.median(events or walls), tokens_per_s=rate,
                    target_tokens_per_s=TARGET_TOKENS_PER_S if applies else None,
                    meets_target=(rate >= TARGET_TOKENS_PER_S) if applies else None)
                results.append(entry)
                progress(f"  score {path:24s} {name:17s} h={h} {fmt_rate(rate)} tokens/s")
        del x
        free_memory(device)
    return results


def print_scoring(results: list[dict[str, Any]], gpu: bool) -> None:
    rows = []
    for r in results:
        shape = f"[{r['shape'][0]}, {r['shape'][1]:,}]"
        if "error" in r:
            rows.append([r["path"], r.get("prf", ""), str(r.get("h", "")), shape, "", "", "",
                         r["error"], "", ""])
            continue
        rows.append([
            r["path"], r["prf"], str(r["h"]), shape, f"{r['first_call_s'] * 1e3:,.1f}",
            f"{r['best_s'] * 1e3:,.2f}", f"{r['median_s'] * 1e3:,.2f}", fmt_rate(r["tokens_per_s"]),
            f">={fmt_rate(TARGET_TOKENS_PER_S)}" if gpu and "numba" not in r["path"] else "",
            meets(r["meets_target"], "n/a")])
    print_table(["path", "PRF", "h", "shape [B, T]", "1st ms", "best ms", "median ms",
                 "tokens/s", "target", "meets"], rows)
    print("best/median: " + ("GPU time between CUDA events" if gpu else "wall time") +
          "; the first call includes any warm-up (allocation, kernel loading)")


# -- 2. processor step --------------------------------------------------------------------------
def processor_cases(key: WatermarkKey, int_key: WatermarkKey) -> list[tuple[str, Any]]:
    """(label, processor): the defaults of each scheme, and the vLLM-compatible Philox setups."""
    return [
        ("kgw siphash h=2", KGWLogitsProcessor(key, 0.25, 2.0, 2, "siphash24-v1")),
        ("kgw philox h=2", KGWLogitsProcessor(int_key, 0.25, 2.0, 2, "philox4x32-10-v1")),
        ("gumbel siphash h=4", GumbelLogitsProcessor(key, 4, "siphash24-v1",
                                                     check_placement=False)),
        ("gumbel philox h=4", GumbelLogitsProcessor(int_key, 4, "philox4x32-10-v1",
                                                    check_placement=False)),
        ("gumbel siphash h=4, dedup none", GumbelLogitsProcessor(
            key, 4, "siphash24-v1", deduplicate_contexts="none", check_placement=False)),
    ]


def bench_processor(s: Settings, device: torch.device, key: WatermarkKey,
                    int_key: WatermarkKey) -> list[dict[str, Any]]:
    gpu = device.type == "cuda"
    paths: list[tuple[str, Any]]
    if gpu:
        paths = [("triton (default)", None)] if prf_module.triton_available() else []
        paths.append(("torch ops", torch_ops_everywhere))
    else:
        paths = [("torch ops (CUDA path)", torch_ops_everywhere), ("numba (CPU default)", None)]
    b, v = s.batch, s.vocab
    gen = torch.Generator().manual_seed(0)
    results: list[dict[str, Any]] = []
    try:
        n_ids = s.ctx + s.warmup_steps + s.steps
        ids = torch.randint(0, v, (b, n_ids), generator=gen).to(device)
        logits = (torch.randn(b, v, generator=gen) * 3).to(device)
    except Exception as err:
        if not is_oom(err):
            raise
        progress(oom_message(f"[{b}, {v}] logits", device))
        return [{"shape": [b, v], "error": "out of memory"}]
    for path, context in paths:
        for label, proc in processor_cases(key, int_key):
            entry: dict[str, Any] = {"path": path, "processor": label, "batch": b, "vocab": v,
                                     "ctx": s.ctx}
            walls: list[float] = []
            events: list[float] = []
            try:
                with context() if context is not None else _nothing():
                    proc.reset()
                    for i in range(s.warmup_steps):
                        proc(ids[:, : s.ctx + i + 1], logits)
                    spent = 0.0
                    for i in range(s.warmup_steps, s.warmup_steps + s.steps):
                        w, e = timed_call(partial(proc, ids[:, : s.ctx + i + 1], logits), device)
                        walls.append(w)
                        if e is not None:
                            events.append(e)
                        spent += w
                        if spent > s.step_budget_s and len(walls) >= 3:
                            break
            except Exception as err:
                if not is_oom(err):
                    raise
                free_memory(device)
                progress(oom_message(f"{label} at B={b}, V={v:,}", device))
                entry["error"] = "out of memory"
                results.append(entry)
                continue
            median_ms = statistics.median(walls) * 1e3
            applies = gpu and b == TARGET_BATCH and v == TARGET_VOCAB
            entry.update(
                steps=len(walls), wall_ms=[w * 1e3 for w in walls], median_ms=median_ms,
                p90_ms=percentile(walls, 90) * 1e3, best_ms=min(walls) * 1e3,
                event_median_ms=statistics.median(events) * 1e3 if events else None,
                target_ms=TARGET_STEP_MS if applies else None,
                meets_target=(median_ms <= TARGET_STEP_MS) if applies else None)
            results.append(entry)
            progress(f"  step  {path:24s} {label:32s} median {median_ms:,.3f} ms")
    if gpu and prf_module.triton_available():
        results += kernel_only(s, device, key, int_key, ids[:, -4:].contiguous(), logits)
    del ids, logits
    free_memory(device)
    return results


def kernel_only(s: Settings, device: torch.device, key: WatermarkKey, int_key: WatermarkKey,
                windows: torch.Tensor, logits: torch.Tensor) -> list[dict[str, Any]]:
    """The fused kernels alone (no window tracking, no dedup, no output assembly, no id-range
    check): how much of a step is the PRF work itself."""
    cases = []
    for name, k in (("siphash24-v1", key), ("philox4x32-10-v1", int_key)):
        kgw, gum = get_prf(name, k, "kgw"), get_prf(name, k, "gumbel")
        short = name.split("2")[0].split("4")[0]
        cases.append((f"green add {short} h=2",
                      partial(kgw.fused_green_add, windows[:, -2:], logits, 0.25, 2.0,
                              checked=True)))
        cases.append((f"gumbel argmax {short} h=4",
                      partial(gum.fused_gumbel_argmax, windows, logits, checked=True)))
    results = []
    for label, fn in cases:
        for _ in range(s.warmup_steps):
            fn()
        timings = [timed_call(fn, device) for _ in range(s.steps)]
        walls = [w for w, _ in timings]
        events = [e for _, e in timings if e is not None]
        median_ms = statistics.median(walls) * 1e3
        results.append({
            "path": "triton kernel only", "processor": label, "batch": logits.shape[0],
            "vocab": logits.shape[1], "ctx": s.ctx, "steps": len(walls),
            "wall_ms": [w * 1e3 for w in walls], "median_ms": median_ms,
            "p90_ms": percentile(walls, 90) * 1e3, "best_ms": min(walls) * 1e3,
            "event_median_ms": statistics.median(events) * 1e3 if events else None,
            "target_ms": None, "meets_target": None})
        progress(f"  kernel {label:32s} median {median_ms:,.3f} ms")
    return results


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def print_processor(results: list[dict[str, Any]], gpu: bool) -> None:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r.get("path", ""), r.get("processor", ""), "", r["error"], "", "", "",
                         "", ""])
            continue
        ev = r["event_median_ms"]
        rows.append([
            r["path"], r["processor"], str(r["steps"]), f"{r['median_ms']:,.3f}",
            f"{r['p90_ms']:,.3f}", f"{r['best_ms']:,.3f}", "" if ev is None else f"{ev:,.3f}",
            f"<={TARGET_STEP_MS:g}" if r["target_ms"] is not None else "",
            meets(r["meets_target"], "n/a")])
    shaped = [r for r in results if "batch" in r]
    if shaped:
        b, v, ctx = shaped[0]["batch"], shaped[0]["vocab"], shaped[0]["ctx"]
        print(f"shape: logits [{b}, {v:,}] float32, input ids [{b}, {ctx} + step] int64")
    print_table(["path", "processor", "steps", "median ms", "p90 ms", "best ms", "gpu ms",
                 "target", "meets"], rows)
    print("ms per step: synchronized wall time of one __call__ (what generation waits for); "
          "gpu ms: the median GPU time between CUDA events")
    if gpu and results and results[0].get("batch") != TARGET_BATCH:
        print(f"the target applies at B = {TARGET_BATCH}, V = {TARGET_VOCAB:,} only")


# -- 3. reading-mode audit ----------------------------------------------------------------------
def load_suspect(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from fingerprint.models import load_model, tiny_llama

    if name == "default":
        model, _ = load_model("default", device=device, dtype=dtype)
        return model
    if name == "tiny":
        return tiny_llama(seed=0).to(device=device, dtype=dtype)
    model, _ = load_model(name, device=device, dtype=dtype)
    return model


def bench_audit(s: Settings, device: torch.device, key: WatermarkKey,
                dtype: torch.dtype) -> dict[str, Any]:
    from fingerprint.audit.reading import TeacherText, audit_open, suspect_vocab_size
    from fingerprint.detect.detector import DetectorConfig

    progress(f"  loading the {s.model!r} model on {device} ...")
    t0 = time.perf_counter()
    model = load_suspect(s.model, device, dtype)
    load_s = time.perf_counter() - t0
    vocab = suspect_vocab_size(model)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(1)
    teacher = [TeacherText(rng.integers(0, vocab, s.prompt_tokens).tolist(),
                           rng.integers(0, vocab, s.completion_tokens).tolist())
               for _ in range(s.texts)]
    tokens = s.texts * (s.prompt_tokens + s.completion_tokens)
    max_length = s.prompt_tokens + s.completion_tokens
    entry: dict[str, Any] = {
        "model": s.model, "parameters": n_params, "dtype": str(dtype).replace("torch.", ""),
        "vocab_size": vocab, "texts": s.texts, "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens, "tokens": tokens,
        "batch_tokens": s.audit_batch_tokens, "controls": s.controls, "load_s": load_s}
    kw = {"vocab_size": vocab, "batch_tokens": max(s.audit_batch_tokens, max_length),
          "max_length": max_length, "n_controls": s.controls, "seed": 0}
    cfg = DetectorConfig(scheme="kgw")
    try:  # a warm-up on two texts (CUDA context, kernels, numba caches)
        audit_open(model, teacher[:2], key, cfg, **{**kw, "n_controls": 2})
        sync = synchronizer(device)
        sync()
        t0 = time.perf_counter()
        res = audit_open(model, teacher, key, cfg, **kw)
        sync()
        total = time.perf_counter() - t0
    except Exception as err:
        if not is_oom(err):
            raise
        free_memory(device)
        progress(oom_message(f"the audit with {s.model!r} at {kw['batch_tokens']} tokens a "
                             "batch", device))
        entry["error"] = "out of memory"
        return entry
    t = res.timing
    entry.update(
        total_s=total, forward_s=t["forward_s"], scoring_s=t["scoring_s"],
        controls_s=t["controls_s"], tokens_per_s=tokens / total,
        tokens_per_s_without_controls=tokens / max(1e-12, t["forward_s"] + t["scoring_s"]),
        forward_share=t["forward_s"] / total, n_positions=res.detection.n_positions,
        n_scored=res.detection.n_scored)
    progress(f"  audit {s.model}: {fmt_rate(entry['tokens_per_s'])} tokens/s, forward "
             f"{entry['forward_share']:.0%}")
    del model
    free_memory(device)
    return entry


def print_audit(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"model {r['model']}: {r['error']}")
        return
    print(f"model {r['model']} ({r['parameters'] / 1e6:,.1f}M parameters, {r['dtype']}, "
          f"V = {r['vocab_size']:,}); {r['texts']} texts of {r['prompt_tokens']} + "
          f"{r['completion_tokens']} tokens ({r['tokens']:,} tokens); {r['controls']} control "
          f"keys; up to {r['batch_tokens']:,} tokens a forward batch")
    rows = [[
        f"{r['total_s']:,.2f}", f"{r['forward_s']:,.2f}", f"{r['scoring_s']:,.2f}",
        f"{r['controls_s']:,.2f}", fmt_rate(r["tokens_per_s"]),
        fmt_rate(r["tokens_per_s_without_controls"]), f"{r['forward_share']:.0%}",
        f"{r['n_scored']:,}", "none", "n/a"]]
    print_table(["total s", "forward s", "scoring s", "controls s", "tokens/s",
                 "tokens/s w/o controls", "forward share", "scored", "target", "meets"], rows)
    print("forward share: the model's forward (and top-k) over the audit's whole wall time; "
          "scoring and controls run on the CPU")


# -- main ---------------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, int]:
    try:
        b, t = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,T (e.g. 64,1048576), got {text!r}") from None
    if b < 1 or t < 1:
        raise argparse.ArgumentTypeError("B and T must be positive")
    return b, t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, few repeats and the tiny model: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--model", default=None,
                        help="audit suspect: 'default' (SmolLM2-135M), 'tiny' (a random tiny "
                             "Llama) or a local checkpoint (default: tiny with --quick, else "
                             "default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the audit model's dtype (default float32)")
    parser.add_argument("--score-shape", type=parse_shape, default=None, metavar="B,T",
                        help="scoring tensor shape on the device")
    parser.add_argument("--batch", type=int, default=None, help="processor batch size B")
    parser.add_argument("--vocab", type=int, default=None, help="processor vocabulary size V")
    parser.add_argument("--steps", type=int, default=None, help="processor steps timed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["score", "step", "audit"],
                        help="parts to leave out")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    s = settings_for(device, args.quick, args.model)
    if args.score_shape:
        s.score_shape = args.score_shape
    for name in ("batch", "vocab", "steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be positive")
            setattr(s, name, value)
    gpu = device.type == "cuda"
    meter = RunMeter()

    info = device_info(device)
    print("fingerprint GPU benchmark" + (" (--quick)" if s.quick else ""))
    print(f"device  : {info['device_name']}"
          + (f" ({info['device_memory_gib']:.0f} GiB, compute {info['device_capability']}, "
             f"CUDA {info['cuda_runtime']})" if gpu else ""))
    print(f"host    : {host_line(info)}")
    print(f"software: python {info['python']}, torch {info['torch']} ({info['torch_threads']} "
          f"threads), numpy {info['numpy']}, numba {info['numba']} ({info['numba_threads']} "
          f"threads), transformers {info['transformers']}")
    print(f"load avg: {fmt_load(info['load_average'])} (1, 5, 15 min)")
    print(f"targets : scoring >= {fmt_rate(TARGET_TOKENS_PER_S)} tokens/s; processor step <= "
          f"{TARGET_STEP_MS:g} ms at B = {TARGET_BATCH}, V = {TARGET_VOCAB:,} (on an "
          f"{TARGET_GPU})")
    if not gpu:
        print("NOTE    : no GPU in use (device cpu). These numbers are the CUDA code path (torch "
              "ops) run on the CPU, with the CPU kernels beside them; they are NOT the GPU "
              "targets, which are not judged here (meets = n/a).")
    elif TARGET_GPU not in info["device_name"]:
        print(f"NOTE    : the targets were set for an {TARGET_GPU}; this is a "
              f"{info['device_name']}.")

    key = WatermarkKey(bytes(range(32)))
    int_key = WatermarkKey.from_int(42)
    scoring: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    audit: dict[str, Any] | None = None
    if "score" not in args.skip:
        progress("measuring PRF.score ...")
        scoring = bench_scoring(s, device, key)
        section(f"1. PRF.score on the device (token ids in [0, {SCORE_VOCAB:,}), int64; best of "
                f"{s.score_repeats} after one warm-up call)")
        print_scoring(scoring, gpu)
    if "step" not in args.skip:
        progress("measuring watermark processor steps ...")
        steps = bench_processor(s, device, key, int_key)
        section(f"2. Watermark processor, one generation step (after {s.warmup_steps} warm-up "
                "steps)")
        print_processor(steps, gpu)
    if "audit" not in args.skip:
        progress("measuring the reading-mode audit ...")
        dtype = getattr(torch, args.dtype)
        audit = bench_audit(s, device, key, dtype)
        section("3. Reading-mode audit (audit_open, KGW h=2, top-1), model on the device")
        print_audit(audit)

    totals = print_footer(meter, info["cpus_usable"])
    if gpu:
        print(f"peak device memory: {torch.cuda.max_memory_allocated(device) / 2**30:,.2f} GiB")
    if args.json:
        write_json(args.json, {
            "machine": info, "quick": s.quick, "settings": s.__dict__,
            "targets": {"tokens_per_s": TARGET_TOKENS_PER_S, "step_ms": TARGET_STEP_MS,
                        "batch": TARGET_BATCH, "vocab": TARGET_VOCAB, "gpu": TARGET_GPU,
                        "judged": gpu},
            "scoring": scoring, "processor": steps, "audit": audit, **totals,
        }, default=_jsonable)
    return 0


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
