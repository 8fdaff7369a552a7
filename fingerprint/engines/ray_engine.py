"""Distributed detection and calibration on Ray Data, with exact global dedup.

    result, skipped = detect_ray(["shard-*.parquet"...], DetectorConfig(scheme="kgw"), "key.json")

Pipeline (``ray`` is imported only when one of these functions runs):

1. **Read and score** (``map_batches``, one task per read unit: a Parquet row group, a JSONL
   byte range or a text file): rows are parsed and tokenized exactly as in-process
   (:class:`~fingerprint.engines.stream.UnitReader`), and every scored position becomes a record:
   its 128-bit tuple key (hi, lo) from :func:`~fingerprint.core.contexts.tuple_keys` and its
   score contribution from the keyed PRF (the green bit for KGW, ``-log(1 - u)`` for Gumbel).
   Repeats inside a chunk are dropped there (they cannot be first occurrences), and the records
   are hash-partitioned by their key into ``num_partitions`` parts, each shipped as one row of
   packed arrays.
2. **Dedup** (``groupby("part").map_groups``): Ray's shuffle brings every record of a part to
   one task, which orders the chunks by their position in the corpus and keeps the first
   occurrence of each key, then reduces them to sufficient statistics (n_scored, n_green or an
   exact score sum). Only these few numbers reach the driver; tuples never do.

With ``dedup="none"`` step 2 is skipped: each chunk's statistics are summed directly.

The result equals :func:`~fingerprint.engines.stream.detect_stream`'s bit for bit: counts are
integers, "first occurrence" is first in corpus order (which matters for ``dedup="context"``,
where a repeated window may be followed by a different token), and Gumbel sums are exact
(:class:`~fingerprint.engines.stream.ExactSum`), so they do not depend on the order in which
the shuffle delivers records.

How workers get the key: a :class:`~fingerprint.keys.WatermarkKey` cannot be pickled, by design.
The driver hands the raw secret, as a direct (inlined) argument, to a small key-holder actor;
each worker process asks that actor for it once per job, over Ray's RPC, and rebuilds the key and
the PRF in memory. The secret is never placed in Ray's object store (whose objects may spill to
disk), never written to a file and never logged by this module; the holder is killed when the job
ends. On a cluster whose control store persists to external storage (Redis fault tolerance),
actor arguments persist there too: do not run keyed jobs on such a cluster.

GPU workers: with ``num_gpus > 0`` each scoring task asks Ray for that share of a GPU and computes
the PRF with torch on CUDA (bit-identical to the CPU kernels); tuple keys and the rest stay on
the CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

from fingerprint.core.contexts import tuple_keys, windows_at
from fingerprint.detect.calibrate import CalibrationReport, random_keys
from fingerprint.detect.corpus import Skipped
from fingerprint.detect.detector import (
    DetectionResult,
    Detector,
    DetectorConfig,
    Sufficient,
    combine_scores,
    count_candidates,
    pack_batches,
)
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.detect.tuples import _mix, compact_keys, expand_keys, select_positions
from fingerprint.engines.stream import (
    CHUNK_TOKENS,
    GUMBEL_SCHEMES,
    Chunk,
    ExactSum,
    Fields,
    Unit,
    UnitReader,
    add_scores,
    calibration_report,
    first_occurrence,
    plan_units,
)
from fingerprint.errors import BackendError, ConfigError, FingerprintError
from fingerprint.keys import WatermarkKey, as_key

JSONL_SPLIT_BYTES = 64 << 20  # JSONL files are cut into read units of about this size
PART_TOKENS = 1 << 22  # default partitions: about one per 4M tokens (and 2 per CPU at least)
MAX_PARTS = 1024
# Ray Data's sort-based pull shuffle: no aggregator actors to start, the fastest here for a few
# large rows per chunk (None keeps the DataContext's own setting).
DEFAULT_SHUFFLE = "sort_shuffle_pull_based"
_U64 = np.uint64


# -- the key, in memory only ---------------------------------------------------------------------
def _secret_of(key: WatermarkKey) -> tuple[bytes, str]:
    """The raw secret and kind of a key (the key object keeps them private; we need the bytes
    to rebuild it in worker processes)."""
    return key._WatermarkKey__secret, key.kind  # type: ignore[attr-defined]


def _key_holder(secrets: list[tuple[bytes, str]]) -> Any:
    """Start a Ray actor that holds ``secrets`` in memory and hands them to this job's workers.

    The class is defined here so that it travels by value: the actor's process then needs
    neither this package nor its imports, and starts fast. The secrets are a direct argument
    (inlined in the actor's creation call, never put in the object store).
    """
    import ray

    class KeyHolder:
        def __init__(self, secrets: list[tuple[bytes, str]]) -> None:
            self._secrets = secrets

        def get(self) -> list[tuple[bytes, str]]:
            return self._secrets

        def __repr__(self) -> str:
            return f"KeyHolder(n_keys={len(self._secrets)})"

    return ray.remote(num_cpus=0, max_restarts=-1)(KeyHolder).remote(secrets)


# -- the job, as workers see it ------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, minus the secrets (those come from ``holder``)."""

    token: str  # unique per run: keys worker-side caches
    mode: str  # "detect" or "calibrate"
    config: dict[str, Any]
    fields: Fields
    normalize: NormalizeConfig | None
    vocab_size: int | None
    chunk_tokens: int
    n_parts: int
    holder: Any  # the key-holder actor handle
    tokenizer: Any  # an ObjectRef of the tokenizer, or None
    device: str | None  # torch device for the PRF ("cuda"), or None for the CPU kernels
    threads: int

    @property
    def cfg(self) -> DetectorConfig:
        return DetectorConfig.from_dict(self.config)

    @property
    def dedup(self) -> bool:
        return self.config["dedup"] != "none"

    def payload(self) -> dict[str, tuple[Any, int]]:
        """Per-record payload arrays: name -> (dtype, values per record)."""
        if self.mode == "calibrate":
            return {"ctx": (np.int32, self.cfg.h), "tok": (np.int32, 1)}
        if self.config["scheme"] == "kgw":
            return {"val": (np.uint8, 1)}
        return {"val": (np.float64, 1)}


_CACHE: dict[str, Any] = {}  # per worker process: detectors and tokenizer of the current job


def _worker_state(job: _Job) -> tuple[list[Detector], Any]:
    nb.set_num_threads(max(1, min(job.threads, nb.config.NUMBA_NUM_THREADS)))  # per call
    if _CACHE.get("token") != job.token:
        _CACHE.clear()
        secrets, tok = _get_off_main_thread(job)
        cfg = job.cfg
        dets = [Detector(WatermarkKey(s, k), cfg) for s, k in secrets]  # type: ignore[arg-type]
        _CACHE.update(token=job.token, dets=dets, tok=tok)
    return _CACHE["dets"], _CACHE["tok"]


def _get_off_main_thread(job: _Job) -> tuple[list[tuple[bytes, str]], Any]:
    """The job's secrets (from the holder) and tokenizer, fetched by a helper thread.

    A ``ray.get`` that waits on a task's main thread tells the raylet that the task is blocked,
    and the raylet lends the task's CPU to a queued task meanwhile: with no idle worker, it
    starts a new worker process for it, which pays every import and kernel load again and then
    runs beside the others on an oversubscribed node (on a fresh 2-CPU cluster, a third worker
    process for a wait of a few milliseconds). A wait on another thread does not release the CPU.
    """
    import ray

    def fetch() -> tuple[list[tuple[bytes, str]], Any]:
        secrets = job.holder.get.remote()
        tok = None if job.tokenizer is None else ray.get(job.tokenizer)
        return ray.get(secrets), tok

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fetch).result()


# -- step 1: read, score, partition --------------------------------------------------------------
class _ScoreUnits:
    """``map_batches`` function: read units, yield per-chunk partitioned records or statistics."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.__name__ = "score_units"

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[Any]:
        job = self.job
        dets, tok = _worker_state(job)
        reader = UnitReader(job.fields, tokenizer=tok, normalize=job.normalize,
                            vocab_size=job.vocab_size, chunk_tokens=job.chunk_tokens)
        for i in range(len(batch["seq"])):
            unit = Unit(**{k: _plain(batch[k][i]) for k in Unit.__dataclass_fields__})
            for c, chunk in enumerate(reader.chunks(unit)):
                seq = (unit.seq << 20) | c
                n_pos, recs = self._records(dets[0], chunk)
                skipped = json.dumps([[s.source, s.row, s.reason, seq] for s in chunk.skipped])
                if not job.dedup:
                    yield _stats_table(job, dets, n_pos, skipped, recs)
                else:
                    yield _parts_table(job, seq, n_pos, skipped, recs)

    def _records(self, det: Detector, chunk: Chunk) -> tuple[int, dict[str, np.ndarray]]:
        job, cfg = self.job, det.config
        parts: list[dict[str, np.ndarray]] = []
        n_pos = 0
        for x, m, s in (pack_batches(chunk.seqs, chunk.prompts, cfg.prompt_gap) if chunk.seqs
                        else ()):
            n_pos += count_candidates(x, m, s)
            sel = select_positions(x, cfg.h, mask=m, score_from=s, dedup="none",
                                   skip_prompt_windows=cfg.skip_prompt_windows)
            rec: dict[str, np.ndarray] = {}
            if job.dedup:
                hi, lo = tuple_keys(x, cfg.h, with_token=cfg.dedup == "tuple", mask=m)
                rec["hi"], rec["lo"] = hi[sel], lo[sel]
            if job.mode == "calibrate":
                ctx, tokens = windows_at(x, cfg.h, m, sel)
                rec["ctx"], rec["tok"] = ctx.astype(np.int32), tokens.astype(np.int32)
            else:
                v = combine_scores(cfg, _uniforms(det, x, m, job.vocab_size, job.device))[sel]
                rec["val"] = (v < cfg.gamma).astype(np.uint8) if cfg.scheme == "kgw" else v
            if job.dedup:  # repeats inside the batch can never be first occurrences
                keep = first_occurrence(rec["hi"], rec["lo"])
                rec = {k: a[keep] for k, a in rec.items()}
            parts.append(rec)
        names = ["hi", "lo"] if job.dedup else []
        names += list(job.payload())
        out = {k: np.concatenate([p[k] for p in parts]) if parts else _empty(job, k)
               for k in names}
        if job.dedup and len(parts) > 1:  # repeats across the chunk's batches
            keep = first_occurrence(out["hi"], out["lo"])
            out = {k: a[keep] for k, a in out.items()}
        return n_pos, out


def _uniforms(det: Detector, x: np.ndarray, m: np.ndarray | None, vocab_size: int | None,
              device: str | None) -> list[np.ndarray]:
    if device is None:
        return [p.score(x, det.config.h, mask=m, vocab_size=vocab_size) for p in det._prfs]
    import torch

    xt = torch.from_numpy(x).to(device)
    mt = None if m is None else torch.from_numpy(m).to(device)
    return [p.score(xt, det.config.h, mask=mt, vocab_size=vocab_size)
            .cpu().numpy() for p in det._prfs]


def _empty(job: _Job, name: str) -> np.ndarray:
    if name in ("hi", "lo"):
        return np.empty(0, dtype=_U64)
    dtype, width = job.payload()[name]
    return np.empty((0, width) if width > 1 else 0, dtype=dtype)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


@nb.njit(cache=True)
def _part_kernel(hi, lo, n_parts, out):
    for i in range(hi.shape[0]):
        out[i] = (_mix(hi[i], lo[i]) >> _U64(40)) % _U64(n_parts)


def _part_of(hi: np.ndarray, lo: np.ndarray, n_parts: int) -> np.ndarray:
    """Hash partition of keys, from bits of the mix that dedup tables do not use for slots
    (uint16: ``n_parts <= MAX_PARTS``, and numpy's stable argsort is a radix sort on it)."""
    out = np.empty(hi.shape[0], dtype=np.uint16)
    _part_kernel(np.ascontiguousarray(hi), np.ascontiguousarray(lo), n_parts, out)
    return out


def _blobs(a: np.ndarray, bounds: np.ndarray) -> Any:
    """Rows ``a[bounds[p]:bounds[p + 1]]`` as one large-binary array, without copying ``a``."""
    import pyarrow as pa

    a = np.ascontiguousarray(a)
    row_bytes = a.itemsize * (a.shape[1] if a.ndim > 1 else 1)
    offsets = (bounds * row_bytes).astype(np.int64)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(bounds) - 1,
                                            [None, pa.py_buffer(offsets), pa.py_buffer(a)])


def _parts_table(job: _Job, seq: int, n_pos: int, skipped: str, recs: dict[str, np.ndarray]
                 ) -> Any:
    """One row per part: its records' keys and payloads as byte strings. Keys travel in the
    narrowest exact one-word layout the chunk's keys fit (8 bytes instead of 16 where ids are
    below 65,535 and windows short), named in the row's ``layout``."""
    import pyarrow as pa

    n = job.n_parts
    part = _part_of(recs["hi"], recs["lo"], n)
    order = np.argsort(part, kind="stable")
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(part, minlength=n), out=bounds[1:])
    layout, words = compact_keys(recs["hi"], recs["lo"])
    cols = {"hi": words, "lo": np.empty(0, dtype=_U64)} if words is not None else {}
    cols.update((k, a) for k, a in recs.items() if k not in cols)
    no_rows = np.zeros(n + 1, dtype=np.int64)
    data = {"part": pa.array(np.arange(n, dtype=np.int32)),
            "seq": pa.array(np.full(n, seq, dtype=np.int64)),
            "layout": pa.array([layout] * n, type=pa.string()),
            "n_positions": pa.array([n_pos] + [0] * (n - 1), type=pa.int64()),
            "skipped": pa.array([skipped] + ["[]"] * (n - 1), type=pa.large_string())}
    data.update({k: _blobs(a[order] if len(a) else a, bounds if len(a) else no_rows)
                 for k, a in cols.items()})
    return pa.table(data)


# -- step 2: dedup and reduce --------------------------------------------------------------------
def _summary(job: _Job, dets: list[Detector], recs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Sufficient statistics of records (already deduplicated), per key."""
    cfg = job.cfg
    if job.mode == "calibrate":
        green = np.zeros(len(dets), dtype=np.int64)
        sums = [ExactSum() for _ in dets]
        ctx = recs["ctx"].astype(np.int64).reshape(-1, cfg.h)
        tok = recs["tok"].astype(np.int64).ravel()
        for k, det in enumerate(dets):
            add_scores(det, ctx, tok, green, sums, k)
        return {"n_scored": len(tok), "n_green": green.tolist(),
                "exact": [s.to_str() for s in sums]}
    v = recs["val"]
    if cfg.scheme == "kgw":
        return {"n_scored": len(v), "n_green": [int(np.count_nonzero(v))], "exact": [""]}
    return {"n_scored": len(v), "n_green": [0], "exact": [ExactSum().add(v).to_str()]}


def _stats_table(job: _Job, dets: list[Detector], n_pos: int, skipped: str,
                 recs: dict[str, np.ndarray]) -> Any:
    import pyarrow as pa

    s = _summary(job, dets, recs)
    return pa.table({"n_positions": [n_pos], "n_scored": [s["n_scored"]],
                     "n_green": [json.dumps(s["n_green"])], "exact": [json.dumps(s["exact"])],
                     "skipped": pa.array([skipped], type=pa.large_string())})


class _DedupPart:
    """``map_groups`` function: every record of one part -> first occurrences -> statistics."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.__name__ = "dedup_part"

    def __call__(self, table: Any) -> Any:
        job = self.job
        dets, _ = _worker_state(job)
        order = np.argsort(table.column("seq").to_numpy(), kind="stable")  # corpus order
        table = table.take(order)
        recs: dict[str, np.ndarray] = {}
        for name, (dtype, width) in job.payload().items():
            a = _concat_blobs(table.column(name), dtype)
            recs[name] = a.reshape(-1, width) if width > 1 else a
        keep = first_occurrence(*_part_keys(table))
        recs = {k: a[keep] for k, a in recs.items()}
        n_pos = int(np.sum(table.column("n_positions").to_numpy()))
        skipped = [s for blob in table.column("skipped").to_pylist() for s in json.loads(blob)]
        return _stats_table(job, dets, n_pos, json.dumps(skipped), recs)


def _concat_blobs(column: Any, dtype: Any) -> np.ndarray:
    """A large-binary column's byte strings, in row order, as one array of ``dtype``."""
    arr = column.combine_chunks()
    if len(arr) == 0:
        return np.empty(0, dtype=dtype)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return raw[offsets[0]:offsets[-1]].view(dtype)


def _part_keys(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """A part's keys in row order, as dedup keys (hi, lo): one-word keys stay one word (with
    ``lo`` zero) when every row shares a layout, and are expanded to 128 bits otherwise."""
    layouts = table.column("layout").to_pylist()
    if len(set(layouts)) == 1 and layouts[0] != "full":
        words = _concat_blobs(table.column("hi"), _U64)
        return words, np.zeros_like(words)
    his, los = [], []
    for r, layout in enumerate(layouts):
        hi = _concat_blobs(table.column("hi").slice(r, 1), _U64)
        if layout == "full":
            his.append(hi)
            los.append(_concat_blobs(table.column("lo").slice(r, 1), _U64))
        else:
            h, lo = expand_keys(hi, layout)
            his.append(h)
            los.append(lo)
    return np.concatenate(his), np.concatenate(los)


# -- driver ---------------------------------------------------------------------------------------
@dataclass
class _Totals:
    n_positions: int
    n_scored: int
    n_green: np.ndarray
    sums: list[ExactSum]
    skipped: list[Skipped]


def _run(job: _Job, units: list[Unit], *, num_cpus: float,
         num_gpus: float, max_retries: int | None, progress: bool, shuffle: str | None
         ) -> _Totals:
    import ray

    if not units:
        return _Totals(0, 0, np.zeros(1, dtype=np.int64), [ExactSum()], [])
    with _data_context(progress, shuffle):  # before building: datasets copy the context
        n_tasks = _map_tasks(len(units), job.n_parts if job.dedup else None)
        ds = ray.data.from_items([u.to_dict() for u in units], override_num_blocks=n_tasks)
        extra = {} if max_retries is None else {"max_retries": max_retries}
        with warnings.catch_warnings():  # task options without a named parameter in Ray Data
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(_ScoreUnits(job), batch_size=-(-len(units) // n_tasks),
                                batch_format="numpy",
                                num_cpus=num_cpus, num_gpus=num_gpus or None, **extra)
            if job.dedup:
                ds = ds.groupby("part", num_partitions=job.n_parts).map_groups(
                    _DedupPart(job), batch_format="pyarrow", num_cpus=num_cpus, **extra)
        try:
            rows = ds.take_all()
        except Exception as err:
            cause = _fingerprint_cause(err)
            if cause is not None:
                raise cause from None
            raise
    n_keys = len(json.loads(rows[0]["n_green"])) if rows else 1
    totals = _Totals(0, 0, np.zeros(n_keys, dtype=np.int64), [ExactSum() for _ in range(n_keys)],
                     [])
    skipped: list[list[Any]] = []
    for r in rows:
        totals.n_positions += int(r["n_positions"])
        totals.n_scored += int(r["n_scored"])
        totals.n_green += np.asarray(json.loads(r["n_green"]), dtype=np.int64)
        for s, e in zip(totals.sums, json.loads(r["exact"]), strict=True):
            s += ExactSum.from_str(e)
        skipped += json.loads(r["skipped"])
    # corpus order: by chunk (a file given twice has its own units), then row order inside one
    skipped.sort(key=lambda s: s[3])
    totals.skipped = [Skipped(source, row, reason) for source, row, reason, _ in skipped]
    return totals


def _map_tasks(n_units: int, n_parts: int | None) -> int:
    """How many scoring tasks share the read units.

    Without dedup, one per unit. With it, the sort-based shuffle moves one object per (map
    block, reduce block) pair, and it makes as many reduce blocks as there are map blocks, so
    its cost grows with their square: 100 units made 10,000 objects and took longer than the
    scoring itself. Units are therefore grouped into about as many tasks as there are parts
    (at least four per CPU, for balance).
    """
    if n_parts is None:
        return max(1, n_units)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(n_units, max(n_parts, 4 * cpus)))


@contextlib.contextmanager
def _data_context(progress: bool, shuffle: str | None) -> Iterator[None]:
    """Ray Data settings for one run, restored afterwards."""
    import ray
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.shuffle_strategy,
              ctx.op_resource_reservation_enabled)
    log = logging.getLogger("ray.data")
    level = log.level
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    # The dedup step starts only when every map task is done (the shuffle is a barrier), so
    # CPUs that Ray Data would hold back for it while mapping would only sit idle.
    ctx.op_resource_reservation_enabled = False
    if shuffle is not None:
        ctx.shuffle_strategy = ShuffleStrategy(shuffle)
    # A task's error is raised again on the driver as this package's own error (or as it came,
    # with its traceback); Ray Data's ERROR logs would only repeat it as pages of tracebacks.
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.shuffle_strategy,
         ctx.op_resource_reservation_enabled) = before
        log.setLevel(level)


def _fingerprint_cause(err: BaseException) -> FingerprintError | None:
    """This package's error that a failed Ray job carries, with the retry advice Ray Data
    appends to its message taken off again; None if there is none."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, FingerprintError):
            return _without_retry_advice(cause)
        if isinstance(e, FingerprintError) and type(e).__module__.startswith("fingerprint"):
            return _without_retry_advice(e)
        e = cause if isinstance(cause, BaseException) else e.__cause__ or e.__context__
    return None


_RETRY_ADVICE = "\nFailed to apply UDF transform after "


def _without_retry_advice(err: FingerprintError) -> FingerprintError:
    """``err`` with its first argument cut before the advice Ray Data adds on a failed task."""
    if err.args and isinstance(err.args[0], str) and _RETRY_ADVICE in err.args[0]:
        err.args = (err.args[0].split(_RETRY_ADVICE, 1)[0], *err.args[1:])
    return err


def _start() -> Any:
    try:
        import ray
    except ImportError as err:
        raise BackendError("the Ray engine needs Ray: pip install 'fingerprint[ray]'") from err
    if not ray.is_initialized():
        # a cluster of this engine's own: its start-up INFO lines are not the user's business
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return ray


def _prepare(paths: Sequence[str | Path], tokenizer: Any, num_partitions: int | None,
             chunk_tokens: int, num_gpus: float, device: str | None,
             jsonl_split_bytes: int | None) -> tuple[Any, list[Unit], int, Any, str | None]:
    if chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if num_partitions is not None and num_partitions < 1:
        raise ConfigError(f"num_partitions must be positive, got {num_partitions}")
    units = plan_units(paths, split_bytes=jsonl_split_bytes)
    ray = _start()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    hint = sum(u.size_hint for u in units)
    n_parts = num_partitions or min(MAX_PARTS, max(4, 2 * cpus, -(-hint // PART_TOKENS)))
    tok_ref = None if tokenizer is None else ray.put(tokenizer)
    if device is None and num_gpus > 0:
        device = "cuda"
    return ray, units, n_parts, tok_ref, device


def detect_ray(
    paths: Sequence[str | Path],
    config: DetectorConfig,
    key_source: WatermarkKey | int | str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    normalize: NormalizeConfig | None = None,
    vocab_size: int | None = None,
    fields: Fields | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    num_partitions: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    device: str | None = None,
    max_retries: int | None = None,
    jsonl_split_bytes: int | None = JSONL_SPLIT_BYTES,
    shuffle: str | None = DEFAULT_SHUFFLE,
    progress: bool = False,
) -> tuple[DetectionResult, list[Skipped]]:
    """Test a corpus on Ray; the result is :func:`detect_stream`'s, bit for bit.

    ``key_source``: a key, a vLLM integer key, or a key file (read here, on the driver).
    ``tokenizer`` (for text) must be picklable; it is put once in the object store. Starts a
    local Ray if none is running (``ray.init()`` first to use a cluster). ``num_gpus`` per
    scoring task moves the PRF to CUDA (or to ``device``). ``max_retries``: how often a task
    whose worker died is recomputed (None: Ray Data's default, without limit); recomputed
    tasks give the same records, so the result does not change.
    """
    key = as_key(key_source)
    cfg = config
    det = Detector(key, cfg)  # validates the configuration and key on the driver
    ray, units, n_parts, tok_ref, device = _prepare(
        paths, tokenizer, num_partitions, chunk_tokens, num_gpus, device, jsonl_split_bytes)
    holder = _key_holder([_secret_of(key)])
    job = _Job(uuid.uuid4().hex, "detect", cfg.to_dict(), fields or Fields(), normalize, vocab_size,
               chunk_tokens, n_parts, holder, tok_ref, device, max(1, int(num_cpus)))
    try:
        t = _run(job, units, num_cpus=num_cpus, num_gpus=num_gpus,
                 max_retries=max_retries, progress=progress, shuffle=shuffle)
    finally:
        ray.kill(holder)
    gumbel = cfg.scheme in GUMBEL_SCHEMES
    suff = Sufficient(t.n_positions, t.n_scored, 0 if gumbel else int(t.n_green[0]),
                      t.sums[0].value() if gumbel else 0.0)
    return det.test(suff), t.skipped


def calibrate_ray(
    paths: Sequence[str | Path],
    config: DetectorConfig | None = None,
    *,
    n_keys: int = 500,
    alphas: Sequence[float] = (0.01, 0.05),
    seed: int | None = None,
    tokenizer: Any = None,
    normalize: NormalizeConfig | None = None,
    vocab_size: int | None = None,
    fields: Fields | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    num_partitions: int | None = None,
    num_cpus: float = 1,
    max_retries: int | None = None,
    jsonl_split_bytes: int | None = JSONL_SPLIT_BYTES,
    shuffle: str | None = DEFAULT_SHUFFLE,
    progress: bool = False,
) -> tuple[CalibrationReport, list[Skipped]]:
    """:func:`~fingerprint.engines.stream.calibrate_stream` on Ray, with the same result.

    The scored tuples are deduplicated once (key-independent); each part's task then scores its
    unique tuples under all ``n_keys`` random keys, and only per-key totals reach the driver.
    """
    cfg = config or DetectorConfig()
    if n_keys < 2:
        raise ConfigError("calibration needs at least 2 random keys")
    keys = random_keys(n_keys, seed)
    ray, units, n_parts, tok_ref, _ = _prepare(
        paths, tokenizer, num_partitions, chunk_tokens, 0, None, jsonl_split_bytes)
    holder = _key_holder([_secret_of(k) for k in keys])
    job = _Job(uuid.uuid4().hex, "calibrate", cfg.to_dict(), fields or Fields(), normalize,
               vocab_size, chunk_tokens, n_parts, holder, tok_ref, None, max(1, int(num_cpus)))
    try:
        t = _run(job, units, num_cpus=num_cpus, num_gpus=0, max_retries=max_retries,
                 progress=progress, shuffle=shuffle)
    finally:
        ray.kill(holder)
    dets = [Detector(k, cfg) for k in keys]
    green = t.n_green if len(t.n_green) == n_keys else np.zeros(n_keys, dtype=np.int64)
    sums = t.sums if len(t.sums) == n_keys else [ExactSum() for _ in keys]
    return calibration_report(cfg, dets, t.n_positions, t.n_scored, green, sums, alphas, seed), \
        t.skipped


__all__ = ["calibrate_ray", "detect_ray"]
