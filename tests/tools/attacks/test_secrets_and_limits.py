"""Findings 7, 8 and 10 of issue 13: secrets in files and in the environment, and resource
limits per command."""

from __future__ import annotations

import os

import pytest
from harness import NOBODY, Attacker, survivors

from m2agent.tools.sandbox.policy import looks_secret, scrub_environment

pytestmark = pytest.mark.sandbox

SECRET_FILES = (
    ".ssh/id_ed25519", ".gnupg/private-keys-v1.d/key", ".aws/credentials", ".azure/token",
    ".config/gcloud/credentials.db", ".kube/config", ".docker/config.json", ".netrc",
    ".git-credentials", ".npmrc", ".pypirc", ".config/m2agent/config.toml",
    ".local/state/m2agent/sessions.jsonl",
)  # fmt: skip


def plant_secrets(attacker: Attacker) -> None:
    for i, name in enumerate(SECRET_FILES):
        path = attacker.home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret-{i}-c4f\n")
    (attacker.home / ".ssh/known_hosts").write_text("github.com ssh-ed25519 public-c4f\n")
    (attacker.home / ".bashrc").write_text("# readable\n")
    if attacker.user == "nobody":
        for path in [attacker.home, *attacker.home.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)


def test_secret_files_are_hidden_by_default(attacker: Attacker) -> None:
    plant_secrets(attacker)
    own = [str(attacker.home / ".config/m2agent"), str(attacker.home / ".local/state/m2agent")]
    readall = "cat ~/.bashrc; find ~ -type f -exec cat {} + 2>/dev/null; cat /etc/shadow; true"
    result = attacker.one(readall, deny_read=own)
    assert "# readable" in result.output  # the rest of $HOME is there
    leaked = [line for line in result.output.splitlines() if "secret-" in line]
    assert leaked == [], f"read: {leaked}"
    assert "root:" not in result.output  # /etc/shadow
    assert "root:" in attacker.one("cat /etc/passwd").output


def test_deny_read_and_allow_read(attacker: Attacker) -> None:
    plant_secrets(attacker)
    (attacker.workspace / ".env").write_text("DB_PASSWORD=workspace-secret-c4f\n")
    if attacker.user == "nobody":
        os.chown(attacker.workspace / ".env", NOBODY, NOBODY)
    result = attacker.one(
        "cat ~/.ssh/known_hosts ~/.ssh/id_ed25519 .env ~/.npmrc 2>&1; true",
        deny_read=[str(attacker.workspace / ".env")],
        allow_read=[str(attacker.home / ".ssh/known_hosts"), str(attacker.home / ".npmrc")],
    )
    assert "public-c4f" in result.output and "secret-9-c4f" in result.output  # allowed
    assert "secret-0-c4f" not in result.output  # the key next to known_hosts stays hidden
    assert "workspace-secret" not in result.output


@pytest.mark.parametrize(
    "name, value",
    [
        ("API_KEY", "x"), ("SECRET_KEY", "x"), ("GITHUB_PAT", "x"), ("NPM_AUTH", "x"),
        ("PRIVATE_KEY", "x"), ("OPENROUTER_KEY", "x"), ("MY_SERVICE_TOKEN", "x"),
        ("DB_PASSWD", "x"), ("AWS_REGION_X", "x"), ("GOOGLE_APPLICATION_CREDENTIALS", "x"),
        ("DATABASE_URL", "postgres://app:hunter2@db:5432/app"),
        ("REDIS", "redis://:hunter2@cache:6379"), ("SSH_AUTH_SOCK", "/run/agent"),
    ],
)  # fmt: skip
def test_secret_environment_names(name: str, value: str) -> None:
    assert looks_secret(name, value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("PATH", "/usr/bin"), ("KEYMAP", "us"), ("XAUTHORITY", "/x"), ("HOME", "/root"),
        ("PIP_INDEX_URL", "https://pypi.org/simple"), ("LANG", "C.UTF-8"), ("TERM", "xterm"),
        ("PATTERN", "a*"),
    ],
)  # fmt: skip
def test_harmless_environment_names(name: str, value: str) -> None:
    assert not looks_secret(name, value)


def test_environment_scrub_reaches_commands(
    attacker: Attacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("API_KEY", "SECRET_KEY", "GITHUB_PAT", "NPM_AUTH", "PRIVATE_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-e91")
    monkeypatch.setenv("OPENROUTER_KEY", "router-e91")
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw-e91@db/app")
    monkeypatch.setenv("CI_JOB_TOKEN", "allowed-e91")
    monkeypatch.setenv("HARMLESS", "visible")
    result = attacker.one("env", env_allow=["CI_JOB_*"])
    leaked = [line for line in result.output.splitlines() if "e91" in line]
    assert leaked == ["CI_JOB_TOKEN=allowed-e91"]
    assert "HARMLESS=visible" in result.output
    assert scrub_environment({"X_TOKEN": "1", "Y": "2"}, ["X_TOKEN"]) == {"X_TOKEN": "1", "Y": "2"}


# Finding 10: resource limits.
def test_file_size_is_limited(attacker: Attacker) -> None:
    (attacker.workspace / "git").mkdir()
    os.chown(attacker.workspace / "git", NOBODY if attacker.user == "nobody" else 0, -1)
    limits = {"processes": None, "memory_bytes": None, "file_bytes": 1 << 20, "open_files": None}
    result = attacker.one("head -c 3M /dev/zero > git/big.bin; echo done", limits=limits)
    assert (attacker.workspace / "git/big.bin").stat().st_size == 1 << 20
    assert "done" in result.output


def test_memory_is_limited(attacker: Attacker) -> None:
    limits = {"processes": None, "memory_bytes": 256 << 20, "file_bytes": None, "open_files": None}
    grab = "x = bytearray(512 << 20); print('GOT')"
    result = attacker.one(f'python3 -c "{grab}"', limits=limits)
    assert "GOT" not in result.output and "MemoryError" in result.output, result.output


def test_process_count_is_limited(attacker: Attacker) -> None:
    limits = {"processes": 40, "memory_bytes": None, "file_bytes": None, "open_files": None}
    (attacker.workspace / "spawn.py").write_text(
        "import subprocess, time\nstarted = []\n"
        "for _ in range(120):\n"
        "    try:\n        started.append(subprocess.Popen(['sleep', '7.5']))\n"
        "    except OSError:\n        break\n"
        "print(len(started), flush=True)\ntime.sleep(1)\n"
    )
    result = attacker.one("python3 spawn.py", limits=limits, timeout_s=30)
    if attacker.user == "root":  # the kernel exempts root: the runner counts and stops it
        assert any("more than 40 processes" in note for note in result.notes), result
    else:  # RLIMIT_NPROC counts all of the user's processes: the runner adds those already
        # running when the command starts (this harness's own, a few), so allow that much
        assert int(result.output.split()[-1]) <= 40 + 8, result.output
    assert survivors("sleep\x007.5") == [], "processes outlived the command"
