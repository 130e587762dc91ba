"""Findings 1-4 and 9 of issue 13: getting out of the sandbox, keeping privileges, reaching the
host's sockets and processes, outliving the command, planting .git/.m2agent."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from harness import NOBODY, Attacker, make_attacker, survivors

from m2agent.tools.sandbox import landlock

pytestmark = pytest.mark.sandbox


# Finding 1: the Landlock launcher must import nothing from the workspace.
def test_workspace_python_package_does_not_run_outside_the_sandbox(
    attacker: Attacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = attacker.public / "escaped"
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    for name in ("m2agent/__init__.py", "sitecustomize.py", "usercustomize.py", "json.py"):
        path = attacker.workspace / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(payload)
        if attacker.user == "nobody":
            os.chown(path.parent, NOBODY, NOBODY)
            os.chown(path, NOBODY, NOBODY)
    monkeypatch.setenv("PYTHONPATH", str(attacker.workspace))
    monkeypatch.setenv("PYTHONSTARTUP", str(attacker.workspace / "sitecustomize.py"))
    result = attacker.one("echo ran")
    assert result.output == "ran\n", result.output
    assert not marker.exists(), "workspace code ran with no sandbox"


# Finding 2: no capability survives, as root too.
def test_no_capabilities_and_no_new_privileges(attacker: Attacker) -> None:
    status = attacker.one("grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status")
    fields = dict(line.split(":\t") for line in status.output.splitlines())
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"  # so no setuid program gives any back
    if attacker.user == "root":  # (only root may empty its bounding set)
        assert fields["CapBnd"] == "0000000000000000"


def test_root_cannot_make_devices_or_take_files(root_attacker: Attacker) -> None:
    outside = root_attacker.public / "theirs.txt"
    outside.write_text("theirs\n")
    os.chown(outside, NOBODY, NOBODY)
    outside.chmod(0o600)
    result = root_attacker.one(
        f"mknod $TMPDIR/disk b 7 0 && echo MKNOD; "
        f"chown 0:0 {outside} && echo CHOWN; chmod 666 {outside} && echo CHMOD; "
        f"cat {outside} && echo READ"
    )
    for word in ("MKNOD", "CHOWN", "CHMOD", "READ"):
        assert word not in result.output, result.output
    assert outside.stat().st_uid == NOBODY and outside.stat().st_mode & 0o777 == 0o600


def test_no_setuid_programs_can_be_made(attacker: Attacker) -> None:
    (attacker.workspace / "bin").mkdir()
    if attacker.user == "nobody":
        os.chown(attacker.workspace / "bin", NOBODY, NOBODY)
    result = attacker.one(
        "cp /bin/true bin/t && chmod 755 bin/t && echo EXEC; "
        "chmod u+s bin/t && echo SETUID; chmod g+s bin/t && echo SETGID; "
        "python3 -c \"import os; os.chmod('bin/t', 0o4755); print('PYSETUID')\"; true"
    )
    assert "EXEC" in result.output, result.output
    for word in ("\nSETUID", "SETGID", "PYSETUID"):
        assert word not in result.output, result.output
    if (attacker.workspace / "bin/t").exists():
        assert not (attacker.workspace / "bin/t").stat().st_mode & 0o6000


def test_the_agents_environment_cannot_be_read(
    root_attacker: Attacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "agent-secret-77b")
    # The attacker's runner process is the agent here: its pid is the sandbox's grandparent
    # (bash -> launcher or bwrap -> agent). Read every /proc/*/environ that can be read.
    result = root_attacker.one(
        "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null; done; "
        "cat /proc/$PPID/environ /proc/1/environ 2>/dev/null; true"
    )
    assert "agent-secret-77b" not in result.output


def test_host_processes_cannot_be_signalled(attacker: Attacker) -> None:
    argv = ["sleep", "60"]
    if attacker.user == "nobody":
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    victim = subprocess.Popen(argv)
    try:
        time.sleep(0.2)
        attacker.one(f"kill -9 {victim.pid}; kill -9 -1")
        time.sleep(0.2)
        assert victim.poll() is None, "a host process was killed from the sandbox"
    finally:
        victim.kill()
        victim.wait()


# Finding 3: raw, netlink and non-native-ABI sockets.
@pytest.mark.parametrize("family", ["AF_PACKET", "AF_NETLINK"])
def test_raw_and_netlink_sockets_are_refused(attacker: Attacker, family: str) -> None:
    code = f"import socket; socket.socket(socket.{family}, socket.SOCK_RAW, 0); print('OPENED')"
    result = attacker.one(f'python3 -c "{code}"')
    assert "OPENED" not in result.output and "PermissionError" in result.output, result.output


def test_netlink_cannot_change_the_hosts_network(root_attacker: Attacker) -> None:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    name = f"m2x{uuid.uuid4().hex[:8]}"
    root_attacker.one(f"ip link add {name} type dummy")
    shown = subprocess.run(["ip", "link", "show", name], capture_output=True, text=True)
    if shown.returncode == 0:
        subprocess.run(["ip", "link", "del", name], check=False)
    assert shown.returncode != 0, f"the sandbox created interface {name} on the host"


# x86_64 machine code: socket(AF_INET, SOCK_DGRAM, 0) through the 32-bit `int 0x80` entry
# (i386 __NR_socket = 359), returning eax; and the same through the x32 ABI (41 | 0x40000000).
_INT80_SOCKET = bytes.fromhex("53b867010000bb02000000b90200000031d2cd805bc3")
_X32_SOCKET = bytes.fromhex(
    "b829000040" "bf02000000" "be02000000" "31d2" "0f05" "c3"
)  # fmt: skip
_ABI_PROBE = textwrap.dedent(
    """
    import ctypes, mmap, sys
    code = bytes.fromhex(sys.argv[1])
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    print("RESULT", ctypes.CFUNCTYPE(ctypes.c_int)(address)())
    """
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 machine code")
@pytest.mark.parametrize("code", [_INT80_SOCKET, _X32_SOCKET], ids=["int80", "x32"])
def test_non_native_syscall_abis_are_refused(attacker: Attacker, code: bytes) -> None:
    outside = subprocess.run(
        [sys.executable, "-c", _ABI_PROBE, code.hex()], capture_output=True, text=True
    )
    if int(outside.stdout.split()[-1]) < 0:
        pytest.skip(f"this kernel has no such ABI (socket returned {outside.stdout.split()[-1]})")
    script = attacker.workspace / "abi.py"
    script.write_text(_ABI_PROBE)
    result = attacker.one(f"python3 abi.py {code.hex()}")
    assert int(result.output.split()[-1]) < 0, f"a non-native syscall opened a socket: {result}"


def _unix_listener(path: str) -> tuple[socket.socket, list[bytes]]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    server.settimeout(4)
    got: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            got.append(conn.recv(16) or b"connected")
            conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return server, got


@pytest.mark.parametrize("where", ["/run", "/tmp", "abstract"])
def test_unix_sockets_outside_the_workspace_are_unreachable(
    root_attacker: Attacker, where: str
) -> None:
    if where == "abstract":
        path = f"\0m2agent-attack-{uuid.uuid4().hex}"
        shown = "@" + path[1:]
    else:
        path = f"{where}/m2agent-attack-{uuid.uuid4().hex[:8]}.sock"
        shown = path
    server, got = _unix_listener(path)
    try:
        connect = (
            "import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect({path!r}); s.send(b'hi'); print('CONNECTED')"
        )
        result = root_attacker.one(f'python3 -c "{connect}"')
        time.sleep(0.3)
        assert "CONNECTED" not in result.output and not got, f"reached {shown}"
    finally:
        server.close()
        if where != "abstract":
            Path(path).unlink(missing_ok=True)


def test_landlock_scopes_abstract_sockets_with_the_network_on(public: Path) -> None:
    attacker = make_attacker("landlock", "root", public)
    if landlock.abi_version() < 6:
        pytest.skip("Landlock ABI < 6: abstract unix sockets are not scoped")
    path = f"\0m2agent-attack-{uuid.uuid4().hex}"
    server, got = _unix_listener(path)
    try:
        connect = (
            "import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect({path!r}); s.send(b'hi'); print('CONNECTED')"
        )
        result = attacker.one(f'python3 -c "{connect}"', allow_network=True)
        time.sleep(0.3)
        assert "CONNECTED" not in result.output and not got
    finally:
        server.close()


def test_socketpair_and_pipes_still_work(attacker: Attacker) -> None:
    code = "import socket; a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2).decode())"
    assert attacker.one(f'python3 -c "{code}" | cat').output == "ok\n"


# Finding 4: nothing outlives its command.
def test_background_children_die_with_the_command(attacker: Attacker) -> None:
    out = attacker.workspace / "out"
    out.mkdir()
    if attacker.user == "nobody":
        os.chown(out, NOBODY, NOBODY)
    result = attacker.one(
        "(sleep 1; echo alive > out/bg.txt) & "
        "setsid bash -c 'sleep 1; echo alive > out/setsid.txt' & "
        "bash -c '(sleep 1; echo alive > out/double.txt) &' ; "
        "nohup bash -c 'trap \"\" TERM HUP; sleep 1; echo alive > out/nohup.txt' >/dev/null 2>&1 & "
        "echo started"
    )
    assert result.exit_code == 0 and "started" in result.output
    time.sleep(2)
    left = [p.name for p in out.iterdir()]
    assert left == [], f"processes outlived their command and wrote {left}"


def test_a_fork_bomb_is_killed_whole_at_its_timeout(attacker: Attacker) -> None:
    token = f"m2bomb{uuid.uuid4().hex[:8]}"
    # A bounded bomb (2^7 sleepers, forking while they are being killed): safe on a shared box.
    bomb = (
        f"f() {{ [ $1 -gt 0 ] || exec -a {token} sleep 300; "
        "f $(($1-1)) & f $(($1-1)) & wait; }; f 7"
    )
    started = time.monotonic()
    result = attacker.one(bomb, timeout_s=2)
    assert result.timed_out and time.monotonic() - started < 30
    left = survivors(token)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{len(left)} processes outlived the timeout"


def test_timeout_message_is_true(public: Path) -> None:
    from m2agent.tools.sandbox.policy import SandboxPolicy
    from m2agent.tools.shell import BashTool, CommandRunner

    attacker = make_attacker("landlock", "root", public)
    for mode, claim in (("landlock", "every process it started"), ("off", "may still run")):
        tool = BashTool(CommandRunner(SandboxPolicy.for_workspace(attacker.workspace), mode))
        result = tool.run(tool.Args.model_validate({"command": "sleep 30", "timeout": 300}))
        assert result.is_error and claim in result.content, result.content


# Finding 9: /run, and never creating .git or .m2agent.
def test_commands_cannot_plant_git_or_agent_config(attacker: Attacker) -> None:
    shutil.rmtree(attacker.workspace / ".git")
    result = attacker.one(
        "git init -q . ; git config core.fsmonitor 'touch /tmp/pwned'; "
        "mkdir -p .m2agent && echo 'approval_mode = \"auto\"' > .m2agent/config.toml; ls -a"
    )
    assert not (attacker.workspace / ".git").exists()
    assert not (attacker.workspace / ".m2agent").exists()
    if ".git" in result.output.split():  # created (bubblewrap) and then removed
        assert any(
            ".git was created by the command and has been removed" in n for n in result.notes
        )


def test_existing_git_stays_read_only(attacker: Attacker) -> None:
    result = attacker.one(
        "git config core.fsmonitor 'touch /tmp/pwned' ; echo x > .git/hooks/pre-commit ; "
        "mv .git .git-old ; rm -rf .git ; true"
    )
    assert result.exit_code == 0
    config = (attacker.workspace / ".git/config").read_text()
    assert "fsmonitor" not in config and not (attacker.workspace / ".git/hooks/pre-commit").exists()


@pytest.mark.parametrize(
    "line",
    [
        'approval_mode = "auto"', 'state_dir = "/tmp/evil"', "max_steps = 100000",
        "max_minutes = 100000.0", 'allow_read = ["~/.ssh"]', 'env_allow = ["*"]',
        "limit_processes = 0", "allow_network = true", 'sandbox = "off"',
    ],
)  # fmt: skip
def test_untrusted_project_config_cannot_loosen_anything(tmp_path: Path, line: str) -> None:
    from m2agent.errors import UsageError
    from m2agent.settings import load_settings

    home, ws = tmp_path / "home", tmp_path / "ws"
    (ws / ".m2agent").mkdir(parents=True)
    (ws / ".m2agent/config.toml").write_text(line + "\n")
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg")}
    with pytest.raises(UsageError, match="which only a trusted project may"):
        load_settings(ws, {}, env)
    (home / "cfg/m2agent").mkdir(parents=True)
    (home / "cfg/m2agent/config.toml").write_text(f"trusted_projects = [{str(ws)!r}]\n")
    load_settings(ws, {}, env)  # a trusted project may


def test_settings_reach_the_sandbox_policy(tmp_path: Path) -> None:
    from m2agent.settings import load_settings

    home, ws = tmp_path / "home", tmp_path / "ws"
    (home / ".ssh").mkdir(parents=True)
    (home / "cfg/m2agent").mkdir(parents=True)
    ws.mkdir()
    (ws / ".m2agent").mkdir()
    (ws / ".m2agent/config.toml").write_text(f'deny_read = ["{home}/notes"]\n')  # tighter: fine
    (home / "notes").write_text("x")
    (home / "cfg/m2agent/config.toml").write_text('env_allow = ["CI_*"]\nlimit_file_mb = 0\n')
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg")}
    settings = load_settings(ws, {}, env)
    policy = settings.sandbox_policy(ws)
    assert (home / "notes").resolve() in policy.hidden
    assert (home / "cfg/m2agent").resolve() in policy.hidden  # m2agent's own config
    assert policy.env_allow == ("CI_*",) and policy.limits.file_bytes is None


def test_doctor_reports_the_active_protections(tmp_path: Path) -> None:
    from m2agent.doctor import protections_check, render
    from m2agent.settings import load_settings

    settings = load_settings(tmp_path, {"sandbox": "landlock"})
    text = render([protections_check(settings, tmp_path)])
    assert "protections:" in text and "secret paths hidden" in text
    if landlock.abi_version() >= 6:
        assert "signals and abstract unix sockets scoped" in text
    from m2agent.tools.sandbox import notify

    top_level = "top level of the workspace as under bubblewrap"
    assert (top_level in text) == notify.supported(), text
