"""Corpora on disk: .txt, JSONL and Parquet, as text or token ids, streamed in bounded batches.

A broken row (bad JSON or invalid UTF-8 on a JSONL line, a missing field, ids that are not
integers, ids outside ``[0, MAX_TOKEN_ID]`` in the completion or the prompt) and a row with
nothing to test (an empty text or id list) never stop a run and are never silently dropped:
each is recorded as a :class:`Skipped` with its file, row number and reason, and reported with
the result, in file and row order. A leading byte-order mark is accepted in JSONL and .txt
files. What makes a whole input unusable is an :class:`InputError` naming the file: a missing
path or a directory, a .txt file (one text) that is not valid UTF-8, a corrupt Parquet file
(page checksums are verified where written) or one that lacks a column named explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fingerprint.core.contexts import MAX_TOKEN_ID
from fingerprint.detect.detector import DetectionResult, Detector, pack_batches
from fingerprint.detect.normalize import NormalizeConfig, decode_utf8
from fingerprint.detect.text import encode_text
from fingerprint.errors import InputError

TEXT_FIELDS = ("completion", "text", "response", "output")
IDS_FIELDS = ("completion_token_ids", "token_ids", "ids")
PROMPT_IDS_FIELDS = ("prompt_token_ids",)
BATCH_TOKENS = 1 << 22
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One row of a corpus: a text or token ids (the completion), and an optional prompt."""

    source: str
    row: int  # 1-based line (JSONL) or row (Parquet) number
    text: str | None = None
    ids: list[int] | None = None
    prompt_ids: list[int] | None = None


@dataclass(frozen=True)
class Skipped:
    """A row that could not be used, and why."""

    source: str
    row: int
    reason: str


def input_kind(path: Path) -> str:
    """``parquet``, ``jsonl`` or ``txt`` from the suffix of an existing regular file.

    A missing path, a directory (or any other non-regular file) and an unknown suffix are
    :class:`InputError` s naming the path.
    """
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise InputError(f"input {path} is {what}: give .txt, .jsonl or .parquet files")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".txt", ".md", ""):
        return "txt"
    raise InputError(f"{path}: unknown format {suffix!r}; use .txt, .jsonl or .parquet")


@dataclass
class CorpusReader:
    """Iterate over the records of one or more files; ``skipped`` fills up as it goes."""

    paths: list[Path]
    text_field: str | None = None
    ids_field: str | None = None
    prompt_ids_field: str | None = None
    skipped: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        for path in self.paths:
            kind = input_kind(path)
            if kind == "jsonl":
                yield from self._jsonl(path)
            elif kind == "parquet":
                yield from self._parquet(path)
            else:
                yield Record(str(path), 1, text=read_text_file(path))

    def check_columns(self, source: str | Path, names: list[str]) -> None:
        """Refuse a table (a Parquet file) that lacks a column named explicitly: every row
        would be skipped, or every prompt dropped. JSONL rows are checked one by one."""
        for name in (self.ids_field or self.text_field, self.prompt_ids_field):
            if name and name not in names:
                raise InputError(f"column {name!r} not in {source}; columns: "
                                 f"{', '.join(names) or '(none)'}")

    def _row(self, source: str, row: int, obj: Any) -> Record | None:
        if not isinstance(obj, dict):
            self.skipped.append(Skipped(source, row, "not a JSON object"))
            return None
        if self.ids_field or self.text_field:  # an explicit choice wins
            ids_f, text_f = self.ids_field, None if self.ids_field else self.text_field
        else:  # ids are exact: prefer them over re-tokenizing text
            ids_f = next((f for f in IDS_FIELDS if f in obj), None)
            text_f = None if ids_f else next((f for f in TEXT_FIELDS if f in obj), None)
        pr_f = self.prompt_ids_field or next((f for f in PROMPT_IDS_FIELDS if f in obj), None)
        prompt = obj.get(pr_f) if pr_f else None
        if prompt is not None and (why := id_list_problem(prompt)):
            self.skipped.append(Skipped(source, row, f"field {pr_f!r} {why}"))
            return None
        if ids_f and ids_f in obj and not text_f:
            if why := id_list_problem(obj[ids_f]):
                self.skipped.append(Skipped(source, row, f"field {ids_f!r} {why}"))
                return None
            return Record(source, row, ids=list(obj[ids_f]), prompt_ids=prompt)
        if text_f and isinstance(obj.get(text_f), str):
            return Record(source, row, text=obj[text_f], prompt_ids=prompt)
        wanted = self.ids_field or self.text_field or f"one of {IDS_FIELDS + TEXT_FIELDS}"
        self.skipped.append(Skipped(source, row, f"no usable field {wanted}"))
        return None

    def _jsonl(self, path: Path) -> Iterator[Record]:
        with path.open("rb") as f:
            for row, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json_line(raw, file_start=row == 1)
                except (json.JSONDecodeError, InputError) as err:
                    self.skipped.append(Skipped(str(path), row, f"broken line: {err}"))
                    continue
                rec = self._row(str(path), row, obj)
                if rec is not None:
                    yield rec

    def _parquet(self, path: Path) -> Iterator[Record]:
        pf = open_parquet(path)
        self.check_columns(path, pf.schema_arrow.names)
        row = 0
        for rg in range(pf.metadata.num_row_groups):
            try:
                for batch in pf.iter_batches(batch_size=4096, row_groups=[rg]):
                    for obj in batch.to_pylist():
                        row += 1
                        rec = self._row(str(path), row, obj)
                        if rec is not None:
                            yield rec
            except (OSError, ValueError) as err:
                if isinstance(err, InputError):
                    raise
                raise InputError(f"{path}: corrupt or unreadable Parquet file "
                                 f"(row group {rg}: {err})") from None


def read_text_file(path: Path) -> str:
    """A .txt input's text: strict UTF-8, a leading byte-order mark dropped (as ``utf-8-sig``
    reads it). Invalid UTF-8 is an :class:`InputError` naming the file: the file is one text."""
    try:
        text = decode_utf8(path.read_bytes())
    except InputError as err:
        raise InputError(f"{path}: {err}") from err.__cause__
    return text.removeprefix("\ufeff")


def json_line(raw: bytes, *, file_start: bool) -> Any:
    """One JSONL line, parsed; a byte-order mark is dropped from the file's first line."""
    if file_start:
        raw = raw.removeprefix(UTF8_BOM)
    return json.loads(decode_utf8(raw))


def open_parquet(path: Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` that verifies page checksums where the file has them
    (a corrupt page is then an error, never wrong ids); a corrupt footer is an
    :class:`InputError` naming the file."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover
        raise InputError("reading Parquet needs pyarrow: pip install 'fingerprint[parquet]'"
                         ) from err
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: corrupt or unreadable Parquet file ({err})") from None


def _is_id_list(v: Any) -> bool:
    return isinstance(v, list | tuple | np.ndarray) and all(
        isinstance(t, int | np.integer) and not isinstance(t, bool) for t in v)


def out_of_range(values: np.ndarray) -> np.ndarray:
    """True where an integer array (any width or sign, or Python ints as objects) holds an id
    outside ``[0, MAX_TOKEN_ID]``, the ids the keyed PRF accepts."""
    if values.dtype.kind == "u":
        return values > MAX_TOKEN_ID
    return np.asarray((values < 0) | (values > MAX_TOKEN_ID), dtype=bool)


def range_problem(value: int, index: int) -> str:
    """Why a list of ids whose first bad id is ``value``, at ``index``, is skipped."""
    return f"holds ids outside [0, {MAX_TOKEN_ID}] (first: {value} at index {index})"


def id_list_problem(v: Any) -> str | None:
    """Why ``v`` is not a usable list of token ids (``"is not a list of ids"`` or an id out of
    range), or None. Ids of any size are checked exactly: nothing wraps or overflows."""
    if not _is_id_list(v):
        return "is not a list of ids"
    a = np.asarray(v)
    if a.dtype.kind not in "iu":  # empty, or ints beyond int64 (numpy makes them floats)
        a = np.asarray(v, dtype=object)
    bad = out_of_range(a)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return range_problem(int(a[i]), i)


def no_tokens(from_ids: bool) -> str:
    """Why a row with nothing to score is skipped: an empty id list, or a text that has no
    tokens (as an empty text, which :func:`encode_text` refuses, is skipped too)."""
    return ("no token ids: there is nothing to test" if from_ids
            else "the text has no tokens after normalization")


def record_ids(rec: Record, tokenizer: Any, normalize: NormalizeConfig | None,
               vocab_size: int | None) -> np.ndarray | Skipped:
    """A record's completion token ids (tokenizing text), or why the row cannot be used
    (among others: no ids at all, like an empty text, is a skipped row)."""
    if rec.ids is not None:  # readers checked them; records built by hand may not be
        try:
            ids = np.asarray(rec.ids, dtype=np.int64)
            why = id_list_problem(rec.ids) if out_of_range(ids).any() else None
        except (OverflowError, TypeError, ValueError):
            why = id_list_problem(rec.ids) or "is not a list of ids"
        if why:
            return Skipped(rec.source, rec.row, f"token ids {why}")
        return usable_ids(ids, rec.source, rec.row, True, vocab_size)
    return text_ids(rec.text or "", tokenizer, normalize, rec.source, rec.row, vocab_size)


def text_ids(text: str, tokenizer: Any, normalize: NormalizeConfig | None, source: str,
             row: int, vocab_size: int | None) -> np.ndarray | Skipped:
    """A text row's token ids, as :func:`usable_ids` passes them, or why it is skipped."""
    if tokenizer is None:
        raise InputError(f"{source} row {row} is text: give a tokenizer")
    try:
        ids = encode_text(text, tokenizer, normalize=normalize).ids
    except InputError as err:
        return Skipped(source, row, str(err))
    return usable_ids(ids, source, row, False, vocab_size)


def usable_ids(ids: np.ndarray, source: str, row: int, from_ids: bool,
               vocab_size: int | None) -> np.ndarray | Skipped:
    """A row's int64 ids (read, or tokenized when not ``from_ids``), unless there are none or
    some lie beyond the vocabulary: then why the row is skipped. The rule of every engine."""
    if not ids.size:
        return Skipped(source, row, no_tokens(from_ids))
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        return Skipped(source, row, f"token ids outside [0, {vocab_size}): wrong tokenizer?")
    return ids


def usable_records(records: Iterable[Record], tokenizer: Any, normalize: NormalizeConfig | None,
                   vocab_size: int | None, skipped: list[Skipped]
                   ) -> Iterator[tuple[Record, np.ndarray]]:
    """(record, its ids) for each usable record; the others, the reader's own skips (for a
    :class:`CorpusReader`) and those of :func:`record_ids`, go to ``skipped`` in row order."""
    read_skips = records.skipped if isinstance(records, CorpusReader) else []
    taken = 0  # of read_skips, already in skipped
    for rec in records:
        skipped += read_skips[taken:]  # the reader's, for rows before this one
        taken = len(read_skips)
        ids = record_ids(rec, tokenizer, normalize, vocab_size)
        if isinstance(ids, Skipped):
            skipped.append(ids)
            continue
        yield rec, ids
    skipped += read_skips[taken:]


def detect_corpus(
    detector: Detector,
    records: CorpusReader | list[Record],
    *,
    tokenizer: Any = None,
    normalize: NormalizeConfig | None = None,
    vocab_size: int | None = None,
    progress: bool = False,
) -> tuple[DetectionResult, list[Skipped]]:
    """Test a whole corpus with global dedup, streaming it in bounded batches; (result, skipped
    rows in file and row order)."""
    state = detector.new_state()
    skipped: list[Skipped] = []
    seqs: list[np.ndarray] = []
    proms: list[np.ndarray] = []
    pending = 0
    n_tokens = 0
    bar = tqdm(desc="detect", unit="tok", unit_scale=True, disable=not progress)

    def flush() -> None:
        for x, m, s in pack_batches(seqs, proms, detector.config.prompt_gap):
            detector.update(state, x, mask=m, score_from=s, vocab_size=vocab_size)
        seqs.clear()
        proms.clear()

    for rec, ids in usable_records(records, tokenizer, normalize, vocab_size, skipped):
        seqs.append(ids)
        proms.append(np.asarray(rec.prompt_ids or [], dtype=np.int64))
        pending += len(ids)
        n_tokens += len(ids)
        bar.update(len(ids))
        if pending >= BATCH_TOKENS:
            flush()
            pending = 0
    flush()
    bar.close()
    return detector.result(state), skipped


__all__ = ["CorpusReader", "Record", "Skipped", "detect_corpus", "id_list_problem",
           "input_kind", "json_line", "no_tokens", "open_parquet", "out_of_range", "range_problem",
           "read_text_file", "record_ids", "text_ids", "usable_ids", "usable_records"]
