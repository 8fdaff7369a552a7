"""``fingerprint serve``: an OpenAI-compatible server whose every answer is watermarked.

* :func:`create_app`: the ASGI app (Starlette) over a model, a key and a scheme;
* :class:`ApiKeys`: bearer keys from a 0600 file, ``trusted`` ones may opt out;
* :class:`Batcher`: dynamic batching of concurrent requests into one ``generate`` call;
* :func:`run_server` / :class:`ServerThread`: uvicorn with graceful shutdown.

See ``docs/serve.md``. Needs the ``serve`` extra (``pip install 'fingerprint[serve]'``).
"""

from fingerprint.serve.app import (
    KEY_ID_HEADER,
    WATERMARK_HEADER,
    ServeState,
    create_app,
    serve_state,
)
from fingerprint.serve.auth import ApiKeys, Principal
from fingerprint.serve.batcher import Batcher, Job
from fingerprint.serve.logs import JsonFormatter, configure_logging
from fingerprint.serve.protocol import ApiError, Limits, Sampling
from fingerprint.serve.server import ServerThread, run_server

__all__ = [
    "KEY_ID_HEADER",
    "WATERMARK_HEADER",
    "ApiError",
    "ApiKeys",
    "Batcher",
    "Job",
    "JsonFormatter",
    "Limits",
    "Principal",
    "Sampling",
    "ServeState",
    "ServerThread",
    "configure_logging",
    "create_app",
    "run_server",
    "serve_state",
]
