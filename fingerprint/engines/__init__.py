"""Engines that run detection and calibration over large corpora on disk.

* :mod:`.stream`: in-process, streaming files in bounded chunks (:func:`detect_stream`,
  :func:`calibrate_stream`).
* :mod:`.ray_engine`: on a Ray cluster with Ray Data (:func:`detect_ray`, :func:`calibrate_ray`);
  needs ``pip install 'fingerprint[ray]'``, imported only when called.

Both give the same result, bit for bit, on the same data. See ``docs/scale.md``.
"""

from __future__ import annotations

from typing import Any

from fingerprint.engines.stream import ExactSum, Fields, calibrate_stream, detect_stream


def detect_ray(*args: Any, **kwargs: Any) -> Any:
    """:func:`fingerprint.engines.ray_engine.detect_ray` (imports Ray when called)."""
    from fingerprint.engines.ray_engine import detect_ray as run

    return run(*args, **kwargs)


def calibrate_ray(*args: Any, **kwargs: Any) -> Any:
    """:func:`fingerprint.engines.ray_engine.calibrate_ray` (imports Ray when called)."""
    from fingerprint.engines.ray_engine import calibrate_ray as run

    return run(*args, **kwargs)


__all__ = ["ExactSum", "Fields", "calibrate_ray", "calibrate_stream", "detect_ray",
           "detect_stream"]
