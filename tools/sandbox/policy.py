"""What a sandboxed command may do: write only the workspace (minus protected folders), read
everything but the user's secrets, reach the network only when allowed, see an environment
without credentials, within resource limits."""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-command resource limits (rlimits, soft = hard, inherited by every child). None: no
    limit. `processes` counts on top of what the user already runs (RLIMIT_NPROC is per user,
    and the kernel never applies it to root)."""

    processes: int | None = 1024
    memory_bytes: int | None = 8 << 30  # RLIMIT_DATA: heap and private writable mappings
    file_bytes: int | None = 4 << 30  # RLIMIT_FSIZE: the largest file a command may write
    open_files: int | None = 4096  # RLIMIT_NOFILE


DEFAULT_LIMITS = Limits()
PROTECTED_NAMES = (".git", ".m2agent")

# Hidden from every command by default, relative to $HOME (then the absolute ones).
SECRET_HOME_PATHS = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker/config.json",
    ".netrc", ".git-credentials", ".npmrc", ".pypirc", ".config/gh", ".cargo/credentials",
    ".cargo/credentials.toml",
)  # fmt: skip
SECRET_SYSTEM_PATHS = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")

# An environment variable is a credential when a word of its name is one of these...
SECRET_WORDS = frozenset(
    {"KEY", "KEYS", "APIKEY", "TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWD",
     "PASS", "PAT", "AUTH", "CREDENTIAL", "CREDENTIALS", "PRIVATE", "COOKIE"}
)  # fmt: skip
# ...or it matches one of these (whole families of provider settings)...
SECRET_PATTERNS = ("AWS_*", "OPENAI_*", "ANTHROPIC_*", "AZURE_*", "M2AGENT_*")
# ...or its value is a URL carrying a user name or password (postgres://user:pw@host).
_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]+@")
_WORD = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    workspace: Path
    read_only_paths: tuple[Path, ...] = ()  # inside the workspace, e.g. .git, .m2agent
    allow_network: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Read-only paths under /tmp that must stay visible over the private /tmp: the Python
    # environment and PATH entries living there (CI checkouts often do).
    keep_visible: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()  # unreadable to commands (secrets), resolved, existing
    env_allow: tuple[str, ...] = ()  # names (or fnmatch patterns) kept although they look secret
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def for_workspace(
        cls,
        workspace: Path,
        *,
        allow_network: bool = False,
        deny_read: Iterable[str | Path] = (),
        allow_read: Iterable[str | Path] = (),
        env_allow: Iterable[str] = (),
        limits: Limits = DEFAULT_LIMITS,
        own_dirs: Iterable[Path] = (),
    ) -> SandboxPolicy:
        """`deny_read` adds to the default secrets, `allow_read` makes paths readable again
        (also single files inside a hidden folder); `own_dirs` are m2agent's config and state
        folders, hidden as well."""
        root = workspace.resolve()
        protected = tuple(root / name for name in PROTECTED_NAMES)
        hidden = hidden_paths(root, [*default_secrets(), *own_dirs, *deny_read], allow_read)
        return cls(
            root,
            protected,
            allow_network,
            keep_visible=_tools_under_tmp(),
            hidden=hidden,
            env_allow=tuple(env_allow),
            limits=limits,
        )


def default_secrets(home: Path | None = None) -> list[Path]:
    home = home or Path(os.path.expanduser("~"))
    return [home / p for p in SECRET_HOME_PATHS] + [Path(p) for p in SECRET_SYSTEM_PATHS]


def hidden_paths(
    workspace: Path, deny: Iterable[str | Path], allow: Iterable[str | Path]
) -> tuple[Path, ...]:
    """The existing paths to hide, resolved: `deny` minus `allow`. Allowing a path inside a
    hidden folder hides that folder's other entries instead. A hidden path that contains the
    workspace is not hidden (the workspace must stay readable)."""
    allowed = [_resolve(p) for p in allow]
    todo = [_resolve(p) for p in deny]
    hidden: list[Path] = []
    while todo:
        path = todo.pop()
        if not os.path.lexists(path) or path in hidden:
            continue
        if workspace.is_relative_to(path) or any(path.is_relative_to(a) for a in allowed):
            continue
        if any(a.is_relative_to(path) for a in allowed) and path.is_dir():
            todo.extend(path.iterdir())  # split the folder around what is allowed
            continue
        hidden.append(path)
    return tuple(sorted(hidden))


def _resolve(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _tools_under_tmp() -> tuple[Path, ...]:
    candidates = [Path(sys.prefix), Path(sys.base_prefix)]
    candidates += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    found: list[Path] = []
    for path in candidates:
        resolved = path.resolve()
        if resolved.is_relative_to("/tmp") and resolved.exists() and resolved not in found:
            found.append(resolved)
    return tuple(found)


def looks_secret(name: str, value: str) -> bool:
    """A credential by its name's words (KEY, TOKEN, SECRET, PASSWORD, PAT, AUTH, ...), a
    provider family (AWS_*, OPENAI_*, ...), or a value with a URL's user:password@."""
    upper = name.upper()
    if any(word in SECRET_WORDS for word in _WORD.findall(upper)):
        return True
    if any(fnmatch.fnmatchcase(upper, p) for p in SECRET_PATTERNS):
        return True
    return bool(_URL_USERINFO.search(value))


def scrub_environment(env: Mapping[str, str], allow: Iterable[str] = ()) -> dict[str, str]:
    """The environment minus anything that looks like a credential, except names in `allow`
    (exact names or fnmatch patterns, case-sensitive)."""
    allowed = tuple(allow)
    return {
        key: value
        for key, value in env.items()
        if any(fnmatch.fnmatchcase(key, a) for a in allowed) or not looks_secret(key, value)
    }


def command_environment(
    policy: SandboxPolicy, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = scrub_environment(os.environ if base is None else base, policy.env_allow)
    env.update(policy.extra_env)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TMPDIR"] = "/tmp"
    return env
