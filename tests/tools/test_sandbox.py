"""The Bash tool under real bubblewrap, attacked: every escape must fail. Also output capping,
timeouts that kill the whole tree, secret scrubbing, and the same as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2agent.tools.sandbox import bwrap, landlock
from m2agent.tools.sandbox.policy import SandboxPolicy, scrub_environment
from m2agent.tools.shell import BashTool, CommandRunner, SandboxUnavailable

pytestmark = pytest.mark.sandbox


def require_bwrap() -> None:
    probe = bwrap.probe_bwrap()
    if not probe.works:
        pytest.skip(f"bubblewrap does not work here: {probe.diagnosis}. {probe.advice}")


def require(backend: str) -> None:
    if backend == "bwrap":
        require_bwrap()
    elif landlock.abi_version() < 1:
        pytest.skip("Landlock is not available in this kernel")


BACKENDS = ["bwrap", "landlock"]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "README.md").write_text("hello\n")
    return root


@pytest.fixture(params=BACKENDS)
def runner(request: pytest.FixtureRequest, workspace: Path) -> CommandRunner:
    require(request.param)
    return CommandRunner(SandboxPolicy.for_workspace(workspace), request.param)


@pytest.fixture
def bwrap_runner(workspace: Path) -> CommandRunner:
    require_bwrap()
    return CommandRunner(SandboxPolicy.for_workspace(workspace), "bwrap")


def test_commands_run_and_write_the_workspace(runner: CommandRunner, workspace: Path) -> None:
    (workspace / "src").mkdir()
    result = runner.run(
        "echo built > src/out.txt && echo more >> README.md && cat README.md && pwd"
    )
    assert result.exit_code == 0, result.output
    assert "hello" in result.output and str(workspace) in result.output
    assert (workspace / "src/out.txt").read_text() == "built\n"
    assert (workspace / "README.md").read_text() == "hello\nmore\n"
    assert runner.run("echo scratch > $TMPDIR/x && cat $TMPDIR/x").output == "scratch\n"


@pytest.mark.parametrize(
    "attack",
    [
        "echo pwned > /etc/m2agent-escape",
        "echo pwned > ../escape.txt",
        "echo pwned > $HOME/escape.txt",
        "echo pwned > /root/escape.txt",
        "echo pwned > .git/hooks/pre-commit",
        "echo pwned > link/escape.txt",
    ],
)
def test_writes_outside_the_workspace_fail(
    runner: CommandRunner, workspace: Path, tmp_path: Path, attack: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "link").symlink_to(outside)
    runner.run(attack)
    targets = [
        Path("/etc/m2agent-escape"),
        tmp_path / "escape.txt",
        Path(os.environ["HOME"]) / "escape.txt",
        Path("/root/escape.txt"),
        workspace / ".git/hooks/pre-commit",
        outside / "escape.txt",
    ]
    for path in targets:
        assert not path.exists(), f"{attack} escaped to {path}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_is_off_unless_allowed(workspace: Path, backend: str) -> None:
    require(backend)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[bool] = []

    def accept() -> None:
        server.settimeout(10)
        try:
            conn, _ = server.accept()
            accepted.append(True)
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"
    closed = CommandRunner(SandboxPolicy.for_workspace(workspace), backend).run(probe, timeout_s=10)
    assert "connected" not in closed.output and closed.exit_code != 0
    opened = CommandRunner(SandboxPolicy.for_workspace(workspace, allow_network=True), "bwrap").run(
        probe, timeout_s=10
    )
    thread.join(timeout=10)
    server.close()
    assert "connected" in opened.output and accepted == [True]


def test_setsid_child_does_not_outlive_its_command(
    bwrap_runner: CommandRunner, workspace: Path
) -> None:
    # bubblewrap only: its PID namespace dies with the command (Landlock has none).
    result = bwrap_runner.run("setsid bash -c 'sleep 1; echo alive > marker' & echo started")
    assert result.exit_code == 0
    time.sleep(2.5)
    assert not (workspace / "marker").exists()


def test_timeout_kills_the_whole_tree(runner: CommandRunner, workspace: Path) -> None:
    started = time.monotonic()
    result = runner.run("(sleep 3; echo late > late.txt) & sleep 60", timeout_s=1)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 10
    time.sleep(3.5)
    assert not (workspace / "late.txt").exists()


def test_secrets_are_scrubbed(runner: CommandRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "value-one-9f2")
    monkeypatch.setenv("GITHUB_TOKEN", "value-two-9f2")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "value-three-9f2")
    monkeypatch.setenv("HARMLESS", "visible")
    result = runner.run("env")
    assert "9f2" not in result.output
    assert "HARMLESS=visible" in result.output
    assert scrub_environment({"AWS_SECRET_ACCESS_KEY": "x", "LANG": "C"}) == {"LANG": "C"}


def test_output_is_capped_keeping_head_and_tail(runner: CommandRunner) -> None:
    result = runner.run("seq 1 200000")
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.rstrip().endswith("200000")
    assert "characters omitted" in result.output
    assert len(result.output) < 31_000


def test_bash_tool_reports_exit_codes_and_timeouts(runner: CommandRunner) -> None:
    tool = BashTool(runner)
    ok = tool.run(tool.Args.model_validate({"command": "echo hi", "description": "say hi"}))
    assert ok.content == "hi" and not ok.is_error and ok.metadata["exit_code"] == 0
    bad = tool.run(tool.Args.model_validate({"command": "exit 3"}))
    assert bad.is_error and "[exit code 3]" in bad.content
    slow = tool.run(tool.Args.model_validate({"command": "sleep 30", "timeout": 500}))
    assert slow.is_error and "timed out after 0.5s" in slow.content


def test_udp_does_not_leave_the_sandbox(runner: CommandRunner) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(1.5)
    port = listener.getsockname()[1]
    send = (
        "import socket; "
        f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))"
    )
    runner.run(f'python3 -c "{send}"')
    with pytest.raises(TimeoutError):
        listener.recvfrom(16)
    listener.close()


def test_landlock_top_level_entries_need_the_broker(workspace: Path) -> None:
    """With the broker (Linux >= 5.14) the workspace's top level is as writable as under
    bubblewrap (the attacks are in attacks/test_top_level.py); without it, it stays read-only."""
    require("landlock")
    from m2agent.tools.sandbox import notify

    runner = CommandRunner(SandboxPolicy.for_workspace(workspace), "landlock")
    result = runner.run("echo x > newtop.txt")
    if notify.supported():
        assert result.exit_code == 0 and (workspace / "newtop.txt").read_text() == "x\n"
    else:
        assert result.exit_code != 0 and not (workspace / "newtop.txt").exists()


def test_no_sandbox_means_no_commands(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        bwrap,
        "probe",
        lambda: bwrap.Probe(None, None, "bubblewrap is not installed", "Install it."),
    )
    runner = CommandRunner(SandboxPolicy.for_workspace(workspace), "auto")
    with pytest.raises(
        SandboxUnavailable, match=r"no sandbox works here\. bubblewrap is not installed"
    ):
        runner.run("true")
    off = CommandRunner(SandboxPolicy.for_workspace(workspace), "off")
    assert off.run("echo unsandboxed").output == "unsandboxed\n"


UNPRIVILEGED_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from m2agent.tools.sandbox.policy import SandboxPolicy
    from m2agent.tools.shell import CommandRunner
    ws = Path(sys.argv[1])
    (ws / "out").mkdir()
    for backend in sys.argv[2:]:
        runner = CommandRunner(SandboxPolicy.for_workspace(ws), backend)
        result = runner.run(f"echo ok > out/{backend}.txt")
        assert result.exit_code == 0, (backend, result.output)
        runner.run("echo pwned > /etc/m2-unpriv; echo pwned > ../unpriv-escape")
    print("done")
    """
)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="m2agent-unpriv-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_as_an_unprivileged_user(public_tmp: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to switch to an unprivileged user")
    require_bwrap()
    # bubblewrap only: the Landlock launcher re-executes this interpreter, which an
    # unprivileged user may not reach (root-owned pyenv installs).
    backends = ["bwrap"]
    tmp_path = public_tmp
    ws = tmp_path / "unpriv"
    ws.mkdir()
    os.chown(ws, 65534, 65534)
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", UNPRIVILEGED_SCRIPT, str(ws), *backends],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(ws)},
    )  # fmt: skip
    if (
        done.returncode != 0
        and "Permission denied" in done.stderr
        and "python" in done.stderr.lower()
    ):
        pytest.skip(
            f"the interpreter is not readable by an unprivileged user: {done.stderr[-300:]}"
        )
    assert done.returncode == 0, done.stdout + done.stderr
    for backend in backends:
        assert (ws / "out" / f"{backend}.txt").read_text() == "ok\n"
    assert not Path("/etc/m2-unpriv").exists() and not (tmp_path / "unpriv-escape").exists()
