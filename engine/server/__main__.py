"""`python -m m2agent.engine.server` / `m2agent serve`: load a model and serve it over HTTP.

Binds 127.0.0.1 unless told otherwise. With --log-file, logs go to that file, not the terminal
(the agent starts this server in the background)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2agent serve",
        description="Serve MiniMax-M2 with an OpenAI-compatible API (chat, completions, tools).",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="checkpoint folder (or config.json with --load-format dummy)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port (0 picks a free one; default 8000)"
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--tp",
        "--tensor-parallel-size",
        dest="tp",
        type=_positive_int,
        default=1,
        help="split the model over this many GPUs (GPUs 0..N-1, one process each; default 1)",
    )
    parser.add_argument(
        "--ep",
        "--expert-parallel-size",
        dest="ep",
        type=_positive_int,
        default=None,
        help="spread the experts over this many groups of GPUs (whole experts; attention stays "
        "split over --tp, which defaults to this); default: the layout for the model and GPU "
        "count (pure TP unless the experts cannot be split, e.g. FP8 M2 on 8 GPUs)",
    )
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16 or float32")
    parser.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    parser.add_argument(
        "--served-model-name", default=None, help="model id clients use (default: the folder name)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (or 'x-api-key: KEY'); visible in ps: prefer "
        f"--api-key-file or the {API_KEY_ENV} environment variable",
    )
    parser.add_argument(
        "--api-key-file", type=Path, default=None, help="read the API key from this file"
    )
    parser.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=32 * 1024 * 1024,
        help="refuse request bodies larger than this with 413 (default 32 MiB)",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=32, help="requests batched together at most"
    )
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="tokens per step (chunked prefill)"
    )
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument(
        "--no-prefix-caching", action="store_true", help="disable KV reuse across requests"
    )
    parser.add_argument(
        "--reasoning-mode",
        choices=["append_think", "split"],
        default="append_think",
        help="append_think: reasoning inside content after <think> (vLLM minimax_m2_append_think); "
        "split: reasoning in the reasoning_content field",
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, help="write logs here instead of stderr"
    )
    parser.add_argument(
        "--idle-exit-s",
        type=float,
        default=None,
        help="exit after this many seconds without requests (the agent's embedded engine)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


API_KEY_ENV = "M2AGENT_SERVE_API_KEY"
SHUTDOWN_GRACE_S = 2  # SIGTERM: requests in flight get this long, then the server exits


def resolve_api_key(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """--api-key, else --api-key-file, else $M2AGENT_SERVE_API_KEY; at most one may be given."""
    given = [
        name
        for name, value in (
            ("--api-key", args.api_key),
            ("--api-key-file", args.api_key_file),
            (API_KEY_ENV, env.get(API_KEY_ENV)),
        )
        if value
    ]
    if len(given) > 1:
        raise ValueError(f"give the API key one way only, not {' and '.join(given)}")
    if args.api_key_file:
        try:
            key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --api-key-file {args.api_key_file}: {e}") from None
        if not key:
            raise ValueError(f"--api-key-file {args.api_key_file} is empty")
        return key
    return args.api_key or env.get(API_KEY_ENV) or None


def check_max_model_len(model: Path, max_model_len: int | None) -> None:
    """--max-model-len above the model's context is an error, not a silent clamp."""
    if max_model_len is None:
        return
    from m2agent.engine.model_config import load_model_config

    limit = load_model_config(model).max_position_embeddings
    if max_model_len > limit:
        raise ValueError(
            f"--max-model-len {max_model_len} is more than this model's context of {limit} tokens "
            "(max_position_embeddings)"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        api_key = resolve_api_key(args, os.environ)
    except ValueError as e:
        print(f"m2agent serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=str(args.log_file) if args.log_file else None,
    )
    log = logging.getLogger("m2agent.serve")

    import torch
    import uvicorn

    from m2agent.engine.config import EngineConfig
    from m2agent.engine.engine import LLMEngine
    from m2agent.engine.errors import EngineError
    from m2agent.engine.server.app import ServerSettings, create_app
    from m2agent.engine.server.async_bridge import AsyncEngine

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_max_model_len(args.model, args.max_model_len)
        config = EngineConfig(
            model=args.model,
            device=device,
            dtype=args.dtype,
            load_format=args.load_format,
            max_model_len=args.max_model_len,
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=not args.no_prefix_caching,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tp,
            expert_parallel_size=args.ep,
        )
        engine = LLMEngine(config)
    except (EngineError, ValueError) as e:
        print(f"m2agent serve: {e}", file=sys.stderr)
        return 1
    name = args.served_model_name or engine.loaded.name
    names = (name, str(args.model))
    async_engine = AsyncEngine(engine)
    async_engine.start()
    settings = ServerSettings(names, api_key, args.reasoning_mode, args.max_request_bytes)
    app = create_app(async_engine, settings)
    try:  # bind first, so --port 0 can report the port it got
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        print(f"m2agent serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        async_engine.stop()
        engine.close()
        return 1
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            log_level=args.log_level,
            access_log=False,  # the Guard middleware logs each request, tokens included
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
    )
    if args.idle_exit_s:
        _exit_when_idle(server, async_engine, args.idle_exit_s, log)
    layout = engine.runner.tp
    where = device
    if layout.size > 1:
        where += f", tensor-parallel {layout.size}, expert-parallel {layout.expert_parallel_size}"
    log.info("serving %s on %s:%d (%s)", name, args.host, port, where)
    print(f"m2agent serve: {name} at http://{args.host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        async_engine.stop(timeout_s=SHUTDOWN_GRACE_S)
        engine.close()
    return 0


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _exit_when_idle(server: Any, engine: Any, idle_s: float, log: logging.Logger) -> None:
    """Stop the server once no request has been in flight for `idle_s` seconds."""
    import threading
    import time

    def watch() -> None:
        last_busy, seen = time.monotonic(), 0
        while not server.should_exit:
            time.sleep(min(1.0, idle_s / 4))
            done = engine.num_finished + engine.num_aborted
            if engine.engine.num_requests or done != seen:
                last_busy, seen = time.monotonic(), done
            elif time.monotonic() - last_busy > idle_s:
                log.info("idle for %.0fs: exiting", idle_s)
                server.should_exit = True

    threading.Thread(target=watch, name="m2agent-idle", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
