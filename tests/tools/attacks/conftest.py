"""The attack suite: the sandbox and the file tools attacked as a hostile repository and a hostile
model would, for real (real bubblewrap, real Landlock + seccomp, real processes, real sockets).

Threat model. The attacker controls the workspace's content (a cloned repository: its files,
an `m2agent/` package, `sitecustomize.py`, `.m2agent/config.toml`) and every command and file
operation the model asks for. The attacker wins if a command or a file tool can:
- run code outside the sandbox (launcher hijack, finding 1);
- use a privilege (capabilities, /proc/PID/environ of the agent, signals to host processes,
  raw or netlink sockets, 32-bit or x32 syscalls, unix sockets outside the workspace: 2, 3);
- leave processes running after its command returned, or fork without limit (4, 10);
- write outside the workspace, through a swapped symlink too, or into .git/.m2agent (5, 9);
- read the user's secrets: files (~/.ssh, keys, m2agent's config) or environment (7, 8);
- make the user's next `git status` or m2agent run execute its code (9);
- exhaust memory or disk (10);
- corrupt a file it edits: encoding, BOM, line endings, mode, owner (11-13).

Each test runs as root and as an unprivileged user (uid 65534 via setpriv) where that differs,
on both backends where it applies; the Landlock backend is forced with `CommandRunner(policy,
"landlock")`. A variant that cannot run here is skipped with the reason.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BACKENDS, USERS, Attacker, make_attacker


@pytest.fixture
def public() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp folders are private to root), outside
    /tmp (which bubblewrap replaces), as a home folder would be."""
    folder = Path(tempfile.mkdtemp(prefix="m2agent-attack-", dir="/var/tmp"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=[(b, u) for b in BACKENDS for u in USERS], ids=lambda p: f"{p[0]}-{p[1]}")
def attacker(request: pytest.FixtureRequest, public: Path) -> Attacker:
    backend, user = request.param
    return make_attacker(backend, user, public)


@pytest.fixture(params=BACKENDS)
def root_attacker(request: pytest.FixtureRequest, public: Path) -> Attacker:
    return make_attacker(request.param, "root", public)
