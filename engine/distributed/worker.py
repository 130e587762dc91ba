"""`python -m m2agent.engine.distributed.worker FD`: one tensor-parallel rank other than 0.

Reads (engine config, group address, rank, device type) from the socket FD, joins the group,
loads its slice of the model, says "ready" (or why not), then makes each runner call rank 0
announces until the socket closes."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger("m2agent.engine.tp")


def main(argv: list[str]) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it stuck?
    conn = Connection(int(argv[0]))
    config, address, rank, device_type, (log_file, log_level) = conn.recv()
    logging.basicConfig(
        level=log_level or logging.WARNING,
        filename=log_file,
        format=f"%(asctime)s %(levelname)s tp{rank} %(name)s: %(message)s",
    )
    try:
        runner = _build_runner(config, address, rank, device_type)
    except Exception as e:  # reported to rank 0, which tells the user
        logger.error("loading failed:\n%s", traceback.format_exc())
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    conn.send(("ready", None))
    return _serve(conn, runner)


def _serve(conn: Connection, runner: Any) -> int:
    from m2agent.engine.runner.model_runner import COLLECTIVE_METHODS

    while True:
        try:
            method, args = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break  # rank 0 closed the socket (or is gone): done
        if method not in COLLECTIVE_METHODS:
            conn.send(("error", f"unknown runner call {method!r}"))
            return 1
        try:
            getattr(runner, method)(*args)
        except Exception as e:
            logger.error("%s failed:\n%s", method, traceback.format_exc())
            conn.send(("error", f"{method} failed: {type(e).__name__}: {e}"))
            return 1
    import torch.distributed as dist

    runner.release_graphs()  # graphs holding NCCL work go before the communicator
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _build_runner(config: Any, address: Any, rank: int, device_type: str) -> Any:
    from m2agent.engine.distributed.workers import device_for, join_group
    from m2agent.engine.loader import load_model
    from m2agent.engine.runner.model_runner import ModelRunner

    tp = join_group(address, rank, device_type)
    loaded = load_model(
        config.model,
        device_for(device_type, rank),
        config.dtype,
        config.load_format,
        config.seed,
        tp,
    )
    return ModelRunner(loaded.model, config.block_size, loaded.device, loaded.dtype, tp)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when rank 0 dies, even while blocked inside a collective. (The
    kernel ties this to the thread that started us: rank 0 starts workers from the thread that
    keeps the engine.)"""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # rank 0 died before the request took effect
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
