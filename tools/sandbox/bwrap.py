"""The bubblewrap backend: policy -> bwrap argv (pure), and the probe that checks bwrap works
here, turning known failures into advice the user can act on. Falls back to Landlock +
seccomp (no namespaces needed) when bubblewrap cannot run."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from m2agent.tools.sandbox import landlock
from m2agent.tools.sandbox.policy import SandboxPolicy

SYSTEM_BWRAP = ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap")


def bwrap_argv(
    bwrap: str,
    policy: SandboxPolicy,
    command: list[str],
    cwd: Path,
    seccomp_fd: int | None = None,
) -> list[str]:
    """Read-only root, private /tmp, /run hidden but for what name resolution and the loader
    need, writable workspace with read-only protected folders, secrets hidden, every
    capability dropped (root included), all namespaces unshared (no network unless allowed),
    the seccomp filter read from `seccomp_fd`, dies with its parent, new session."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if os.path.isdir("/run"):
        argv += ["--tmpfs", "/run"]
        for path in needed_under_run():
            argv += ["--ro-bind", str(path), str(path)]
        argv += ["--remount-ro", "/run"]
    for path in policy.keep_visible:
        if not policy.workspace.is_relative_to(path):
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(policy.workspace), str(policy.workspace)]
    for path in policy.read_only_paths:
        if path.exists():
            argv += ["--ro-bind", str(path), str(path)]
    pinned: list[Path] = []  # a mount point cannot be renamed: nor can what holds a secret
    for path in policy.hidden:
        for folder in reversed(path.parents):
            inside = folder.is_relative_to(policy.workspace) and folder != policy.workspace
            if inside and folder not in pinned and folder.is_dir() and not folder.is_symlink():
                pinned.append(folder)
                argv += ["--bind", str(folder), str(folder)]
    for path in policy.hidden:
        private = path.is_relative_to("/tmp") or path.is_relative_to("/run")
        if private and not path.is_relative_to(policy.workspace):
            continue  # not visible anyway
        if path.is_dir() and not path.is_symlink():
            argv += ["--tmpfs", str(path), "--remount-ro", str(path)]
        else:
            argv += ["--ro-bind", "/dev/null", str(path)]
    argv += ["--unshare-all", "--cap-drop", "ALL"]
    if policy.allow_network:
        argv += ["--share-net"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--die-with-parent", "--new-session", "--chdir", str(cwd), "--", *command]
    return argv


def needed_under_run() -> list[Path]:
    """What must stay visible in /run: the targets of /etc's name-resolution and loader files
    (systemd-resolved's stub resolv.conf lives there) and PATH entries (NixOS)."""
    wanted = [Path(p) for p in ("/etc/resolv.conf", "/etc/hosts", "/etc/ld.so.cache")]
    wanted += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    found: list[Path] = []
    for path in wanted:
        real = Path(os.path.realpath(path))
        if real.is_relative_to("/run") and real.exists() and real not in found:
            found.append(real)
    return found


@dataclass(frozen=True, slots=True)
class Probe:
    backend: str | None  # "bwrap", "landlock", or None when no sandbox works
    binary: str | None
    diagnosis: str  # what was found, in words
    advice: str  # what to do about it ("" when all is well)

    @property
    def works(self) -> bool:
        return self.backend is not None


_ADVICE = (
    (
        ("setting up uid map: Permission denied", "loopback: Failed RTM_NEWADDR"),
        "Ubuntu 24.04's AppArmor blocks unprivileged user namespaces. Narrowest fix: install "
        "the distro's bwrap-userns-restrict profile (apparmor-profiles package); or give "
        "/usr/bin/bwrap an unconfined profile; or `sudo sysctl "
        "kernel.apparmor_restrict_unprivileged_userns=0`.",
    ),
    (
        ("No permissions to create new namespace", "Operation not permitted"),
        "Namespaces are blocked, typically inside Docker's default seccomp profile: run the "
        "container with a profile that allows unshare/clone (or --privileged), or run m2agent "
        "outside it, or pass --sandbox off inside an already isolated container.",
    ),
    (
        ("nesting depth", "max_user_namespaces", "max_"),
        "The kernel's namespace limit is reached: raise /proc/sys/user/max_user_namespaces "
        "(sysctl user.max_user_namespaces=15000).",
    ),
)


def find_bwrap() -> str | None:
    """The system bwrap only (never one found in a workspace on PATH)."""
    for candidate in SYSTEM_BWRAP:
        if Path(candidate).is_file():
            return candidate
    return None


@functools.cache
def probe() -> Probe:
    """The best sandbox that works here, tried once per process: bubblewrap, else Landlock."""
    found = probe_bwrap()
    if found.works:
        return found
    abi = landlock.abi_version()
    if abi >= 1:
        network = "network off by seccomp" + (" and Landlock" if abi >= 4 else "")
        return Probe(
            "landlock",
            None,
            f"{found.diagnosis}; using Landlock ABI {abi} + seccomp instead ({network}; no PID "
            "namespace, and new top-level entries in the workspace cannot be created)",
            found.advice,
        )
    return found


def probe_bwrap() -> Probe:
    """Try bubblewrap."""
    binary = find_bwrap()
    if binary is None:
        hint = "apt-get install bubblewrap (Debian/Ubuntu), dnf install bubblewrap (Fedora)"
        found = shutil.which("bwrap")
        extra = f" (a bwrap at {found} is not a system path and is not trusted)" if found else ""
        return Probe(None, None, f"bubblewrap is not installed{extra}", f"Install it: {hint}.")
    argv = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
            "--die-with-parent", "--new-session", "--", "/bin/true"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Probe(None, binary, f"bubblewrap did not run: {e}", "Check the bwrap binary.")
    if done.returncode == 0:
        return Probe("bwrap", binary, f"bubblewrap works ({binary})", "")
    error = done.stderr.strip() or f"exit code {done.returncode}"
    for needles, advice in _ADVICE:
        if any(n in error for n in needles):
            return Probe(None, binary, f"bubblewrap fails: {error}", advice)
    return Probe(None, binary, f"bubblewrap fails: {error}", "See `m2agent doctor`.")
