"""Settings: the only reader of environment variables and config files.

Precedence: flags > environment (M2AGENT_*, then OPENAI_*/ANTHROPIC_*) > project
`.m2agent/config.toml` > user `~/.config/m2agent/config.toml` > defaults. A project config
cannot change endpoints, keys or the sandbox unless the user trusts the folder (listed under
`trusted_projects` in the user config): cloning a repository must not redirect your keys.
Hooks and MCP servers in an untrusted project's config.toml are skipped (with a warning);
a project's `.mcp.json` servers are read here but start only once the user approves them
(`m2agent.mcp.config.ProjectApprovals`).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from m2agent.errors import UsageError
from m2agent.hooks import HookConfigError, HooksConfig, merge_hooks, parse_hooks
from m2agent.mcp.config import ConfigError, ServerSpec, merge_servers, parse_mcp_json
from m2agent.mcp.config import parse_toml_servers as parse_mcp_servers

if TYPE_CHECKING:
    from m2agent.tools.sandbox.policy import SandboxPolicy

Api = Literal["openai", "completions", "anthropic"]
# What only the user's own config (or a trusted project's) may set: where keys go, how far the
# agent may act on its own, what the sandbox lets through, and how long it may run.
SENSITIVE = frozenset(
    {"endpoint", "api_key", "auth_token", "api", "sandbox", "allow_network", "github_token",
     "github_api_url", "approval_mode", "state_dir", "max_steps", "max_minutes", "max_tokens",
     "max_total_tokens", "allow_read", "env_allow", "limit_processes", "limit_memory_mb",
     "limit_file_mb", "limit_open_files"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settings:
    endpoint: str | None = None
    api: Api = "openai"
    model: str | None = None
    tp: int = 1  # GPUs the embedded engine splits the model over (tensor parallelism)
    api_key: str | None = None
    sandbox: Literal["auto", "bwrap", "landlock", "off"] = "auto"
    allow_network: bool = False
    approval_mode: Literal["read-only", "ask", "auto-edit", "auto"] = "ask"
    max_steps: int = 50
    max_minutes: float = 30.0
    temperature: float | None = None
    max_tokens: int = 8192  # per model turn
    max_total_tokens: int | None = None  # generated over the whole task
    github_token: str | None = None
    github_api_url: str = "https://api.github.com"
    github_repository: str | None = None  # owner/name (GITHUB_REPOSITORY in Actions)
    github_event_path: str | None = None  # the Actions event payload (fork detection)
    state_dir: Path = Path("~/.local/state/m2agent")
    config_dir: Path = Path("~/.config/m2agent")  # the user's config.toml and AGENTS.md (derived)
    # The sandbox: paths hidden from commands on top of the built-in secrets, paths made
    # readable again, environment variables kept although their names look secret, and
    # per-command limits (0: none).
    deny_read: tuple[str, ...] = ()
    allow_read: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    limit_processes: int = 1024
    limit_memory_mb: int = 8192
    limit_file_mb: int = 4096
    limit_open_files: int = 4096
    auth_token: str | None = None  # ANTHROPIC_AUTH_TOKEN: sent as a bearer token
    mcp_servers: tuple[ServerSpec, ...] = ()  # user, trusted project, then .mcp.json entries
    hooks: HooksConfig = field(default_factory=HooksConfig)
    warnings: tuple[str, ...] = ()  # for the user: what was ignored and why
    # Where Hugging Face keeps downloads (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub):
    # with no endpoint, the embedded engine looks for MiniMax-M2 weights there.
    hf_hub_cache: Path = Path("~/.cache/huggingface/hub")

    def project_dir(self, workspace: Path) -> Path:
        """Where this project's snapshots, sessions and approvals live (never in the repo)."""
        digest = hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()[:16]
        return self.state_dir / "projects" / f"{workspace.name}-{digest}"

    def sandbox_policy(self, workspace: Path) -> SandboxPolicy:
        """What commands may do in `workspace`: m2agent's own config and state are hidden from
        them too (the config may hold `api_key`; the state holds sessions and snapshots)."""
        from m2agent.tools.sandbox.policy import Limits, SandboxPolicy

        mib = 1 << 20
        limits = Limits(
            processes=self.limit_processes or None,
            memory_bytes=self.limit_memory_mb * mib or None,
            file_bytes=self.limit_file_mb * mib or None,
            open_files=self.limit_open_files or None,
        )
        return SandboxPolicy.for_workspace(
            workspace,
            allow_network=self.allow_network,
            deny_read=self.deny_read,
            allow_read=self.allow_read,
            env_allow=self.env_allow,
            limits=limits,
            own_dirs=(self.config_dir, self.state_dir),
        )


def load_settings(
    workspace: Path, flags: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if env is None else env
    home = Path(env.get("HOME", "~")).expanduser()
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    state_home = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
    user_file = config_home / "m2agent" / "config.toml"
    project_file = workspace / ".m2agent" / "config.toml"
    user = _read_toml(user_file)
    trusted = {str(Path(p).expanduser().resolve()) for p in user.pop("trusted_projects", [])}
    project = _read_toml(project_file)
    is_trusted = str(workspace.resolve()) in trusted
    warnings: list[str] = []
    if not is_trusted:
        blocked = sorted(SENSITIVE & set(project))
        if blocked:
            raise UsageError(
                f"{workspace / '.m2agent/config.toml'} sets {', '.join(blocked)}, which only a "
                f"trusted project may; add {str(workspace.resolve())!r} to trusted_projects in "
                f"{config_home / 'm2agent/config.toml'} if you trust it"
            )
        skipped = [key for key in ("hooks", "mcp_servers") if project.pop(key, None) is not None]
        if skipped:
            warnings.append(
                f"{project_file}: {' and '.join(skipped)} ignored: the project is not trusted "
                f"(add {str(workspace.resolve())!r} to trusted_projects in {user_file})"
            )
    try:
        hooks = merge_hooks(
            parse_hooks(user.pop("hooks", {}), str(user_file)),
            parse_hooks(project.pop("hooks", {}), str(project_file)),
        )
        servers = merge_servers(
            parse_mcp_servers(user.pop("mcp_servers", {}), str(user_file)),
            tuple(
                replace(s, source="project")
                for s in parse_mcp_servers(project.pop("mcp_servers", {}), str(project_file))
            ),
        )
    except (HookConfigError, ConfigError) as e:
        raise UsageError(str(e)) from None
    mcp_json = workspace / ".mcp.json"
    if mcp_json.is_file():  # the repository's file: a broken one must not stop the agent
        try:
            text = mcp_json.read_text(encoding="utf-8", errors="replace")
            servers = merge_servers(servers, parse_mcp_json(text, str(mcp_json), env))
        except (OSError, ConfigError) as e:
            warnings.append(f"project MCP servers ignored: {e}")
    hf_home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or home / ".cache")
                   / "huggingface")  # fmt: skip
    values: dict[str, Any] = {
        "state_dir": state_home / "m2agent",
        "config_dir": config_home / "m2agent",
        "hooks": hooks,
        "mcp_servers": servers,
        "warnings": tuple(warnings),
        "hf_hub_cache": Path(env.get("HF_HUB_CACHE") or hf_home / "hub"),
    }
    if "config_dir" in user or "config_dir" in project:
        raise UsageError("config_dir is where config.toml is found; it cannot be set in one")
    for layer in (user, project, _from_env(env), {k: v for k, v in flags.items() if v is not None}):
        values.update(layer)
    return replace(_build(values), config_dir=config_home / "m2agent")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("ANTHROPIC_BASE_URL"):
        out.update(endpoint=env["ANTHROPIC_BASE_URL"], api="anthropic")
        if env.get("ANTHROPIC_API_KEY"):
            out["api_key"] = env["ANTHROPIC_API_KEY"]
        if env.get("ANTHROPIC_AUTH_TOKEN"):  # Claude Code's name for a bearer token
            out["auth_token"] = env["ANTHROPIC_AUTH_TOKEN"]
        if env.get("ANTHROPIC_MODEL"):
            out["model"] = env["ANTHROPIC_MODEL"]
    for name, key in (("OPENAI_BASE_URL", "endpoint"), ("OPENAI_API_KEY", "api_key")):
        if env.get(name):
            out[key] = env[name]
    for name, key in (
        ("GITHUB_TOKEN", "github_token"),
        ("GITHUB_API_URL", "github_api_url"),
        ("GITHUB_REPOSITORY", "github_repository"),
        ("GITHUB_EVENT_PATH", "github_event_path"),
        ("M2AGENT_ENDPOINT", "endpoint"),
        ("M2AGENT_API_KEY", "api_key"),
        ("M2AGENT_MODEL", "model"),
        ("M2AGENT_API", "api"),
        ("M2AGENT_TP", "tp"),
    ):
        if env.get(name):
            out[key] = env[name]
    if "tp" in out:
        try:
            out["tp"] = int(out["tp"])
        except ValueError:
            raise UsageError(f"M2AGENT_TP must be a positive integer, got {out['tp']!r}") from None
    return out


def _read_toml(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{file}: not valid TOML ({e})") from e


def check_endpoint(url: str) -> None:
    """UsageError unless `url` is an http(s) URL with a host (checked before any request)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"endpoint {url!r} is not an http(s) URL; write it in full, like "
            "http://127.0.0.1:8000/v1"
        )


def _build(values: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(
            f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    paths = ("state_dir", "config_dir", "hf_hub_cache")
    settings = replace(Settings(), **{k: v for k, v in values.items() if k not in paths})
    checks = [
        (
            settings.api in ("openai", "completions", "anthropic"),
            f"api must be openai, completions or anthropic, got {settings.api!r}",
        ),
        (
            settings.sandbox in ("auto", "bwrap", "landlock", "off"),
            f"unknown sandbox {settings.sandbox!r}",
        ),
        (
            isinstance(settings.max_steps, int) and settings.max_steps > 0,
            "max_steps must be a positive integer",
        ),
        (settings.max_minutes > 0, "max_minutes must be positive"),
        (
            isinstance(settings.tp, int) and not isinstance(settings.tp, bool) and settings.tp > 0,
            f"tp must be a positive integer (GPUs for the embedded engine), got {settings.tp!r}",
        ),
    ]
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("deny_read", "allow_read", "env_allow"):
        value = getattr(settings, name)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{name} must be a list of strings, got {value!r}")
        lists[name] = tuple(value)
    settings = replace(
        settings,
        deny_read=lists["deny_read"],
        allow_read=lists["allow_read"],
        env_allow=lists["env_allow"],
    )
    for name in ("limit_processes", "limit_memory_mb", "limit_file_mb", "limit_open_files"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UsageError(f"{name} must be a whole number >= 0 (0: no limit), got {value!r}")
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    if settings.endpoint:
        check_endpoint(settings.endpoint)
    return replace(
        settings,
        state_dir=Path(values["state_dir"]).expanduser(),
        config_dir=Path(values["config_dir"]).expanduser(),
        hf_hub_cache=Path(values["hf_hub_cache"]).expanduser(),
    )
