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
    """Send the server's and uvicorn's logs, as JSON lines, to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    lvl = level.upper() if isinstance(level, str) else level
    for name in LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.setLevel(lvl)
        lg.propagate = False
    return handler


__all__ = ["JsonFormatter", "configure_logging"]
