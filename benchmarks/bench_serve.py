"""Load test of ``fingerprint serve``: throughput and latency against in-process ``generate``.

For each model (``--models tiny default``: the tiny random Llama and SmolLM2-135M-Instruct),
a real server process (``python -m fingerprint.cli serve``, KGW, one torch thread, max batch
32) listens on 127.0.0.1, and this script drives it with a closed loop of ``c`` concurrent
clients (asyncio + httpx, keep-alive) for c = 1, 8 and 32:

* every request is a chat completion of exactly ``--max-tokens`` tokens (``min_tokens`` equal
  to ``max_tokens``: end-of-sequence is suppressed, so token counts compare), temperature 1;
* every request has a unique id (in ``X-Request-Id`` and in its prompt); the server echoes the
  header, and the run counts answers per id: none may be lost (sent, no answer), duplicated
  (two answers) or mismatched (an answer naming another id);
* each level is bounded in requests (``--requests``, scaled with c) and in time
  (``--time-limit``): no request starts after it, and the run stops by itself.

Printed per level: requests/s, p50/p99 latency, completion tokens/s, ``cpu ms/tok`` (CPU time of
the server process per token: waiting for a busy core does not inflate it), the mean rows per
``generate`` call and ``wm %``, the time the server spent in the watermark processor relative to
the rest of its ``generate`` calls (both read from the server's own batch log).

Two comparisons at 8 clients, each run one batch's worth of requests (8), the three kinds
interleaved in a rotating order over ``--repeats`` repeats so that load changes hit them alike
(medians printed, best runs too):

* ``in-process``: the same model in this process, with the same torch and numba thread counts
  as the server's generation thread, through
  :func:`fingerprint.watermark.generate` in a batch of 8 with the same key, scheme, prompts and
  token count: the server should reach at least 80 % of its tokens/s;
* ``opt-out``: the server with ``"watermarking": false`` (a trusted key): the watermark's
  overhead inside the server by wall time and by server CPU time, next to the in-run share
  ``wm %``, which load changes between runs do not bias (target at most 2 %).

Run from the repository root::

    python3 benchmarks/bench_serve.py                      # tiny and SmolLM2 (~10 min)
    python3 benchmarks/bench_serve.py --quick              # fewer requests, 16 tokens
    python3 benchmarks/bench_serve.py --models tiny --json out.json

The machine's load average is printed in the header and after each model: on a shared machine
wall times are noisy, CPU times much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "fingerprint" / "data" / "prompts.jsonl"
LEVELS = (1, 8, 32)
SERVE_MAX_BATCH = 32
COMPARE_BATCH = 8


def _loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _prompts(n: int) -> list[str]:
    rows = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()
            if line.strip()]
    return [rows[i % len(rows)] for i in range(n)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


# -- the server process ---------------------------------------------------------------------------
class Server:
    """``fingerprint serve`` in a subprocess; its JSON log lines are kept."""

    def __init__(self, model: str, key_file: Path, api_keys: Path, threads: int,
                 max_tokens: int) -> None:
        cmd = [sys.executable, "-m", "fingerprint.cli", "serve", "--model", model, "--key",
               str(key_file), "--api-keys", str(api_keys), "--port", "0", "--threads",
               str(threads), "--max-batch", str(SERVE_MAX_BATCH), "--max-queue", "4096",
               "--max-tokens-limit", str(max(max_tokens, 16)), "--served-model-name", "bench",
               "--log-level", "debug"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                     "TRANSFORMERS_OFFLINE": "1"})
        self.batches: list[tuple[int, float, float]] = []  # (rows, seconds, watermark s)
        self.port: int | None = None
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail = [*self.tail[-19:], line]
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "listen":
                self.port = int(rec["port"])
            elif rec.get("event") == "batch":
                self.batches.append((int(rec["rows"]), float(rec["seconds"]),
                                     float(rec.get("watermark_s", 0.0))))

    def wait_ready(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + "".join(self.tail))
            if self.port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                        return f"http://127.0.0.1:{self.port}"
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError("the server did not start:\n" + "".join(self.tail))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(120)


# -- the load loop ---------------------------------------------------------------------------------
async def _load(base: str, api_key: str, concurrency: int, n_requests: int, time_limit: float,
                max_tokens: int, tag: str, watermark: bool) -> dict[str, Any]:
    prompts = _prompts(n_requests)
    next_i = 0
    sent: list[str] = []
    answers: dict[str, int] = {}
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    mismatched = 0
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i, tokens, mismatched
        while next_i < n_requests and time.monotonic() - start < time_limit:
            i = next_i
            next_i += 1
            rid = f"{tag}-{i}"
            body: dict[str, Any] = {
                "model": "bench", "max_tokens": max_tokens, "min_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"[request {rid}] {prompts[i]}"}]}
            if not watermark:
                body["watermarking"] = False
            sent.append(rid)
            t0 = time.monotonic()
            try:
                r = await client.post("/v1/chat/completions", json=body,
                                      headers={**headers, "X-Request-Id": rid})
            except httpx.HTTPError as err:
                errors.append(f"{rid}: {type(err).__name__}")
                continue
            latencies.append(time.monotonic() - t0)
            echoed = r.headers.get("x-request-id", "")
            answers[echoed] = answers.get(echoed, 0) + 1
            if echoed != rid:
                mismatched += 1
            if r.status_code != 200:
                errors.append(f"{rid}: HTTP {r.status_code}")
                continue
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.monotonic() - start
    ok = len(sent) - len(errors)
    return {"sent": len(sent), "ok": ok, "lost": sum(1 for r in sent if r not in answers),
            "duplicated": sum(1 for n in answers.values() if n > 1), "mismatched": mismatched,
            "errors": errors[:5], "wall_s": wall, "req_s": ok / wall, "tok_s": tokens / wall,
            "tokens": tokens, "p50_s": _percentile(latencies, 0.5),
            "p99_s": _percentile(latencies, 0.99)}


def run_level(server: Server, base: str, key: str, concurrency: int, n_requests: int,
              time_limit: float, max_tokens: int, tag: str, watermark: bool = True
              ) -> dict[str, Any]:
    """One bounded closed-loop run; adds the server's CPU ms per token, its mean rows per batch
    and the watermark's share of its generate time (watermark time / the rest)."""
    first_batch = len(server.batches)
    cpu0 = _cpu_seconds(server.proc.pid)
    out = asyncio.run(_load(base, key, concurrency, n_requests, time_limit, max_tokens, tag,
                            watermark))
    cpu = _cpu_seconds(server.proc.pid) - cpu0
    time.sleep(0.2)  # the last batch's log line
    batches = server.batches[first_batch:]
    wm_s = sum(b[2] for b in batches)
    rest = sum(b[1] for b in batches) - wm_s
    out.update(concurrency=concurrency, cpu_ms_tok=1000 * cpu / max(1, out["tokens"]),
               rows_per_batch=statistics.mean(b[0] for b in batches) if batches else math.nan,
               wm_share=wm_s / rest if rest > 0 else math.nan)
    return out


# -- in-process generate --------------------------------------------------------------------------
def run_inprocess(model: Any, tokenizer: Any, key: Any, n_requests: int, max_tokens: int
                  ) -> dict[str, Any]:
    """The same prompts through fingerprint.watermark.generate, batch 8, in this process."""
    from fingerprint.watermark.generate import iter_generate

    prompts = [f"[request gen-{i}] {p}" for i, p in enumerate(_prompts(n_requests))]
    latencies: list[float] = []
    tokens = 0
    t0 = time.monotonic()
    cpu0 = time.process_time()
    last = t0
    for batch in iter_generate(model, tokenizer, prompts, key=key, scheme="kgw",
                               max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                               batch_size=COMPARE_BATCH):
        now = time.monotonic()
        latencies += [now - last] * len(batch)
        last = now
        tokens += sum(len(r.completion_ids) for r in batch)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    return {"concurrency": COMPARE_BATCH, "sent": n_requests, "ok": n_requests, "lost": 0,
            "duplicated": 0, "mismatched": 0, "errors": [], "wall_s": wall,
            "req_s": n_requests / wall, "tok_s": tokens / wall, "tokens": tokens,
            "p50_s": _percentile(latencies, 0.5), "p99_s": _percentile(latencies, 0.99),
            "cpu_ms_tok": 1000 * cpu / max(1, tokens), "rows_per_batch": float(COMPARE_BATCH),
            "wm_share": math.nan}


# -- one model ------------------------------------------------------------------------------------
def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import numba
    import torch

    from fingerprint.keys import WatermarkKey
    from fingerprint.models import load_default_tokenizer, load_model, tiny_llama

    # the in-process side gets the server worker's thread budget: torch and numba threads
    torch.set_num_threads(args.threads)
    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    key = WatermarkKey.generate()
    key_file = key.save(workdir / f"{name}.key")
    user, trusted = "sk-bench-" + secrets.token_hex(16), "sk-bench-" + secrets.token_hex(16)
    keys_file = workdir / f"{name}.api_keys"
    fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{user}\n{trusted} trusted\n")
    if name == "tiny":
        tokenizer = load_default_tokenizer()
        model = tiny_llama(seed=0)
        spec = str(workdir / "tiny-model")
        model.save_pretrained(spec)
        tokenizer.save_pretrained(spec)
    else:
        spec = name
        model, tokenizer = load_model(name)
    t = args.max_tokens
    print(f"\n== {name}: {_loadavg()}", flush=True)
    server = Server(spec, key_file, keys_file, args.threads, t)
    rows: list[tuple[str, dict[str, Any]]] = []
    runs: dict[str, list[dict[str, Any]]] = {"wm": [], "off": [], "gen": []}
    try:
        base = server.wait_ready()
        run_level(server, base, user, 2, 2, 120, t, "warmup")  # loads the PRF kernel
        run_inprocess(model, tokenizer, key, COMPARE_BATCH, 4)  # warms this process up
        for c in LEVELS:
            n = {1: max(2, args.requests // 4), COMPARE_BATCH: args.requests}.get(
                c, max(c, 2 * args.requests))
            res = run_level(server, base, user, c, n, args.time_limit, t, f"c{c}")
            rows.append((f"server kgw c={c}", res))
            print(f"  server c={c}: {res['tok_s']:.1f} tok/s", flush=True)
        # the comparisons: one batch's worth of requests per run, the three kinds interleaved
        # in a rotating order, so that load changes hit them alike
        kinds = ["wm", "off", "gen"]
        for r in range(args.repeats):
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                if kind == "gen":
                    res = run_inprocess(model, tokenizer, key, COMPARE_BATCH, t)
                else:
                    res = run_level(server, base, trusted, COMPARE_BATCH, COMPARE_BATCH,
                                    args.time_limit, t, f"{kind}{r}", kind == "wm")
                runs[kind].append(res)
            print(f"  comparison repeat {r + 1}/{args.repeats}: " + ", ".join(
                f"{k} {runs[k][-1]['tok_s']:.1f} tok/s" for k in kinds), flush=True)
        x = f"x{args.repeats}"
        rows.append((f"server kgw c={COMPARE_BATCH} (median {x})", _median_row(runs["wm"])))
        rows.append((f"server opt-out c={COMPARE_BATCH} (median {x})", _median_row(runs["off"])))
        rows.append((f"in-process generate b={COMPARE_BATCH} ({x})", _median_row(runs["gen"])))
    finally:
        code = server.stop()
    after = _loadavg()
    wm, off, gen = (_median_row(runs[k]) for k in ("wm", "off", "gen"))

    def best(kind: str, field: str = "tok_s") -> float:
        vals = [r[field] for r in runs[kind]]
        return min(vals) if field == "cpu_ms_tok" else max(vals)

    summary = {
        "server_vs_inprocess": wm["tok_s"] / gen["tok_s"],
        "server_vs_inprocess_best": best("wm") / best("gen"),
        "server_vs_inprocess_cpu": gen["cpu_ms_tok"] / wm["cpu_ms_tok"],
        "watermark_overhead_wall_median": off["tok_s"] / wm["tok_s"] - 1.0,
        "watermark_overhead_wall_best": best("off") / best("wm") - 1.0,
        "watermark_overhead_cpu_median": wm["cpu_ms_tok"] / off["cpu_ms_tok"] - 1.0,
        "watermark_overhead_cpu_best": best("wm", "cpu_ms_tok") / best("off", "cpu_ms_tok") - 1,
        "watermark_share_in_run": wm["wm_share"],
        "server_exit_code": code,
        "lost": sum(r["lost"] for _, r in rows),
        "duplicated": sum(r["duplicated"] for _, r in rows),
        "mismatched": sum(r["mismatched"] for _, r in rows),
        "errors": sum(r["sent"] - r["ok"] for _, r in rows),
    }
    _print_table(name, rows, summary, t, after)
    return {"model": name, "rows": [{"label": label, **r} for label, r in rows],
            "summary": summary}


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field medians of repeated runs (counts summed)."""
    out: dict[str, Any] = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        if k in ("sent", "ok", "lost", "duplicated", "mismatched", "tokens"):
            out[k] = sum(vals)
        elif k == "errors":
            out[k] = [e for v in vals for e in v][:5]
        else:
            out[k] = statistics.median(vals)
    return out


def _print_table(name: str, rows: list[tuple[str, dict[str, Any]]], s: dict[str, Any],
                 max_tokens: int, after: str) -> None:
    print(f"\n{name}: {max_tokens} tokens per request; {after} (after the runs)")
    head = (f"{'run':<34} {'reqs':>5} {'ok':>5} {'lost':>4} {'dup':>3} {'req/s':>7} "
            f"{'p50 s':>7} {'p99 s':>7} {'tok/s':>7} {'cpu ms/tok':>10} {'rows/batch':>10} "
            f"{'wm %':>5}")
    print(head)
    print("-" * len(head))
    for label, r in rows:
        share = "" if math.isnan(r["wm_share"]) else f"{100 * r['wm_share']:.1f}"
        print(f"{label:<34} {r['sent']:>5} {r['ok']:>5} {r['lost']:>4} {r['duplicated']:>3} "
              f"{r['req_s']:>7.2f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f} {r['tok_s']:>7.1f} "
              f"{r['cpu_ms_tok']:>10.2f} {r['rows_per_batch']:>10.1f} {share:>5}")
    ratio = s["server_vs_inprocess"]
    print(f"server c={COMPARE_BATCH} / in-process batch {COMPARE_BATCH}: {100 * ratio:.0f}% "
          f"of its tokens/s (median; best runs {100 * s['server_vs_inprocess_best']:.0f}%), "
          f"{100 * s['server_vs_inprocess_cpu']:.0f}% by CPU time per token "
          f"(target >= 80%: {'met' if ratio >= 0.8 else 'missed'})")
    share = s["watermark_share_in_run"]
    print(f"watermark overhead in the server, c={COMPARE_BATCH}: {100 * share:.1f}% in-run "
          f"(watermark time / rest of generate, target <= 2%: "
          f"{'met' if share <= 0.02 else 'missed'}); vs trusted opt-out runs: "
          f"{100 * s['watermark_overhead_wall_median']:+.1f}% wall (median), "
          f"{100 * s['watermark_overhead_wall_best']:+.1f}% (best), "
          f"{100 * s['watermark_overhead_cpu_median']:+.1f}% server CPU/token (median), "
          f"{100 * s['watermark_overhead_cpu_best']:+.1f}% (best)")
    print(f"requests lost {s['lost']}, duplicated {s['duplicated']}, mismatched "
          f"{s['mismatched']}, failed {s['errors']}; server exit code {s['server_exit_code']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "default"],
                   help="'tiny' and/or 'default' (SmolLM2) or a checkpoint path")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request (32)")
    p.add_argument("--requests", type=int, default=16,
                   help="requests at c=8 (16); a quarter of it at c=1, twice it (at least 32) at "
                        "c=32")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repeats of the c=8 comparison runs (3)")
    p.add_argument("--time-limit", type=float, default=150.0,
                   help="seconds after which a level starts no new request (150)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process")
    p.add_argument("--quick", action="store_true", help="16 tokens, 8 requests, 2 repeats")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.max_tokens, args.requests, args.repeats, args.time_limit = 16, 8, 2, 60.0
    print(f"bench_serve: models {args.models}, {args.max_tokens} tokens, {args.threads} torch "
          f"thread(s), {os.cpu_count()} CPUs, {_loadavg()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(bench_model(name, args, Path(tmp)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    bad = any(r["summary"]["lost"] or r["summary"]["duplicated"] or r["summary"]["mismatched"]
              for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
