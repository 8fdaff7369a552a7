"""``fingerprint serve``: an OpenAI-compatible HTTP server that watermarks every answer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fingerprint.errors import ConfigError


def add_parsers(sub: Any) -> None:
    """Register ``serve`` on the main parser's subparsers."""
    from fingerprint.cli import add_watermark_arguments

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible API, watermarking "
                       "every answer")
    p.add_argument("--model", default="default",
                   help="'default' (embedded SmolLM2) or a local checkpoint folder / .gguf file")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: the --model value as given, or "
                        "the folder name of a path)")
    p.add_argument("--key", required=True, help="secret watermark key file (`fingerprint keygen`)")
    add_watermark_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1; any other needs --api-keys)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-keys", default=None,
                   help="API key file (mode 0600): one key a line, optional 'trusted' marker")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the generation worker (torch and the watermark's numba "
                        "kernels; default: torch's)")
    p.add_argument("--max-batch", type=int, default=8, help="rows per generate call (8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="a batch starts once no request has arrived for this long (10 ms) and "
                        "as many rows wait as in the previous batch")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="the longest a batch waits to form (default 10 x --batch-wait-ms)")
    p.add_argument("--max-tokens-limit", type=int, default=1024,
                   help="largest max_tokens a request may ask for (1024)")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens of chat requests that give none (256)")
    p.add_argument("--max-n", type=int, default=4, help="largest n (4)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048,
                   help="longest prompt, in tokens after the chat template (2048)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body (1 MiB)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="rows that may wait for the model before requests get 503 (256)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0,
                   help="seconds a shutdown waits for requests in flight (60)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)


def _served_name(model: str, given: str | None) -> str:
    if given:
        return given
    if model.strip().lower() == "default":
        return "default"
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else (path.name or model)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the key, the API keys and the model, then serve until SIGTERM."""
    from fingerprint.keys import WatermarkKey
    from fingerprint.serve import ApiKeys, Limits, configure_logging, create_app, run_server
    from fingerprint.serve.server import check_bind
    from fingerprint.watermark.generate import make_watermark

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must lie in 0..65535, got {args.port}")
    api_keys = None if args.api_keys is None else ApiKeys.load(args.api_keys)
    check_bind(args.host, api_keys is not None)  # before the slow model load
    key = WatermarkKey.load(args.key)
    make_watermark(args.scheme, key, gamma=args.gamma, delta=args.delta,
                   context_width=args.context_width, prf=args.prf)
    configure_logging(args.log_level)  # from here on, stderr holds JSON lines only
    limits = Limits(max_tokens=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
                    max_n=min(args.max_n, args.max_batch), max_prompts=args.max_batch,
                    max_prompt_tokens=args.max_prompt_tokens, max_body_bytes=args.max_body_bytes,
                    max_queue_rows=max(args.max_queue, args.max_batch))
    import torch

    from fingerprint.models import load_model

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(args.model, device=device)
    app = create_app(model, tokenizer, key=key, scheme=args.scheme, gamma=args.gamma,
                     delta=args.delta, context_width=args.context_width, prf=args.prf,
                     api_keys=api_keys, model_name=_served_name(args.model,
                                                                args.served_model_name),
                     limits=limits, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                     max_wait_ms=args.max_wait_ms,
                     shutdown_timeout=args.shutdown_timeout)
    return run_server(app, args.host, args.port, log_level=args.log_level,
                      shutdown_timeout=args.shutdown_timeout)


__all__ = ["add_parsers", "cmd_serve"]
