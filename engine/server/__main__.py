"""`python -m m2agent.engine.server` / `m2agent serve`: load a model and serve it over HTTP.

Binds 127.0.0.1 unless told otherwise. With --log-file, logs go to that file, not the terminal
(the agent starts this server in the background)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
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
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    app = create_app(async_engine, ServerSettings(names, args.api_key, args.reasoning_mode))
    try:  # bind first, so --port 0 can report the port it got
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        print(f"m2agent serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        async_engine.stop()
        engine.close()
        return 1
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, log_level=args.log_level, access_log=False)
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
        async_engine.stop()
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
