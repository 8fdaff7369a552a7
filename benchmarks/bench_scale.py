"""Detection at corpus scale: the in-process streaming engine against Ray Data on a local cluster.

    python3 benchmarks/bench_scale.py                 # 100M tokens (written once, ~200 MB)
    python3 benchmarks/bench_scale.py --tokens 10M    # a quick check

The corpus is synthetic token ids in Parquet (rows of ``--row-tokens`` Zipf-distributed ids,
row groups of ``--group-rows`` rows), written once to ``--dir`` and reused. Each engine runs in its
own process, so its peak memory is its own: the in-process engine's peak RSS (VmHWM), and for
Ray the peak of the summed PSS of the driver and every Ray process it started (workers, raylet,
GCS; PSS counts the shared object store once). Throughput is scored tokens per second of wall
time; Ray's is given with and without starting the cluster. Each engine runs the job twice in
its process (Ray: on the same cluster): the first run includes one-time costs (loading the
kernels; for Ray also starting worker processes and Ray Data's own actors), the second is the
steady state of a long-lived process or cluster. All results must be identical.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import proc_field_bytes

TARGET_RAY_FRACTION = 0.5
TARGET_STREAM_PEAK = 2 << 30


def parse_count(s: str) -> int:
    """``100M``, ``20m``, ``1.5G`` or a plain integer."""
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    s = s.strip().lower()
    return int(float(s[:-1]) * mult[s[-1]]) if s and s[-1] in mult else int(s)


def write_corpus(path: Path, n_tokens: int, row_tokens: int, group_rows: int, vocab: int,
                 zipf: float, seed: int = 0) -> None:
    """Zipf-distributed token ids, ``row_tokens`` per row, as list<int32> in Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** zipf
    cdf = np.cumsum(p / p.sum())
    n_rows = -(-n_tokens // row_tokens)
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("token_ids", pa.list_(pa.int32()))])
    with pq.ParquetWriter(tmp, schema) as w:
        for r0 in range(0, n_rows, group_rows):
            k = min(group_rows, n_rows - r0)
            ids = np.searchsorted(cdf, rng.random(k * row_tokens)).astype(np.int32)
            offsets = pa.array(np.arange(0, k * row_tokens + 1, row_tokens, dtype=np.int32))
            col = pa.ListArray.from_arrays(offsets, pa.array(ids))
            w.write_table(pa.table({"token_ids": col}, schema=schema), row_group_size=group_rows)
    tmp.rename(path)


def _pss_tree(root: int) -> int:
    try:
        import psutil
    except ImportError:  # memory of the Ray processes is then not measured (reported as 0)
        return 0

    total = 0
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total


class PeakSampler:
    """Samples the summed PSS of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _pss_tree(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _pss_tree(os.getpid()))


def _summary(r: Any, n_tokens: int, seconds: float) -> dict[str, Any]:
    return {"n_positions": r.n_positions, "n_scored": r.n_scored, "n_green": r.n_green,
            "score_sum": r.score_sum, "statistic": r.statistic, "log10_pvalue": r.log10_pvalue,
            "pvalue": r.pvalue, "tokens": n_tokens, "seconds": seconds}


def run_stream(path: Path, scheme: str, chunk_tokens: int) -> dict[str, Any]:
    """Child process: the in-process streaming engine."""
    from fingerprint.detect.detector import Detector, DetectorConfig
    from fingerprint.engines import detect_stream
    from fingerprint.keys import WatermarkKey

    det = Detector(WatermarkKey(bytes(range(32))), DetectorConfig(scheme=scheme))
    states: list[Any] = []
    new_state = det.new_state
    det.new_state = lambda: states.append(new_state()) or states[-1]  # type: ignore[method-assign]
    n_tokens = _count_tokens(path)
    t0 = time.perf_counter()
    r, _ = detect_stream([path], det, chunk_tokens=chunk_tokens, progress=False)
    out = _summary(r, n_tokens, time.perf_counter() - t0)
    out["peak_bytes"] = proc_field_bytes("/proc/self/status", "VmHWM") or 0
    out["dedup_set_bytes"] = states[0].seen.nbytes if states else 0
    t1 = time.perf_counter()  # again, with the kernels loaded: the steady state
    again, _ = detect_stream([path], det, chunk_tokens=chunk_tokens, progress=False)
    out["again_seconds"] = time.perf_counter() - t1
    out["again_same"] = again == r
    return out


def run_ray(path: Path, scheme: str, chunk_tokens: int, num_cpus: int) -> dict[str, Any]:
    """Child process: a local Ray cluster of ``num_cpus`` CPUs, then the Ray engine."""
    import logging

    from fingerprint.detect.detector import DetectorConfig
    from fingerprint.engines import detect_ray
    from fingerprint.keys import WatermarkKey

    n_tokens = _count_tokens(path)
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        import ray

        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        t1 = time.perf_counter()
        r, _ = detect_ray([path], DetectorConfig(scheme=scheme), WatermarkKey(bytes(range(32))),
                          chunk_tokens=chunk_tokens)
        t2 = time.perf_counter()
        # again on the same cluster: worker processes and Ray Data's own actors are up
        again, _ = detect_ray([path], DetectorConfig(scheme=scheme),
                              WatermarkKey(bytes(range(32))), chunk_tokens=chunk_tokens)
        t3 = time.perf_counter()
    ray.shutdown()
    out = _summary(r, n_tokens, t2 - t1)
    out["startup_seconds"] = t1 - t0
    out["peak_bytes"] = sampler.peak
    out["again_seconds"] = t3 - t2
    out["again_same"] = again == r
    return out


def _count_tokens(path: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    return sum(int(pc.sum(pc.list_value_length(b.column(0))).as_py() or 0)
               for b in pf.iter_batches(batch_size=65536))


def _child(engine: str, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", engine, "--corpus", str(path),
           "--scheme", args.scheme, "--chunk-tokens", str(args.chunk_tokens),
           "--num-cpus", str(args.num_cpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{engine} run failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=parse_count, default=100_000_000, help="e.g. 100M, 10M")
    ap.add_argument("--row-tokens", type=int, default=1000)
    ap.add_argument("--group-rows", type=int, default=1000, help="rows per Parquet row group")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of token ids")
    ap.add_argument("--scheme", default="kgw", choices=("kgw", "gumbel", "dual_key_gumbel"))
    ap.add_argument("--chunk-tokens", type=parse_count, default=1 << 22)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--dir", default=None, help="where the corpus is written (default: temp)")
    ap.add_argument("--engines", default="stream,ray")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        path = Path(args.corpus)
        out = (run_stream(path, args.scheme, args.chunk_tokens) if args.child == "stream"
               else run_ray(path, args.scheme, args.chunk_tokens, args.num_cpus))
        print(json.dumps(out))
        return 0

    root = Path(args.dir or Path(tempfile.gettempdir()) / "fingerprint-bench-scale")
    root.mkdir(parents=True, exist_ok=True)
    name = (f"zipf{args.zipf}-v{args.vocab}-t{args.tokens}-r{args.row_tokens}"
            f"-g{args.group_rows}.parquet")
    path = root / name
    if not path.exists():
        t0 = time.perf_counter()
        write_corpus(path, args.tokens, args.row_tokens, args.group_rows, args.vocab, args.zipf)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
    print(f"corpus: {args.tokens:,} tokens, Zipf({args.zipf}) over {args.vocab:,} ids, "
          f"{args.row_tokens} tokens/row, {args.group_rows} rows/row group; scheme {args.scheme}; "
          f"chunk {args.chunk_tokens:,} tokens; Ray: local cluster of {args.num_cpus} CPUs; "
          f"machine: {os.cpu_count()} CPUs")
    res: dict[str, dict[str, Any]] = {}
    for engine in args.engines.split(","):
        res[engine] = r = _child(engine, args, path)
        rate = r["tokens"] / r["seconds"]
        again = r["tokens"] / r["again_seconds"]
        line = (f"{engine:<7} {r['seconds']:8.1f} s  {rate / 1e6:7.2f} M tok/s  "
                f"(second run {r['again_seconds']:.1f} s  {again / 1e6:.2f} M tok/s)  "
                f"peak {r['peak_bytes'] / 2**30:6.2f} GiB")
        if engine == "stream":
            line += f"  (dedup set {r['dedup_set_bytes'] / 2**30:.2f} GiB)"
        else:
            total = r["seconds"] + r["startup_seconds"]
            line += (f"  (+{r['startup_seconds']:.1f} s cluster start: "
                     f"{r['tokens'] / total / 1e6:.2f} M tok/s)")
        print(line)
        print(f"        n_scored {r['n_scored']:,}  n_green {r['n_green']}  "
              f"score_sum {r['score_sum']!r}  log10 p {r['log10_pvalue']!r}")
    ok = True
    if "stream" in res and "ray" in res:
        keys = ("n_positions", "n_scored", "n_green", "score_sum", "statistic", "log10_pvalue",
                "pvalue")
        same = all(res["stream"][k] == res["ray"][k] for k in keys) and all(
            res[e]["again_same"] for e in ("stream", "ray"))
        print(f"identical results (both engines, both runs): {'yes' if same else 'NO'}")
        for label, key in (("first runs", "seconds"), ("second runs", "again_seconds")):
            frac = res["stream"][key] / res["ray"][key]  # same corpus: a ratio of throughputs
            print(f"target Ray >= {TARGET_RAY_FRACTION:.0%} of in-process throughput, {label}: "
                  f"{frac:.0%} {'met' if frac >= TARGET_RAY_FRACTION else 'NOT met'}")
        print("first runs: Ray's includes starting its worker processes (imports, kernels) and "
              "Ray Data's own actors; the in-process run imports before its clock starts but "
              "loads its kernels inside it. Second runs: both warm.")
        ok = same
    if "stream" in res:
        peak = res["stream"]["peak_bytes"]
        print(f"target in-process peak < {TARGET_STREAM_PEAK / 2**30:.0f} GiB: "
              f"{peak / 2**30:.2f} GiB {'met' if peak < TARGET_STREAM_PEAK else 'NOT met'}"
              f" (of which dedup set {res['stream']['dedup_set_bytes'] / 2**30:.2f} GiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
