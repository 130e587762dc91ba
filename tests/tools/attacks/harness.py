"""Running attacks in the sandbox as root or as an unprivileged user (see conftest.py for the
threat model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from m2agent.tools.sandbox import bwrap, landlock

NOBODY = 65534
BACKENDS = ["bwrap", "landlock"]
USERS = ["root", "nobody"]


def require_backend(backend: str) -> None:
    if backend == "bwrap":
        probe = bwrap.probe_bwrap()
        if not probe.works:
            pytest.skip(f"bubblewrap does not work here: {probe.diagnosis}")
    elif landlock.abi_version() < 1:
        pytest.skip("Landlock is not available in this kernel")


def require_user(user: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"runs as {user} only when the tests run as root (setpriv switches user)")
    if user == "nobody" and shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot switch to an unprivileged user")
    if user == "nobody" and (why := _nobody_cannot_run_the_agent()):
        pytest.skip(
            f"the unprivileged user cannot run this interpreter with m2agent ({why}): create "
            "the virtualenv from a Python it can execute (e.g. /usr/bin/python3) in a folder it "
            "can read; .ci/run does this"
        )


# The runner starts the launcher with sys.executable itself (setpriv's own exec can succeed
# where the user's cannot), so the probe does the same.
_PROBE = (
    "import subprocess, sys, m2agent.tools.shell; "
    "subprocess.run([sys.executable, '-I', '-c', 'pass'], check=True)"
)


@cache
def _nobody_cannot_run_the_agent() -> str:
    """Why `nobody` cannot start sys.executable and import the sandbox ('' when it can): a
    Python under a private home (pyenv in /root) is out of its reach."""
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-I", "-c", _PROBE],
        capture_output=True, text=True, cwd="/", timeout=60,
    )  # fmt: skip
    if probe.returncode == 0:
        return ""
    return (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int | None
    output: str
    timed_out: bool
    notes: list[str]


_RUNNER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from m2agent.tools.sandbox.policy import SandboxPolicy
    from m2agent.tools.sandbox.policy import Limits
    from m2agent.tools.shell import CommandRunner
    spec = json.loads(sys.argv[1])
    policy = SandboxPolicy.for_workspace(
        Path(spec["workspace"]), limits=Limits(**spec["limits"]), **spec["policy"]
    )
    runner = CommandRunner(policy, spec["backend"])
    out = []
    for command in spec["commands"]:
        r = runner.run(command, spec["timeout_s"])
        out.append({"exit_code": r.exit_code, "output": r.output, "timed_out": r.timed_out,
                    "notes": list(r.notes)})
    print(json.dumps(out))
    """
)


@dataclass
class Attacker:
    """Runs commands in the sandbox as `user` on `backend`, in a workspace that user owns."""

    backend: str
    user: str
    workspace: Path
    home: Path
    public: Path  # a folder outside the workspace that both users may write

    def run(
        self,
        *commands: str,
        timeout_s: float = 20,
        limits: dict[str, Any] | None = None,
        **policy: Any,
    ) -> list[Outcome]:
        from m2agent.tools.sandbox.policy import Limits

        spec = {
            "workspace": str(self.workspace),
            "backend": self.backend,
            "commands": list(commands),
            "timeout_s": timeout_s,
            "limits": limits if limits is not None else _limits_dict(Limits()),
            "policy": policy,
        }
        env = {**os.environ, "HOME": str(self.home)}
        argv = [sys.executable, "-I", "-c", _RUNNER_SCRIPT, json.dumps(spec)]
        if self.user == "nobody":
            argv = [
                "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv,
            ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=self.public, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return [Outcome(**o) for o in json.loads(done.stdout.splitlines()[-1])]

    def one(self, command: str, **kwargs: Any) -> Outcome:
        return self.run(command, **kwargs)[0]


def _limits_dict(limits: Any) -> dict[str, Any]:
    return {
        "processes": limits.processes,
        "memory_bytes": limits.memory_bytes,
        "file_bytes": limits.file_bytes,
        "open_files": limits.open_files,
    }


def make_attacker(backend: str, user: str, public: Path) -> Attacker:
    require_backend(backend)
    require_user(user)
    workspace, home = public / "ws", public / "home"
    for folder in (workspace, home):
        folder.mkdir()
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "README.md").write_text("hello\n")
    if user == "nobody":
        for path in (workspace, home, *workspace.rglob("*")):
            os.lchown(path, NOBODY, NOBODY)
    return Attacker(backend, user, workspace, home, public)


def processes_with(token: str) -> list[int]:
    """The processes whose command line contains `token` (NUL separates arguments)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if token.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                continue
    return found


def survivors(token: str, within_s: float = 3.0) -> list[int]:
    """The processes with `token` still there after `within_s`: those a command's end killed
    (a PID namespace torn down, a subreaper's SIGKILL) vanish once the kernel reaps them, which
    a loaded machine may take a moment to do; one that really outlived its command stays."""
    deadline = time.monotonic() + within_s
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
