"""In-process streaming detection over Parquet / JSONL / text corpora, in bounded chunks.

    det = Detector(key, DetectorConfig(scheme="kgw"))
    result, skipped = detect_stream(["a.parquet", "b.jsonl"], det, tokenizer=tok)

Files are read piece by piece (Parquet row groups through ``iter_batches``, JSONL line by line),
turned into token ids (text is tokenized exactly as :func:`~fingerprint.detect.corpus.detect_corpus`
does, rows are parsed by :class:`~fingerprint.detect.corpus.CorpusReader`'s rules) and scored
through one shared :class:`~fingerprint.detect.detector.DetectionState`, so dedup is exact and
global. Memory is bounded by the chunk size, apart from the dedup set itself.

Two details make the result reproducible bit for bit by the Ray engine
(:mod:`fingerprint.engines.ray_engine`), which scores the same data in a different order:

* Gumbel score sums are exact (:class:`ExactSum`): every float64 contribution is accumulated as
  an integer multiple of ``2**-1126`` and rounded once at the end, so the sum is the correctly
  rounded sum of the scored values whatever their order or grouping. (A plain float sum, as in
  :meth:`Detector.detect`, can differ from it in the last bits.)
* "First occurrence" means first in corpus order: files in the order given, rows in file order,
  positions in row order.

Pieces shared with the Ray engine live here too: the plan of a corpus into read units, the
reader of one unit, the exact sum and the in-chunk repeat finder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
from tqdm.auto import tqdm

from fingerprint.core.contexts import windows_at
from fingerprint.detect.calibrate import CalibrationReport, null_summary, random_keys
from fingerprint.detect.corpus import (
    CorpusReader,
    Skipped,
    input_kind,
    json_line,
    open_parquet,
    out_of_range,
    range_problem,
    read_text_file,
    text_ids,
    usable_ids,
)
from fingerprint.detect.detector import (
    DetectionResult,
    Detector,
    DetectorConfig,
    Sufficient,
    count_candidates,
    pack_batches,
)
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.detect.tuples import TupleSet, select_positions
from fingerprint.errors import ConfigError, InputError

CHUNK_TOKENS = 1 << 22  # tokens per chunk: what bounds the engine's working memory
PARQUET_BATCH_ROWS = 1024
GUMBEL_SCHEMES = ("gumbel", "dual_key_gumbel")


# -- exact, order-independent sums ----------------------------------------------------------------
_EXP_OFFSET = 1126  # v = m * 2**(e - 53) with e >= -1073: shifting by e - 53 + 1126 is never < 0
_N_EXP = 2200
_SPLIT = 26  # mantissas (< 2**53) are summed as two int64 halves that cannot overflow


@nb.njit(cache=True)
def _exact_kernel(values, acc_hi, acc_lo):
    bad = 0
    for i in range(values.shape[0]):
        v = values[i]
        if not math.isfinite(v):
            bad += 1
            continue
        m, e = math.frexp(v)
        mi = np.int64(m * 9007199254740992.0)  # m * 2**53: exact, |mi| < 2**53
        k = e + 1100
        acc_hi[k] += mi >> _SPLIT
        acc_lo[k] += mi & ((1 << _SPLIT) - 1)
    return bad


class ExactSum:
    """The exact sum of float64 values, as an integer multiple of ``2**-1126``.

    Adding the same values in any order or grouping gives the same integer; :meth:`value` rounds
    it once (correctly) to a float64, so it equals ``math.fsum`` of all the values.
    """

    __slots__ = ("total",)

    def __init__(self, total: int = 0) -> None:
        self.total = int(total)

    def add(self, values: np.ndarray) -> ExactSum:
        """Add float64 values (any shape); NaN or infinite values are refused."""
        v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        step = 1 << 30  # int64 halves cannot overflow below 2**36 additions per bucket
        for i0 in range(0, v.size, step):
            acc_hi = np.zeros(_N_EXP, dtype=np.int64)
            acc_lo = np.zeros(_N_EXP, dtype=np.int64)
            if _exact_kernel(v[i0 : i0 + step], acc_hi, acc_lo):
                raise InputError("score contributions must be finite numbers")
            for k in np.nonzero(acc_hi | acc_lo)[0]:
                mant = (int(acc_hi[k]) << _SPLIT) + int(acc_lo[k])
                shift = int(k) - 1100 - 53 + _EXP_OFFSET
                self.total += mant << shift
        return self

    def __iadd__(self, other: ExactSum) -> ExactSum:
        self.total += other.total
        return self

    def value(self) -> float:
        """The sum, rounded once to the nearest float64."""
        return self.total / (1 << _EXP_OFFSET) if self.total else 0.0

    def to_str(self) -> str:
        """A lossless text form (for shipping between processes)."""
        return format(self.total, "x")

    @classmethod
    def from_str(cls, s: str) -> ExactSum:
        """Parse :meth:`to_str`."""
        return cls(int(s, 16) if s else 0)


# -- repeats inside one set of records -----------------------------------------------------------
def first_occurrence(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each (hi, lo) key in array order (a transient set)."""
    return TupleSet().add(hi, lo)


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fields:
    """Which fields hold the completion text, its token ids and the prompt's token ids."""

    text_field: str | None = None
    ids_field: str | None = None
    prompt_ids_field: str | None = None

    def reader(self) -> CorpusReader:
        """A :class:`CorpusReader` whose row rules we apply."""
        return CorpusReader([], self.text_field, self.ids_field, self.prompt_ids_field)


@dataclass(frozen=True)
class Unit:
    """A piece of one input file that one worker reads: a Parquet row group, a JSONL byte range
    (starting at a line start), or a whole text file. ``seq`` orders units in corpus order."""

    path: str
    kind: str  # "parquet", "jsonl" or "txt"
    seq: int
    row_group: int = -1
    start: int = 0
    stop: int = 0
    first_row: int = 1  # the 1-based row (Parquet) or line (JSONL) number of the unit's start
    size_hint: int = 0  # a rough count of its tokens (bytes / 4), to size partitions

    def to_dict(self) -> dict[str, Any]:
        """Plain form (a row of the Ray work list)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def file_kind(path: Path) -> str:
    """``parquet``, ``jsonl`` or ``txt``, as :class:`CorpusReader` decides (and with its
    errors for a missing path, a directory or an unknown suffix)."""
    return input_kind(path)


def plan_units(paths: Sequence[str | Path], *, split_bytes: int | None = None) -> list[Unit]:
    """Cut a corpus into read units, in corpus order.

    Parquet: one unit per row group (the footer is read here: a corrupt one fails now, naming
    the file). JSONL: one unit per file, or byte ranges of about ``split_bytes`` cut at line
    starts (a scan counts lines so that row numbers stay exact).
    """
    units: list[Unit] = []
    for raw in paths:
        path = Path(raw)
        kind = file_kind(path)
        if kind == "parquet":
            pf = open_parquet(path)
            row = 1
            for rg in range(pf.metadata.num_row_groups):
                meta = pf.metadata.row_group(rg)
                units.append(Unit(str(path), kind, len(units), row_group=rg, first_row=row,
                                  size_hint=meta.total_byte_size // 4))
                row += meta.num_rows
        elif kind == "jsonl":
            for start, stop, first in _jsonl_ranges(path, split_bytes):
                units.append(Unit(str(path), kind, len(units), start=start, stop=stop,
                                  first_row=first, size_hint=(stop - start) // 4))
        else:
            units.append(Unit(str(path), kind, len(units), size_hint=path.stat().st_size // 4))
    return units


def _jsonl_ranges(path: Path, split: int | None) -> list[tuple[int, int, int]]:
    size = path.stat().st_size
    if not split or size <= split:
        return [(0, size, 1)]
    bounds = [(0, 1)]
    lines = pos = 0
    target = split
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            while target < pos + len(block):
                i = block.find(b"\n", max(0, target - pos))
                if i < 0:
                    break
                start = pos + i + 1
                if start < size:
                    bounds.append((start, lines + block.count(b"\n", 0, i + 1) + 1))
                target = start + split
            lines += block.count(b"\n")
            pos += len(block)
    stops = [b[0] for b in bounds[1:]] + [size]
    return [(s, e, r) for (s, r), e in zip(bounds, stops, strict=True)]


@dataclass
class Chunk:
    """Token ids of consecutive rows of one unit, ready to score, and the rows skipped there."""

    seqs: list[np.ndarray] = field(default_factory=list)
    prompts: list[np.ndarray] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    n_tokens: int = 0


@dataclass(frozen=True)
class _Row:
    row: int
    ids: np.ndarray | None = None
    text: str | None = None
    prompt: np.ndarray | None = None


class UnitReader:
    """Reads units into :class:`Chunk` s of about ``chunk_tokens`` completion tokens.

    Row rules (which field, what is skipped and why) are :class:`CorpusReader`'s; text goes
    through :func:`~fingerprint.detect.text.encode_text`, as in ``detect_corpus``.
    """

    def __init__(self, fields: Fields | None = None, *, tokenizer: Any = None,
                 normalize: NormalizeConfig | None = None, vocab_size: int | None = None,
                 chunk_tokens: int = CHUNK_TOKENS) -> None:
        if chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens must be positive, got {chunk_tokens}")
        self.fields = fields or Fields()
        self.rows = self.fields.reader()
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.vocab_size = vocab_size
        self.chunk_tokens = chunk_tokens

    def chunks(self, unit: Unit) -> Iterator[Chunk]:
        """The chunks of one unit, in row order (the last one may be small)."""
        chunk, n_chunks = Chunk(), 0
        for item in self._items(unit):
            if isinstance(item, Skipped):
                chunk.skipped.append(item)
                continue
            ids = self._ids(unit, item, chunk)
            if ids is None:
                continue
            chunk.seqs.append(ids)
            chunk.prompts.append(item.prompt if item.prompt is not None
                                 else np.empty(0, dtype=np.int64))
            chunk.n_tokens += len(ids)
            if chunk.n_tokens >= self.chunk_tokens:
                yield chunk
                chunk, n_chunks = Chunk(), n_chunks + 1
        if chunk.seqs or chunk.skipped or not n_chunks:
            yield chunk

    def _ids(self, unit: Unit, item: _Row, chunk: Chunk) -> np.ndarray | None:
        if item.ids is not None:
            ids = usable_ids(item.ids, unit.path, item.row, True, self.vocab_size)
        else:
            ids = text_ids(item.text or "", self.tokenizer, self.normalize, unit.path, item.row,
                           self.vocab_size)
        if isinstance(ids, Skipped):
            chunk.skipped.append(ids)
            return None
        return ids

    # -- per format ---------------------------------------------------------------------------
    def _items(self, unit: Unit) -> Iterator[_Row | Skipped]:
        if unit.kind == "parquet":
            yield from self._parquet(unit)
        elif unit.kind == "jsonl":
            yield from self._jsonl(unit)
        else:
            yield _Row(1, text=read_text_file(Path(unit.path)))

    def _record(self, source: str, row: int, obj: Any) -> Iterator[_Row | Skipped]:
        rec = self.rows._row(source, row, obj)
        if self.rows.skipped:
            yield from self.rows.skipped
            self.rows.skipped.clear()
        if rec is not None:
            yield _Row(row, ids=None if rec.ids is None else np.asarray(rec.ids, dtype=np.int64),
                       text=rec.text,
                       prompt=None if rec.prompt_ids is None
                       else np.asarray(rec.prompt_ids, dtype=np.int64))

    def _jsonl(self, unit: Unit) -> Iterator[_Row | Skipped]:
        path = Path(unit.path)
        if not path.exists():
            raise InputError(f"input file {path} does not exist")
        with path.open("rb") as f:
            f.seek(unit.start)
            pos, row = unit.start, unit.first_row
            while pos < unit.stop:
                raw = f.readline()
                if not raw:
                    break
                file_start = pos == 0
                pos += len(raw)
                row += 1
                if not raw.strip():
                    continue
                try:
                    obj = json_line(raw, file_start=file_start)
                except (json.JSONDecodeError, InputError) as err:
                    yield Skipped(unit.path, row - 1, f"broken line: {err}")
                    continue
                yield from self._record(unit.path, row - 1, obj)

    def _parquet(self, unit: Unit) -> Iterator[_Row | Skipped]:
        path = Path(unit.path)
        pf = open_parquet(path)
        self.rows.check_columns(path, pf.schema_arrow.names)
        fast = self._fast_fields(pf.schema_arrow)
        row = unit.first_row
        try:
            if not pf.schema_arrow.names:  # no column at all: the row rules skip every row
                for _ in range(pf.metadata.row_group(unit.row_group).num_rows):
                    yield from self._record(unit.path, row, {})
                    row += 1
                return
            cols = None if fast is None else [f for f in fast if f is not None]
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                         row_groups=[unit.row_group], columns=cols):
                if fast is not None:
                    yield from self._fast_batch(unit.path, row, batch, *fast)
                else:
                    for i, obj in enumerate(batch.to_pylist()):
                        yield from self._record(unit.path, row + i, obj)
                row += batch.num_rows
        except (OSError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{path}: corrupt or unreadable Parquet file "
                             f"(row group {unit.row_group}: {err})") from None

    def _fast_fields(self, schema: Any) -> tuple[str, str | None] | None:
        """(ids column, prompt ids column or None) when the row rules read integer list
        columns, which are then read without Python objects; None otherwise.

        The choice is the row rules' own: one probe row whose columns each hold a distinct
        one-id list shows which columns they take.
        """
        names = schema.names
        probe = {n: [i] for i, n in enumerate(names)}
        rec = self.rows._row("", 0, probe)
        self.rows.skipped.clear()
        if rec is None or rec.ids is None or len(rec.ids) != 1:
            return None
        ids_f = names[rec.ids[0]]
        pr_f = None if rec.prompt_ids is None else names[rec.prompt_ids[0]]
        if not _int_list(schema.field(ids_f).type) or (
                pr_f is not None and not _int_list(schema.field(pr_f).type)):
            return None
        return ids_f, pr_f

    def _fast_batch(self, source: str, row0: int, batch: Any, ids_f: str, pr_f: str | None
                    ) -> Iterator[_Row | Skipped]:
        """Integer list columns without Python objects, with the row rules' outcomes."""
        ids, ids_bad = _list_rows(batch.column(ids_f))
        prom, prom_bad = (None, {}) if pr_f is None else _list_rows(batch.column(pr_f),
                                                                    nulls_ok=True)
        for i in range(batch.num_rows):
            if i in prom_bad:
                yield Skipped(source, row0 + i, f"field {pr_f!r} {prom_bad[i]}")
                continue
            if i in ids_bad:
                yield Skipped(source, row0 + i, f"field {ids_f!r} {ids_bad[i]}")
                continue
            yield _Row(row0 + i, ids=ids[i], prompt=None if prom is None else prom[i])


def _int_list(t: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


def _rows_with(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per list row: whether any of its elements is flagged."""
    before = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return before[offsets[1:]] != before[offsets[:-1]]


def _list_rows(arr: Any, nulls_ok: bool = False
               ) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """(each row's ids as int64, None for a null row; {row index: why the row rules skip it}).

    A row with a null id (or a null row, unless ``nulls_ok``) "is not a list of ids"; a row
    with an id outside ``[0, MAX_TOKEN_ID]`` is named with its first such id, exactly as the
    row rules name it (unsigned and 64-bit ids are compared before any cast, so none wraps).
    """
    import pyarrow.compute as pc

    n = len(arr)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    child = arr.values
    valid = (arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count
             else np.ones(n, dtype=bool))
    not_list = np.zeros(n, dtype=bool) if nulls_ok else ~valid
    if child.null_count:
        not_list |= _rows_with(~child.is_valid().to_numpy(zero_copy_only=False), offsets)
        child = pc.fill_null(child, 0)
    raw = child.to_numpy(zero_copy_only=False)
    bad = out_of_range(raw)
    problems: dict[int, str] = {}
    for i in np.flatnonzero(_rows_with(bad, offsets) & valid & ~not_list):
        k = int(np.argmax(bad[offsets[i] : offsets[i + 1]]))
        problems[int(i)] = range_problem(int(raw[offsets[i] + k]), k)
    problems.update((int(i), "is not a list of ids") for i in np.flatnonzero(not_list))
    values = raw.astype(np.int64, copy=False)  # rows with ids beyond int64 are skipped above
    rows: list[np.ndarray | None] = [values[offsets[i] : offsets[i + 1]] if valid[i] else None
                                     for i in range(n)]
    return rows, problems


# -- scoring ------------------------------------------------------------------------------------
def _batches(chunk: Chunk, cfg: DetectorConfig
             ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    if chunk.seqs:
        yield from pack_batches(chunk.seqs, chunk.prompts, cfg.prompt_gap)


def detect_stream(
    paths: Sequence[str | Path],
    detector: Detector,
    *,
    tokenizer: Any = None,
    normalize: NormalizeConfig | None = None,
    vocab_size: int | None = None,
    fields: Fields | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
    progress: bool = True,
) -> tuple[DetectionResult, list[Skipped]]:
    """Test a corpus of files in bounded chunks, with exact global dedup; (result, skipped).

    The counts equal those of ``detect_corpus``; Gumbel score sums are exact (see the module
    docstring), so the result is the Ray engine's bit for bit.
    """
    cfg = detector.config
    reader = UnitReader(fields, tokenizer=tokenizer, normalize=normalize, vocab_size=vocab_size,
                        chunk_tokens=chunk_tokens)
    state = detector.new_state()
    exact = ExactSum()
    skipped: list[Skipped] = []
    gumbel = cfg.scheme in GUMBEL_SCHEMES
    bar = tqdm(desc="detect", unit="tok", unit_scale=True, disable=not progress)
    try:
        for unit in plan_units(paths):
            for chunk in reader.chunks(unit):
                skipped.extend(chunk.skipped)
                for x, m, s in _batches(chunk, cfg):
                    out = detector.update(state, x, mask=m, score_from=s,
                                          vocab_size=vocab_size, return_values=gumbel)
                    if out is not None:
                        sel, values = out
                        exact.add(values[sel])
                bar.update(chunk.n_tokens)
    finally:
        bar.close()
    suff = state.suff
    if gumbel:
        suff = Sufficient(suff.n_positions, suff.n_scored, suff.n_green, exact.value())
    return detector.test(suff), skipped


def calibrate_stream(
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
    progress: bool = True,
) -> tuple[CalibrationReport, list[Skipped]]:
    """:func:`~fingerprint.detect.calibrate.calibrate` over files, in one bounded pass.

    The scored tuples (prompt handling, global dedup) do not depend on the key: they are chosen
    once per chunk, then scored under every random key. ``seed`` gives the same keys as
    ``calibrate(..., seed=seed)``.
    """
    cfg = config or DetectorConfig()
    if n_keys < 2:
        raise ConfigError("calibration needs at least 2 random keys")
    keys = random_keys(n_keys, seed)
    dets = [Detector(k, cfg) for k in keys]
    reader = UnitReader(fields, tokenizer=tokenizer, normalize=normalize, vocab_size=vocab_size,
                        chunk_tokens=chunk_tokens)
    seen = TupleSet()
    n_pos = n_scored = 0
    green = np.zeros(n_keys, dtype=np.int64)
    sums = [ExactSum() for _ in keys]
    skipped: list[Skipped] = []
    bar = tqdm(desc="calibrate", unit="tok", unit_scale=True, disable=not progress)
    try:
        for unit in plan_units(paths):
            for chunk in reader.chunks(unit):
                skipped.extend(chunk.skipped)
                for x, m, s in _batches(chunk, cfg):
                    sel = select_positions(x, cfg.h, mask=m, score_from=s, dedup=cfg.dedup,
                                           seen=seen, skip_prompt_windows=cfg.skip_prompt_windows)
                    n_pos += count_candidates(x, m, s)
                    n_scored += int(sel.sum())
                    ctx, tok = windows_at(x, cfg.h, m, sel)
                    for k, det in enumerate(dets):
                        add_scores(det, ctx, tok, green, sums, k)
                bar.update(chunk.n_tokens)
    finally:
        bar.close()
    return calibration_report(cfg, dets, n_pos, n_scored, green, sums, alphas, seed), skipped


def add_scores(det: Detector, ctx: np.ndarray, tok: np.ndarray, green: np.ndarray,
               sums: list[ExactSum], k: int) -> None:
    """Score explicit (window, token) tuples under ``det``'s key into slot ``k``."""
    if not len(tok):
        return
    cfg = det.config
    v = det.pair_values(ctx, tok)
    if cfg.scheme == "kgw":
        green[k] += int(np.count_nonzero(v < cfg.gamma))
    else:
        sums[k].add(v)


def calibration_report(cfg: DetectorConfig, dets: Sequence[Detector], n_pos: int, n_scored: int,
                       green: np.ndarray, sums: Sequence[ExactSum], alphas: Sequence[float],
                       seed: int | None = None) -> CalibrationReport:
    """The report of :func:`~fingerprint.detect.calibrate.calibrate` from per-key totals."""
    results = []
    for k, det in enumerate(dets):
        s = Sufficient(n_pos, n_scored, int(green[k]) if cfg.scheme == "kgw" else 0,
                       0.0 if cfg.scheme == "kgw" else sums[k].value())
        results.append(det.test(s))
    return CalibrationReport(cfg.to_dict(), len(dets), n_scored,
                             [r.log10_pvalue for r in results],
                             null_summary(results, cfg, alphas, seed))


__all__ = [
    "CHUNK_TOKENS",
    "Chunk",
    "ExactSum",
    "Fields",
    "Unit",
    "UnitReader",
    "calibrate_stream",
    "detect_stream",
    "first_occurrence",
    "plan_units",
]
