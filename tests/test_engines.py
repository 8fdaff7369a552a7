"""Corpus-scale engines: in-process vs streaming vs Ray give one result, exactly."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fingerprint.detect.calibrate import calibrate
from fingerprint.detect.corpus import CorpusReader, detect_corpus
from fingerprint.detect.detector import Detector, DetectorConfig, combine_scores
from fingerprint.engines import ExactSum, Fields, calibrate_stream, detect_stream
from fingerprint.engines.stream import (
    UnitReader,
    first_occurrence,
    plan_units,
)
from fingerprint.errors import ConfigError, InputError
from fingerprint.keys import WatermarkKey

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

KEY = WatermarkKey(bytes(range(32)))
VOCAB = 3000
CONFIGS = [("kgw", None), ("kgw", "none"), ("gumbel", None), ("gumbel", "none"),
           ("dual_key_gumbel", None)]


class WordTokenizer:
    """A tiny deterministic word-level tokenizer (CRC32 of each word), picklable."""

    all_special_ids: ClassVar[list[int]] = []

    def __call__(self, text: str, add_special_tokens: bool = False,
                 return_offsets_mapping: bool = False) -> dict[str, Any]:
        words = list(re.finditer(r"\S+", text))
        out: dict[str, Any] = {"input_ids": [zlib.crc32(m.group().encode()) % VOCAB
                                             for m in words]}
        if return_offsets_mapping:
            out["offset_mapping"] = [m.span() for m in words]
        return out

    def __len__(self) -> int:
        return VOCAB


class KillOnceTokenizer(WordTokenizer):
    """Kills its own process the first time any process sees the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, text: str, **kw: Any) -> dict[str, Any]:
        if os.path.exists(self.marker):
            try:
                os.rename(self.marker, self.marker + ".taken")
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().__call__(text, **kw)


def _zipf_rows(rng: np.random.Generator, n_rows: int, lo: int, hi: int) -> list[list[int]]:
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
    p /= p.sum()
    rows = [rng.choice(VOCAB, size=int(rng.integers(lo, hi)), p=p).tolist()
            for _ in range(n_rows)]
    for r in rows[::7]:  # repeated text across rows and files: dedup matters
        r[: len(rows[0]) // 2] = rows[0][: len(r)][: len(rows[0]) // 2]
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """~300k tokens: ids and text, Parquet and JSONL, with prompts and broken rows."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    rows = _zipf_rows(rng, 330, 200, 1000)
    words = [f"w{i}" for i in range(4000)]
    wp = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    wp /= wp.sum()

    def text(n: int) -> str:
        return " ".join(words[i] for i in rng.choice(len(words), size=n, p=wp))

    ids = rows[:150]
    prompts: list[list[int] | None] = [r[:8] for r in rows[150:300]]
    prompts[3] = None
    ids_col: list[list[int] | None] = list(ids)
    ids_col[5] = None  # skipped: not a list of ids
    pq.write_table(pa.table({"token_ids": ids_col, "prompt_token_ids": prompts}),
                   d / "ids.parquet", row_group_size=40)
    with (d / "ids.jsonl").open("w") as f:
        for i, r in enumerate(rows[150:330]):
            f.write(json.dumps({"token_ids": r}) + "\n")
            if i == 20:
                f.write("{broken json\n\n")
    texts = [text(int(rng.integers(100, 700))) for _ in range(160)]
    texts[0] = texts[1] = texts[2]  # identical documents
    with (d / "text.jsonl").open("w") as f:
        for t in texts[:80]:
            f.write(json.dumps({"text": t}) + "\n")
        f.write(json.dumps({"text": "   "}) + "\n")  # skipped: empty text
    pq.write_table(pa.table({"text": texts[80:]}), d / "text.parquet", row_group_size=30)
    return [d / "ids.parquet", d / "text.jsonl", d / "ids.jsonl", d / "text.parquet"]


def _where(s: Any) -> tuple[str, int]:
    return s.source, s.row


def _same(a: Any, b: Any) -> None:
    for f in ("n_positions", "n_scored", "n_green", "score_sum", "statistic", "pvalue",
              "log10_pvalue"):
        assert getattr(a, f) == getattr(b, f), f


def _close(a: Any, b: Any) -> None:
    """In-process ``detect_corpus`` sums floats in its own order: equal up to rounding."""
    for f in ("n_positions", "n_scored", "n_green"):
        assert getattr(a, f) == getattr(b, f), f
    if a.score_sum is not None:
        assert a.score_sum == pytest.approx(b.score_sum, rel=1e-12)
    assert a.log10_pvalue == pytest.approx(b.log10_pvalue, rel=1e-9, abs=1e-12)


# -- pieces -------------------------------------------------------------------------------------
def test_exact_sum_is_fsum_in_any_order() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.exponential(size=20000), rng.random(100) * 1e-300,
                        [5e-324, 1e300, -1e300, 0.0, -3.5]])
    total = ExactSum().add(v)
    assert total.value() == math.fsum(v)
    parts = ExactSum()
    for piece in np.array_split(rng.permutation(v), 7):
        parts += ExactSum.from_str(ExactSum().add(piece).to_str())
    assert parts.total == total.total
    with pytest.raises(InputError):
        ExactSum().add(np.array([1.0, np.nan]))


def test_first_occurrence() -> None:
    rng = np.random.default_rng(1)
    hi = rng.integers(0, 5, 10000).astype(np.uint64)
    lo = rng.integers(0, 50, 10000).astype(np.uint64)
    first = first_occurrence(hi, lo)
    _, idx = np.unique(np.stack([hi, lo], axis=1), axis=0, return_index=True)
    assert np.array_equal(np.sort(np.nonzero(first)[0]), np.sort(idx))


def test_torch_path_matches_cpu_kernels() -> None:
    """The GPU code path (torch backend) on CPU tensors: same contributions, bit for bit."""
    pytest.importorskip("torch")
    from fingerprint.engines.ray_engine import _uniforms

    x = np.random.default_rng(2).integers(0, VOCAB, (3, 500))
    m = np.ones(x.shape, dtype=bool)
    m[1, 400:] = False
    for scheme in ("kgw", "gumbel", "dual_key_gumbel"):
        det = Detector(KEY, DetectorConfig(scheme=scheme))
        want = det._values(x, m, None, None)
        for device in (None, "cpu"):
            got = combine_scores(det.config, _uniforms(det, x, m, None, device))
            assert np.array_equal(got[m], want[m])


def test_units_and_jsonl_split_keep_rows(corpus: list[Path]) -> None:
    units = plan_units(corpus, split_bytes=4096)
    assert [u.seq for u in units] == list(range(len(units)))
    assert sum(u.kind == "jsonl" for u in units) > 10
    reader = UnitReader(tokenizer=WordTokenizer())
    skipped = [s for u in units for c in reader.chunks(u) for s in c.skipped]
    ref = CorpusReader(corpus)
    _, want = detect_corpus(Detector(KEY), ref, tokenizer=WordTokenizer())
    assert sorted(skipped, key=_where) == sorted(want, key=_where)
    assert {s.reason.split(":")[0] for s in skipped} >= {"broken line",
                                                        "field 'token_ids' is not a list of ids"}


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        plan_units([tmp_path / "nope.parquet"])
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(InputError, match="unknown format"):
        plan_units([tmp_path / "a.csv"])
    with pytest.raises(ConfigError):
        UnitReader(chunk_tokens=0)
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
    with pytest.raises(InputError, match="give a tokenizer"):
        detect_stream([tmp_path / "t.jsonl"], Detector(KEY), progress=False)


# -- stream vs in-process ------------------------------------------------------------------------
@pytest.mark.parametrize(("scheme", "dedup"), CONFIGS)
def test_stream_matches_in_process(corpus: list[Path], scheme: str, dedup: str | None) -> None:
    det = Detector(KEY, DetectorConfig(scheme=scheme, dedup=dedup))
    tok = WordTokenizer()
    want, want_skipped = detect_corpus(det, CorpusReader(corpus), tokenizer=tok)
    got, skipped = detect_stream(corpus, det, tokenizer=tok, chunk_tokens=10_000,
                                 progress=False)
    _close(got, want)
    assert sorted(skipped, key=_where) == sorted(want_skipped, key=_where)  # ours: corpus order
    again, _ = detect_stream(corpus, det, tokenizer=tok, chunk_tokens=1 << 20, progress=False)
    _same(again, got)  # exact: independent of chunking


def test_stream_fields_and_prompt_windows(corpus: list[Path]) -> None:
    cfg = DetectorConfig(scheme="kgw", skip_prompt_windows=True)
    det = Detector(KEY, cfg)
    paths = corpus[:1]
    want, _ = detect_corpus(det, CorpusReader(paths, ids_field="token_ids",
                                              prompt_ids_field="prompt_token_ids"))
    got, _ = detect_stream(paths, det, fields=Fields(ids_field="token_ids",
                                                    prompt_ids_field="prompt_token_ids"),
                           progress=False)
    _same(got, want)


def test_calibrate_stream_matches_calibrate(corpus: list[Path]) -> None:
    paths = [corpus[0], corpus[2]]
    seqs, proms = [], []
    for rec in CorpusReader(paths):
        seqs.append(np.asarray(rec.ids))
        proms.append(np.asarray(rec.prompt_ids or [], dtype=np.int64))
    for scheme in ("kgw", "gumbel"):
        cfg = DetectorConfig(scheme=scheme)
        want = calibrate(seqs, cfg, prompts=proms, n_keys=6, seed=3)
        got, _ = calibrate_stream(paths, cfg, n_keys=6, seed=3, chunk_tokens=30_000,
                                  progress=False)
        assert got.n_scored == want.n_scored
        assert got.log10_pvalues == pytest.approx(want.log10_pvalues, rel=1e-9)


def test_stream_memory_is_bounded(tmp_path: Path) -> None:
    """Python-side peak allocation is set by the chunk, not by the corpus size."""
    rng = np.random.default_rng(3)

    def write(name: str, n_rows: int) -> Path:
        ids = rng.integers(0, 50_000, (n_rows, 1000)).astype(np.int32)
        col = pa.ListArray.from_arrays(np.arange(0, ids.size + 1, 1000, dtype=np.int32),
                                       pa.array(ids.ravel()))
        path = tmp_path / name
        pq.write_table(pa.table({"token_ids": col}), path, row_group_size=256)
        return path

    small, large = write("small.parquet", 500), write("large.parquet", 4000)
    det = Detector(KEY, DetectorConfig(scheme="gumbel", dedup="none"))
    peaks = []
    for path in (small, large):
        tracemalloc.start()
        r, _ = detect_stream([path], det, chunk_tokens=1 << 16, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert r.n_scored == pq.ParquetFile(path).metadata.num_rows * 1000
    corpus_bytes = 4000 * 1000 * 8  # the large corpus as int64 ids: 32 MB
    assert peaks[1] < corpus_bytes / 4
    assert peaks[1] < 1.5 * peaks[0] + (1 << 20)


# -- Ray ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    cloudpickle = pytest.importorskip("ray.cloudpickle")

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test classes to workers
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize(("scheme", "dedup"), CONFIGS[:4])
def test_ray_matches_stream(ray_cluster: Any, corpus: list[Path], scheme: str,
                            dedup: str | None) -> None:
    from fingerprint.engines import detect_ray

    cfg = DetectorConfig(scheme=scheme, dedup=dedup)
    tok = WordTokenizer()
    want, want_skipped = detect_stream(corpus, Detector(KEY, cfg), tokenizer=tok,
                                       progress=False)
    got, skipped = detect_ray(corpus, cfg, KEY, tokenizer=tok, chunk_tokens=20_000,
                              num_partitions=3, jsonl_split_bytes=50_000)
    _same(got, want)
    assert skipped == want_skipped
    assert got.key_id == KEY.key_id


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_ray_mixed_key_layouts_match_stream(ray_cluster: Any, tmp_path: Path,
                                            scheme: str) -> None:
    """Chunks whose keys fit one word ship 8 bytes a key, others 16: a part holding both
    must still find the repeats across them (the same tuples, from either kind of chunk)."""
    from fingerprint.engines import detect_ray

    rng = np.random.default_rng(11)
    rows = _zipf_rows(rng, 60, 200, 400)
    wide = [list(r) for r in rows]
    for r in wide[::3]:  # ids past 16 bits: these chunks' keys need both words
        r[len(r) // 2] = 70_000 + int(rng.integers(0, 2**30))
    paths = [tmp_path / "narrow.parquet", tmp_path / "wide.parquet"]
    pq.write_table(pa.table({"token_ids": rows}), paths[0], row_group_size=20)
    pq.write_table(pa.table({"token_ids": wide}), paths[1], row_group_size=20)
    cfg = DetectorConfig(scheme=scheme)
    want, _ = detect_stream(paths, Detector(KEY, cfg), progress=False)
    got, _ = detect_ray(paths, cfg, KEY, chunk_tokens=3_000, num_partitions=2)
    _same(got, want)
    assert want.n_scored < 0.6 * want.n_positions  # the two files share most tuples


def test_ray_key_file_and_calibration(ray_cluster: Any, corpus: list[Path],
                                      tmp_path: Path) -> None:
    from fingerprint.engines import calibrate_ray, detect_ray

    KEY.save(tmp_path / "key.json")
    cfg = DetectorConfig(scheme="kgw")
    want, _ = detect_stream(corpus[:1], Detector(KEY, cfg), progress=False)
    got, _ = detect_ray(corpus[:1], cfg, str(tmp_path / "key.json"))
    _same(got, want)
    for scheme in ("kgw", "gumbel"):
        cfg = DetectorConfig(scheme=scheme)
        want_c, _ = calibrate_stream(corpus[:1], cfg, n_keys=5, seed=4, progress=False)
        got_c, _ = calibrate_ray(corpus[:1], cfg, n_keys=5, seed=4, chunk_tokens=20_000)
        assert got_c.n_scored == want_c.n_scored
        assert got_c.log10_pvalues == want_c.log10_pvalues


def test_ray_survives_a_killed_worker(ray_cluster: Any, corpus: list[Path],
                                      tmp_path: Path) -> None:
    from fingerprint.engines import detect_ray

    marker = tmp_path / "kill-once"
    marker.write_text("")
    cfg = DetectorConfig(scheme="gumbel")
    paths = [corpus[1], corpus[0]]
    want, _ = detect_stream(paths, Detector(KEY, cfg), tokenizer=WordTokenizer(),
                            progress=False)
    got, _ = detect_ray(paths, cfg, KEY, tokenizer=KillOnceTokenizer(str(marker)),
                        chunk_tokens=20_000, jsonl_split_bytes=20_000, max_retries=3)
    assert not marker.exists() and Path(str(marker) + ".taken").exists()  # it did die
    _same(got, want)


def test_ray_worker_fetches_the_key_off_the_main_thread(ray_cluster: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``ray.get`` that waits on a task's main thread lends the task's CPU to a queued task,
    for which Ray then starts another worker process: the key is fetched on a helper thread."""
    import threading

    from fingerprint.engines import ray_engine

    on_main: list[bool] = []
    real_get = ray_cluster.get

    def get(*args: Any, **kwargs: Any) -> Any:
        on_main.append(threading.current_thread() is threading.main_thread())
        return real_get(*args, **kwargs)

    monkeypatch.setattr(ray_cluster, "get", get)
    monkeypatch.setattr(ray_engine, "_CACHE", {})
    cfg = DetectorConfig(scheme="kgw")
    holder = ray_engine._key_holder([ray_engine._secret_of(KEY)])
    try:
        job = ray_engine._Job("t", "detect", cfg.to_dict(), Fields(), None, None, 1000, 2,
                              holder, None, None, 1)
        dets, tok = ray_engine._worker_state(job)
    finally:
        ray_cluster.kill(holder)
    assert on_main == [False] and tok is None
    x = np.arange(40, dtype=np.int64).reshape(2, 20)
    want = Detector(KEY, cfg)._prfs[0].score(x, cfg.h)
    assert np.array_equal(dets[0]._prfs[0].score(x, cfg.h), want)


def test_ray_corrupt_parquet_names_the_file(ray_cluster: Any, tmp_path: Path) -> None:
    from fingerprint.engines import detect_ray

    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"PAR1" + os.urandom(2000))
    with pytest.raises(InputError, match=r"garbage\.parquet"):
        detect_ray([bad], DetectorConfig(), KEY)

    rows = np.random.default_rng(5).integers(0, VOCAB, (600, 200)).tolist()
    path = tmp_path / "rowgroup.parquet"
    pq.write_table(pa.table({"token_ids": rows}), path, row_group_size=200,
                   compression="none", write_page_checksum=True)
    rg = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    mid = rg.data_page_offset + rg.total_compressed_size // 2
    data[mid : mid + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"rowgroup\.parquet.*row group 1"):
        detect_stream([path], Detector(KEY), progress=False)
    with pytest.raises(InputError, match=r"rowgroup\.parquet.*row group 1") as err:
        detect_ray([path], DetectorConfig(), KEY)
    assert "retry" not in str(err.value)  # Ray Data's advice on transient faults is taken off


def test_key_never_pickles() -> None:
    from fingerprint.engines.ray_engine import _Job

    with pytest.raises(TypeError):
        pickle.dumps(KEY)
    assert "secret" not in " ".join(_Job.__dataclass_fields__)
