"""Corpus inputs read alike by every engine: odd paths, out-of-range ids, corrupt or
mislabelled Parquet, byte-order marks, empty rows and the order of skipped rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fingerprint.detect.corpus import CorpusReader, Skipped, detect_corpus
from fingerprint.detect.detector import DetectionResult, Detector
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
