"""What a sandboxed command may do: write only the workspace (minus protected folders), reach
the network only when allowed, see a scrubbed environment."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SECRET_PATTERNS = (
    "*_API_KEY",
    "*_TOKEN",
    "*_SECRET",
    "*_SECRET_*",
    "*PASSWORD*",
    "AWS_*",
    "OPENAI_*",
    "ANTHROPIC_*",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "M2AGENT_API_KEY",
    "HF_TOKEN",
    "SSH_AUTH_SOCK",
)


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    workspace: Path
    read_only_paths: tuple[Path, ...] = ()  # inside the workspace, e.g. .git, .m2agent
    allow_network: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Read-only paths under /tmp that must stay visible over the private /tmp: the Python
    # environment and PATH entries living there (CI checkouts often do).
    keep_visible: tuple[Path, ...] = ()

    @classmethod
    def for_workspace(cls, workspace: Path, *, allow_network: bool = False) -> SandboxPolicy:
        root = workspace.resolve()
        protected = tuple(root / name for name in (".git", ".m2agent"))
        return cls(root, protected, allow_network, keep_visible=_tools_under_tmp())


def _tools_under_tmp() -> tuple[Path, ...]:
    candidates = [Path(sys.prefix), Path(sys.base_prefix)]
    candidates += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    found: list[Path] = []
    for path in candidates:
        resolved = path.resolve()
        if resolved.is_relative_to("/tmp") and resolved.exists() and resolved not in found:
            found.append(resolved)
    return tuple(found)


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus anything that looks like a credential."""
    return {
        key: value
        for key, value in env.items()
        if not any(fnmatch.fnmatchcase(key.upper(), p) for p in SECRET_PATTERNS)
    }


def command_environment(
    policy: SandboxPolicy, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = scrub_environment(os.environ if base is None else base)
    env.update(policy.extra_env)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TMPDIR"] = "/tmp"
    return env
