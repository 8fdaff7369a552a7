"""Corpus inputs read alike by every engine: odd paths, out-of-range ids, corrupt or
mislabelled Parquet, byte-order marks, empty rows and the order of skipped rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fingerprint.detect.corpus import CorpusReader, Skipped, detect_corpus
from fingerprint.detect.detector import DetectionResult, Detector, DetectorConfig
from fingerprint.detect.normalize import NormalizeConfig
from fingerprint.engines import detect_stream
from fingerprint.errors import InputError
from fingerprint.keys import WatermarkKey

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

KEY = WatermarkKey(bytes(range(32)))
BASE = list(range(100, 160))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local two-CPU Ray, as in ``test_engines``."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _default(paths: list[Path], **fields: Any) -> tuple[DetectionResult, list[Skipped]]:
    return detect_corpus(Detector(KEY), CorpusReader(paths, **fields))


def _stream(paths: list[Path], **fields: Any) -> tuple[DetectionResult, list[Skipped]]:
    from fingerprint.engines import Fields

    return detect_stream(paths, Detector(KEY), fields=Fields(**fields), progress=False)


ENGINES: list[Callable[..., tuple[DetectionResult, list[Skipped]]]] = [_default, _stream]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(skipped: list[Skipped]) -> list[tuple[str, int]]:
    return [(Path(s.source).name, s.row) for s in skipped]


# -- paths that are not regular files -------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_directory_input_is_an_input_error(tmp_path: Path, engine: Any) -> None:
    d = tmp_path / "shards.parquet"
    d.mkdir()
    with pytest.raises(InputError, match=r"shards\.parquet is a directory"):
        engine([d])
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain is a directory"):
        engine([tmp_path / "plain"])


# -- ids outside [0, MAX_TOKEN_ID] ----------------------------------------------------------------
MAX = 2**31 - 1
BAD_IDS = [[5, -3, 7, 8], [5, MAX + 1, 7], [5, 2**63 + 5, 7], [5, 2**64, 7], [2**63 - 1, 1]]


def _bad_id_files(tmp_path: Path) -> list[Path]:
    """A JSONL file and two Parquet files (int64, uint64) with rows whose ids are out of range,
    between good rows; and a prompt out of range."""
    rows: list[Any] = [{"token_ids": BASE}]
    rows += [{"token_ids": r} for r in BAD_IDS]
    rows += [{"token_ids": BASE[::-1], "prompt_token_ids": [1, -1]}, {"token_ids": BASE[5:]}]
    js = _jsonl(tmp_path / "bad.jsonl", rows)
    i64 = tmp_path / "i64.parquet"
    pq.write_table(pa.table({"token_ids": pa.array([BASE, [5, -3, 7, 8], [5, MAX + 1, 7],
                                                    BASE[3:]], type=pa.list_(pa.int64())),
                             "prompt_token_ids": pa.array([[1], [2], [3], [-4]],
                                                          type=pa.list_(pa.int32()))}), i64)
    u64 = tmp_path / "u64.parquet"
    pq.write_table(pa.table({"token_ids": pa.array([BASE, [5, 2**63 + 5, 7, 8], [9, 2**64 - 1]],
                                                   type=pa.list_(pa.uint64()))}), u64)
    return [js, i64, u64]


def _oor(field: str, value: int, index: int) -> str:
    return f"field {field!r} holds ids outside [0, {MAX}] (first: {value} at index {index})"


WANT_BAD_IDS = [
    ("bad.jsonl", 2, _oor("token_ids", -3, 1)),
    ("bad.jsonl", 3, _oor("token_ids", MAX + 1, 1)),
    ("bad.jsonl", 4, _oor("token_ids", 2**63 + 5, 1)),
    ("bad.jsonl", 5, _oor("token_ids", 2**64, 1)),
    ("bad.jsonl", 6, _oor("token_ids", 2**63 - 1, 0)),
    ("bad.jsonl", 7, _oor("prompt_token_ids", -1, 1)),
    ("i64.parquet", 2, _oor("token_ids", -3, 1)),
    ("i64.parquet", 3, _oor("token_ids", MAX + 1, 1)),
    ("i64.parquet", 4, _oor("prompt_token_ids", -4, 0)),
    ("u64.parquet", 2, _oor("token_ids", 2**63 + 5, 1)),
    ("u64.parquet", 3, _oor("token_ids", 2**64 - 1, 1)),
]


def _skips(skipped: list[Skipped]) -> list[tuple[str, int, str]]:
    return [(Path(s.source).name, s.row, s.reason) for s in skipped]


@pytest.mark.parametrize("engine", ENGINES)
def test_out_of_range_ids_are_skipped_rows(tmp_path: Path, engine: Any) -> None:
    paths = _bad_id_files(tmp_path)
    res, skipped = engine(paths)
    assert _skips(skipped) == WANT_BAD_IDS
    good = _jsonl(tmp_path / "good.jsonl", [{"token_ids": BASE}, {"token_ids": BASE[5:]},
                                            {"token_ids": BASE, "prompt_token_ids": [1]},
                                            {"token_ids": BASE}])
    want, none = engine([good])
    assert not none
    assert (res.n_positions, res.n_scored, res.n_green) == (
        want.n_positions, want.n_scored, want.n_green)


def test_out_of_range_ids_in_calibrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    from fingerprint.cli import main

    paths = _bad_id_files(tmp_path)
    out = tmp_path / "cal.json"
    assert main(["calibrate", *map(str, paths), "--n-keys", "5", "--out", str(out)]) in (0, 1)
    assert "bad.jsonl row 2: field 'token_ids' holds ids outside" in capsys.readouterr().err
    assert json.loads(out.read_text())["n_keys"] == 5


def test_hand_built_records_with_bad_ids_are_skipped() -> None:
    from fingerprint.detect.corpus import Record, record_ids

    for ids in ([5, 2**64], [5, 2**63 + 5], [-1, 2**63 + 5], [1, -2]):
        got = record_ids(Record("mem", 4, ids=ids), None, None, None)
        assert isinstance(got, Skipped) and got.row == 4 and "outside [0, 2147483647]" in got.reason


def test_ray_reads_bad_ids_as_stream_does(ray_cluster: Any, tmp_path: Path) -> None:
    from fingerprint.engines import detect_ray

    paths = _bad_id_files(tmp_path)
    for cfg in (DetectorConfig(), DetectorConfig(dedup="none")):
        want, want_skipped = detect_stream(paths, Detector(KEY, cfg), progress=False)
        got, skipped = detect_ray(paths, cfg, KEY, chunk_tokens=100, jsonl_split_bytes=200)
        assert _skips(skipped) == _skips(want_skipped) == WANT_BAD_IDS
        assert (got.n_positions, got.n_scored, got.n_green) == (
            want.n_positions, want.n_scored, want.n_green)


# -- Parquet page checksums -----------------------------------------------------------------------
def _flipped(tmp_path: Path) -> Path:
    """Ids in three row groups, page checksums written, a few bytes of row group 1 flipped."""
    import numpy as np

    rows = np.random.default_rng(5).integers(0, 3000, (300, 100)).tolist()
    path = tmp_path / "flip.parquet"
    pq.write_table(pa.table({"token_ids": rows}), path, row_group_size=100,
                   compression="none", use_dictionary=False, write_page_checksum=True)
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    for i in range(mid, mid + 4):
        data[i] ^= 0x01
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("engine", ENGINES)
def test_parquet_page_checksums_are_verified(tmp_path: Path, engine: Any) -> None:
    path = _flipped(tmp_path)
    with pytest.raises(InputError, match=r"flip\.parquet: corrupt .*row group 1"):
        engine([path])


# -- columns named explicitly ---------------------------------------------------------------------
def _abc(tmp_path: Path) -> Path:
    path = tmp_path / "abc.parquet"
    pq.write_table(pa.table({"a": [BASE, BASE[3:]], "b": [[1], [2]], "c": ["x y", "z"]}), path)
    return path


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("field", ["ids_field", "text_field", "prompt_ids_field"])
def test_parquet_without_the_named_column_is_an_error(tmp_path: Path, engine: Any,
                                                      field: str) -> None:
    path = _abc(tmp_path)
    with pytest.raises(InputError, match=r"column 'nope' not in .*abc\.parquet; columns: a, b, c"):
        engine([path], **{field: "nope"})


@pytest.mark.parametrize("engine", ENGINES)
def test_named_columns_that_exist_are_read(tmp_path: Path, engine: Any) -> None:
    path = _abc(tmp_path)
    with_prompt, skipped = engine([path], ids_field="a", prompt_ids_field="b")
    assert not skipped and with_prompt.n_positions == 2 * len(BASE) - 3
    js = _jsonl(tmp_path / "rows.jsonl", [{"a": BASE}, {"x": BASE}])
    _, skipped = engine([js], ids_field="a", prompt_ids_field="nope")
    assert _skips(skipped) == [("rows.jsonl", 2, "no usable field a")]  # JSONL: row by row


# -- UTF-8: invalid bytes in a text file, byte-order marks ----------------------------------------
class CharTokenizer:
    """One id per character (its code point), picklable."""

    all_special_ids: ClassVar[list[int]] = []

    def __call__(self, text: str, add_special_tokens: bool = False,
                 return_offsets_mapping: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"input_ids": [ord(c) for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out

    def __len__(self) -> int:
        return 0x110000


def _default_tok(paths: list[Path], **kw: Any) -> tuple[DetectionResult, list[Skipped]]:
    return detect_corpus(Detector(KEY), CorpusReader(paths), tokenizer=CharTokenizer(), **kw)


def _stream_tok(paths: list[Path], **kw: Any) -> tuple[DetectionResult, list[Skipped]]:
    return detect_stream(paths, Detector(KEY), tokenizer=CharTokenizer(), progress=False, **kw)


TEXT_ENGINES = [_default_tok, _stream_tok]
RAW = NormalizeConfig(form="none", strip_invisible=False)


@pytest.mark.parametrize("engine", TEXT_ENGINES)
def test_invalid_utf8_text_file_names_the_file(tmp_path: Path, engine: Any) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("a text in caf\xe9 latin-1".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: invalid UTF-8 at byte offset 13"):
        engine([path])


@pytest.mark.parametrize("engine", TEXT_ENGINES)
def test_leading_byte_order_mark_is_accepted(tmp_path: Path, engine: Any) -> None:
    bom = b"\xef\xbb\xbf"
    rows = [{"token_ids": BASE}, {"text": "some words to score here"}]
    plain = _jsonl(tmp_path / "plain.jsonl", rows)
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(bom + plain.read_bytes())
    want, none = engine([plain], normalize=RAW)
    got, skipped = engine([marked], normalize=RAW)
    assert not none and not skipped
    assert (got.n_positions, got.n_green) == (want.n_positions, want.n_green)
    (tmp_path / "plain.txt").write_text("a text with a mark in front")
    (tmp_path / "marked.txt").write_bytes(bom + (tmp_path / "plain.txt").read_bytes())
    want, _ = engine([tmp_path / "plain.txt"], normalize=RAW)
    got, _ = engine([tmp_path / "marked.txt"], normalize=RAW)
    assert (got.n_positions, got.n_green) == (want.n_positions, want.n_green)
    inner = tmp_path / "inner.jsonl"  # a mark after the first line is no byte-order mark
    inner.write_bytes(plain.read_bytes() + bom + plain.read_bytes())
    _, skipped = engine([inner], normalize=RAW)
    assert [(s.row, s.reason.split(":")[0]) for s in skipped] == [(3, "broken line")]


# -- rows with nothing to test --------------------------------------------------------------------
@pytest.mark.parametrize("engine", TEXT_ENGINES)
def test_empty_ids_are_skipped_like_empty_text(tmp_path: Path, engine: Any) -> None:
    js = _jsonl(tmp_path / "e.jsonl", [{"token_ids": []}, {"text": ""}, {"text": "\u200b"},
                                       {"token_ids": BASE},
                                       {"token_ids": [], "prompt_token_ids": [1]}])
    pqf = tmp_path / "e.parquet"
    pq.write_table(pa.table({"token_ids": pa.array([BASE, []], type=pa.list_(pa.int32()))}), pqf)
    _, skipped = engine([js, pqf])
    assert _skips(skipped) == [
        ("e.jsonl", 1, "no token ids: there is nothing to test"),
        ("e.jsonl", 2, "the text is empty: there is nothing to test"),
        ("e.jsonl", 3, "the text has no tokens after normalization"),
        ("e.jsonl", 5, "no token ids: there is nothing to test"),
        ("e.parquet", 2, "no token ids: there is nothing to test")]


# -- skipped rows in file and row order -----------------------------------------------------------
def _mixed_skips(tmp_path: Path) -> Path:
    """Rows skipped by the reader (bad JSON, no field) and after it (empty text, no ids)
    alternate."""
    return _jsonl(tmp_path / "mixed.jsonl", [
        {"token_ids": BASE}, {"text": ""}, {"foo": 1}, {"token_ids": []}, {"token_ids": "x"},
        {"text": "  "}, {"token_ids": BASE[4:]}, {"token_ids": [1, -1]}, {"text": "a b"}])


WANT_ORDER = [2, 3, 4, 5, 6, 8]


@pytest.mark.parametrize("engine", TEXT_ENGINES)
def test_skipped_rows_are_listed_in_file_and_row_order(tmp_path: Path, engine: Any) -> None:
    path = _mixed_skips(tmp_path)
    _, skipped = engine([path])
    assert [s.row for s in skipped] == WANT_ORDER
    _, twice = engine([path, _abc(tmp_path), path])
    assert [s.row for s in twice] == [*WANT_ORDER, 1, 2, *WANT_ORDER]  # abc: no usable field


def test_ray_reads_inputs_as_stream_does(ray_cluster: Any, tmp_path: Path) -> None:
    from fingerprint.engines import Fields, detect_ray

    path = _mixed_skips(tmp_path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"token_ids": pa.array([[], BASE], type=pa.list_(pa.int64()))}),
                   empty)
    paths = [path, bom, empty, path]
    tok = CharTokenizer()
    for cfg in (DetectorConfig(), DetectorConfig(dedup="none")):
        want, want_skipped = detect_stream(paths, Detector(KEY, cfg), tokenizer=tok,
                                           progress=False)
        got, skipped = detect_ray(paths, cfg, KEY, tokenizer=tok, chunk_tokens=50,
                                  jsonl_split_bytes=100)
        assert _skips(skipped) == _skips(want_skipped)
        assert [s.row for s in skipped] == WANT_ORDER * 2 + [1] + WANT_ORDER
        assert (got.n_positions, got.n_scored, got.n_green) == (
            want.n_positions, want.n_scored, want.n_green)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match=r"dir\.jsonl is a directory"):
        detect_ray([tmp_path / "dir.jsonl"], DetectorConfig(), KEY)
    with pytest.raises(InputError, match=r"column 'nope' not in .*abc\.parquet; columns: a, b, c"):
        detect_ray([_abc(tmp_path)], DetectorConfig(), KEY, fields=Fields(ids_field="nope"))
    with pytest.raises(InputError, match=r"flip\.parquet: corrupt .*row group 1"):
        detect_ray([_flipped(tmp_path)], DetectorConfig(), KEY)


def test_report_and_calibration_list_skips_in_row_order(tmp_path: Path, capsys) -> None:
    """The report's detection and the command line's calibration read rows as detect does:
    a row refused after reading (empty ids, row 2) comes before a broken line (row 3)."""
    from fingerprint.cli import main
    from fingerprint.report.recompute import detect_files

    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"token_ids": list(range(5, 45))}), json.dumps({"token_ids": []}),
             "{broken", json.dumps({"token_ids": list(range(50, 90))})]
    path.write_text("\n".join(lines) + "\n")
    det = detect_files(KEY, [path], DetectorConfig(context_width=1), n_controls=0)
    assert [s.row for s in det.skipped] == [2, 3]
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(path), "--n-keys", "20", "--seed", "1", "--quiet",
                 "--context-width", "1", "--out", str(out)]) in (0, 1)
    capsys.readouterr()
    assert [s["row"] for s in json.loads(out.read_text())["skipped"]] == [2, 3]
