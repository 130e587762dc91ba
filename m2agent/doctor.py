"""`m2agent doctor`: what is there, what is missing, and how to fix it."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from m2agent.settings import Settings


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True  # a failing needed check makes doctor exit non-zero


def run_checks(settings: Settings, workspace: Path) -> list[Check]:
    checks = [
        Check(
            "python",
            sys.version_info >= (3, 11),
            f"{platform.python_version()} at {sys.executable}",
            "install Python 3.11 or newer",
        ),
        _git(),
        _sandbox(settings),
        protections_check(settings, workspace),
        _model(settings),
        _engine(settings),
        *_mcp(settings, workspace),
    ]
    return checks


def _mcp(settings: Settings, workspace: Path) -> list[Check]:
    """Each configured MCP server, started for real (the approved ones) and stopped again."""
    from m2agent.mcp.startup import plan, start

    started = plan(settings, workspace)
    checks = [
        Check(
            f"mcp {spec.name}",
            False,
            f"project server not approved: {spec.describe()}",
            f"m2agent mcp approve {spec.name}",
            needed=False,
        )
        for spec in started.pending
    ]
    if not started.approved:
        return checks
    manager = start(settings, workspace, started.approved)
    try:
        manager.wait_ready()
        statuses = manager.statuses()
    finally:
        manager.stop()
    for status in statuses:
        fix = "" if status.state in ("ready", "disabled") else "see `m2agent mcp list --check`"
        checks.append(
            Check(
                f"mcp {status.name}",
                status.state in ("ready", "disabled"),
                f"{status.state}: {status.detail} ({status.source}, {status.transport})",
                fix,
                needed=False,
            )
        )
    return checks


def _git() -> Check:
    path = shutil.which("git")
    if path is None:
        return Check("git", False, "not found", "install git (apt-get install git)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    return Check("git", True, version)


def _sandbox(settings: Settings) -> Check:
    from m2agent.tools.sandbox import bwrap

    if settings.sandbox == "off":
        return Check(
            "sandbox", True, "off by configuration: commands run unconfined", "", needed=False
        )
    probe = bwrap.probe()
    if probe.works:
        return Check("sandbox", True, f"{probe.backend}: {probe.diagnosis}")
    return Check("sandbox", False, probe.diagnosis, probe.advice or "see SANDBOX notes in README")


def protections_check(settings: Settings, workspace: Path) -> Check:
    """Which of the sandbox's protections are in force here, in words."""
    from m2agent.tools.sandbox import bwrap, landlock, notify, seccomp

    if settings.sandbox == "off":
        return Check("protections", True, "none: the sandbox is off", needed=False)
    probe = bwrap.probe() if settings.sandbox == "auto" else None
    backend = probe.backend if probe is not None else settings.sandbox
    abi = landlock.abi_version()
    policy = settings.sandbox_policy(workspace)
    active = [
        "writes only in the workspace (.git and .m2agent read-only, never created)",
        f"{len(policy.hidden)} secret paths hidden (deny_read/allow_read adjust)",
        "credentials scrubbed from the environment"
        + (f" (kept: {', '.join(policy.env_allow)})" if policy.env_allow else ""),
        "network " + ("allowed" if policy.allow_network else "off"),
        "no capabilities, no_new_privs",
    ]
    missing = []
    if seccomp.supported():
        active.append(
            "seccomp: no 32-bit/x32 syscalls, raw or netlink sockets, io_uring, setuid files"
        )
    else:
        missing.append("no seccomp filter for this machine")
    if backend == "bwrap":
        active.append("PID namespace: no process outlives its command; /run hidden")
    elif backend == "landlock":
        active.append(f"Landlock ABI {abi}; subreaper kills every leftover process")
        if abi >= 6:
            active.append("signals and abstract unix sockets scoped to the sandbox")
        else:
            missing.append("Landlock ABI < 6: host processes can be signalled")
        if notify.supported():
            active.append(
                "top level of the workspace as under bubblewrap (broker: seccomp user "
                "notification); .git/.m2agent never created, removed or renamed"
            )
        else:
            missing.append(
                "top-level workspace entries cannot be created or removed (the broker needs "
                "Linux >= 5.14 on x86_64 or aarch64 and kernel.yama.ptrace_scope below 2)"
            )
        if os.geteuid() == 0:
            missing.append("as root, root-owned files outside can be chmod'ed (Landlock)")
    if os.geteuid() == 0:
        active.append("as root, the runner counts processes itself (the kernel exempts uid 0)")
    limits = policy.limits
    active.append(
        "limits: "
        + ", ".join(
            f"{name} {value}"
            for name, value in (
                ("processes +", limits.processes),
                ("memory MiB", limits.memory_bytes and limits.memory_bytes >> 20),
                ("file MiB", limits.file_bytes and limits.file_bytes >> 20),
                ("open files", limits.open_files),
            )
            if value
        )
    )
    detail = "; ".join(active) + ("" if not missing else ". Not here: " + "; ".join(missing))
    return Check("protections", probe is None or probe.works, detail, needed=False)


def _model(settings: Settings) -> Check:
    from m2agent.errors import UsageError
    from m2agent.runtime import NO_MODEL, embedded_plan

    if not settings.endpoint:
        try:
            local = embedded_plan(settings)
        except UsageError as e:
            return Check(
                "model", False, e.message.split(". Pass")[0], NO_MODEL[len("no model: ") :]
            )
        if local is not None:
            weights, tp, device = local
            on = device or f"{tp} GPU{'s' if tp > 1 else ''}"
            return Check("model", True, f"embedded engine for {weights} on {on}")
        return Check(
            "model",
            False,
            f"no endpoint, no local checkpoint, no MiniMax-M2 weights in {settings.hf_hub_cache}",
            NO_MODEL[len("no model: ") :],
        )
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    base = settings.endpoint.rstrip("/")
    try:
        models = httpx.get(f"{base}/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        return Check(
            "model",
            False,
            f"{base} unreachable ({type(e).__name__}: {e})",
            "is the server running?",
        )
    if models.status_code in (401, 403):
        return Check("model", False, f"{base}: HTTP {models.status_code}", "check M2AGENT_API_KEY")
    if models.status_code >= 400:
        return Check(
            "model",
            False,
            f"{base}/models: HTTP {models.status_code}",
            "check the URL (it ends in /v1)",
        )
    names = [m.get("id") for m in models.json().get("data", []) if isinstance(m, dict)]
    detail = f"{base} serves {', '.join(map(str, names)) or 'no models'}"
    if settings.model and settings.model not in names:
        return Check("model", False, detail, f"--model {settings.model!r} is not among them")
    if settings.api == "openai" and (settings.model or names):
        detail += "; reasoning " + _reasoning_style(
            base, settings.model or str(names[0]), settings.api_key
        )
    return Check("model", True, detail)


def _reasoning_style(base: str, model: str, api_key: str | None) -> str:
    """Ask for a few tokens through the real backend and report what it learned."""
    from m2agent.agent.messages import UserMessage
    from m2agent.backends.openai_chat import OpenAIChatBackend
    from m2agent.errors import BackendError

    backend = OpenAIChatBackend(base, model, api_key, max_tokens=32, timeout_s=60)
    try:
        for _ in backend.stream([UserMessage("Say OK.")], []):
            pass
    except BackendError as e:
        return f"style unknown (the test request failed: {e.message[:200]})"
    if not backend.style.detected:
        return "not seen in a short answer"
    if backend.style.reasoning_field is None:
        return "inside content (<think>...</think>)"
    return f"in the `{backend.style.reasoning_field}` field"


def _engine(settings: Settings) -> Check:
    embedded = not settings.endpoint and bool(settings.model)
    if importlib.util.find_spec("torch") is None:
        return Check(
            "engine",
            False,
            "torch is not installed: no embedded engine (remote endpoints still work)",
            "pip install 'm2agent[engine]' after installing torch for your machine",
            needed=False,
        )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if settings.tp > 1 and count and count < settings.tp:
        return Check(
            "engine",
            False,
            f"tp {settings.tp} splits the embedded engine over {settings.tp} GPUs; {count} visible",
            f"pass --tp {count} or less (or set tp in the config), or check CUDA_VISIBLE_DEVICES",
            needed=embedded,
        )
    if count:
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
        split = f"; tp {settings.tp}" if settings.tp > 1 else ""
        return Check(
            "engine", True, f"torch {torch.__version__}, GPUs: {gpus}{split}", needed=False
        )
    return Check(
        "engine",
        True,
        f"torch {torch.__version__}, no GPU: the embedded engine runs on CPU (tiny models only)",
        needed=False,
    )


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok " if check.ok else ("MISSING" if check.needed else "note")
        lines.append(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"        fix: {check.fix}")
    return "\n".join(lines)
