"""Structured logs: one JSON object per line.

Records carry their fields in ``extra={"fields": {...}}``. What the server logs is chosen so that
no secret can reach it: request logs hold counts, settings, durations and the client's label
(``key@LINE``), never headers, bodies, prompts, completions, API keys or the watermark key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

LOGGERS = ("fingerprint.serve", "uvicorn")
THIRD_PARTY = ("transformers",)  # warnings only, as JSON too


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: time, level, logger, message and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


def configure_logging(level: str | int = "info", stream: IO[str] | None = None
                      ) -> logging.Handler:
    """Send the server's, uvicorn's and transformers' logs, as JSON lines, to ``stream``
    (stderr), and turn transformers' progress bars off: stderr holds JSON lines only."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    lvl = level.upper() if isinstance(level, str) else level
    for name in LOGGERS + THIRD_PARTY:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
        if name in LOGGERS:
            lg.setLevel(lvl)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return handler


__all__ = ["JsonFormatter", "configure_logging"]
