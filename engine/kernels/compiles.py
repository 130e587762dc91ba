"""Triton compiles at run time: counted, timed and named, so a stall can be traced to them.

Triton builds a kernel variant the first time it meets a new key: new constexpr values (tile
sizes, split counts) or a new specialization of an integer argument (1, or a multiple of 16).
The first build of a variant costs from a tenth of a second to a few seconds (its on-disk cache
makes later processes fast), and in a serving engine it lands inside some request's step. The
watch counts every variant built in this process (a miss in Triton's in-memory cache: a compile,
or a load from its disk cache) with the time it took, so that benchmarks can say whether a timed
round paid for one and the server can log it. `M2AGENT_LOG_COMPILES=1` logs each one at WARNING
(kernel, constexprs, seconds); otherwise they go to the DEBUG log.

Needs Triton's runtime hooks (Triton 3.4 and later); without them the watch counts nothing and
says so (`available`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "M2AGENT_LOG_COMPILES"


@dataclasses.dataclass(frozen=True, slots=True)
class Compile:
    kernel: str
    key: str  # the constexprs and specializations that made it new
    seconds: float


@dataclasses.dataclass(slots=True)
class _Watch:
    available: bool = False
    compiles: list[Compile] = dataclasses.field(default_factory=list)
    started: dict[int, float] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_WATCH = _Watch()


def _describe(fn: Any, compile_info: dict[str, Any]) -> str:
    """The variant's constexprs by name and the integer arguments specialized as multiples of
    16: what made it new."""
    params = getattr(getattr(fn, "jit_function", None), "params", [])
    names = {(i,): p.name for i, p in enumerate(params)}
    shown = [
        f"{names.get(path, path)}={value}"
        for path, value in (compile_info.get("constants") or {}).items()
        if str(names.get(path, "")).isupper()  # tile sizes, splits, modes: not PDL plumbing
    ]
    signature = compile_info.get("signature") or {}
    ints = {name for name, kind in signature.items() if str(kind).startswith(("i", "u"))}
    configs = compile_info.get("configs") or [{}]
    aligned = sorted(
        names.get(path, str(path))
        for path, attrs in (configs[0] or {}).items()
        if names.get(path) in ints and ["tt.divisibility", 16] in [list(a) for a in attrs]
    )
    if aligned:
        shown.append("multiple of 16: " + " ".join(aligned))
    shown.append(f"warps={compile_info.get('num_warps')} stages={compile_info.get('num_stages')}")
    return ", ".join(shown)


def _before(*, key: Any, repr: str, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
    with _WATCH.lock:
        _WATCH.started[threading.get_ident()] = time.perf_counter()
    return False  # never skip the compile


def _after(*, key: Any, repr: str, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
    now = time.perf_counter()
    with _WATCH.lock:
        began = _WATCH.started.pop(threading.get_ident(), now)
        name = getattr(fn, "name", None) or str(repr).split("[", 1)[0]
        record = Compile(name, _describe(fn, compile), now - began)
        _WATCH.compiles.append(record)
    level = logging.WARNING if os.environ.get(ENV_VAR, "") not in ("", "0") else logging.DEBUG
    logger.log(level, "built Triton kernel %s (%s) in %.2f s", record.kernel, record.key,
               record.seconds)  # fmt: skip
    return False


def install() -> bool:
    """Start watching (idempotent). False where Triton or its hooks are missing."""
    if _WATCH.available:
        return True
    try:
        from triton import knobs
    except ImportError:
        return False
    runtime = knobs.runtime
    if not hasattr(runtime, "jit_cache_hook") or not hasattr(runtime, "jit_post_compile_hook"):
        return False
    if runtime.jit_cache_hook not in (None, _before) or runtime.jit_post_compile_hook not in (
        None,
        _after,
    ):
        logger.debug("Triton compile hooks already taken: compiles are not counted")
        return False
    runtime.jit_cache_hook = _before
    runtime.jit_post_compile_hook = _after
    _WATCH.available = True
    return True


def available() -> bool:
    return _WATCH.available


def count() -> int:
    """Kernel variants built so far in this process."""
    with _WATCH.lock:
        return len(_WATCH.compiles)


def since(mark: int) -> list[Compile]:
    """The variants built after `count()` returned `mark`."""
    with _WATCH.lock:
        return list(_WATCH.compiles[mark:])
