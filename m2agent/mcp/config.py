"""MCP server entries as users write them: `[mcp_servers.NAME]` in the user (or a trusted
project's) config.toml, and a project's `.mcp.json` in Claude Code's form. Validated here into
frozen `ServerSpec`s; reads no files and no environment (settings.py passes both in).

Project servers (from `.mcp.json`) start only once the user approved them for that project:
`ProjectApprovals` keeps, in the user's state directory, the fingerprint of each approved
entry, so an entry whose command, arguments, environment or URL changed asks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from m2agent.tools.files import atomic_write

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
DEFAULT_STARTUP_TIMEOUT_S = 30.0
DEFAULT_TOOL_TIMEOUT_S = 120.0
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Source = Literal["user", "project"]
Transport = Literal["stdio", "http"]


class ConfigError(ValueError):
    """An MCP server entry that cannot be used; the text names the file and the entry."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One MCP server the session may start."""

    name: str
    source: Source
    transport: Transport
    command: str | None = None  # stdio
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None  # streamable HTTP
    headers: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    allow_network: bool = False  # stdio servers run in the sandbox, network off unless this

    def fingerprint(self) -> str:
        """What a project approval is bound to: everything that decides what runs."""
        body = {
            "transport": self.transport,
            "program": self.command,
            "args": list(self.args),
            "env": dict(sorted(self.env.items())),
            "cwd": self.cwd,
            "url": self.url,
            "headers": dict(sorted(self.headers.items())),
            "allow_network": self.allow_network,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> str:
        """The command line or URL, for listings and approval prompts."""
        if self.transport == "http":
            sent = f" (headers: {', '.join(sorted(self.headers))})" if self.headers else ""
            return f"{self.url}{sent}"
        return " ".join([str(self.command), *self.args])


class _TomlEntry(BaseModel):
    """`[mcp_servers.NAME]` in config.toml (Codex CLI's keys, timeouts in seconds)."""

    model_config = ConfigDict(extra="forbid")
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    startup_timeout: float = Field(default=DEFAULT_STARTUP_TIMEOUT_S, gt=0)
    tool_timeout: float = Field(default=DEFAULT_TOOL_TIMEOUT_S, gt=0)
    allow_network: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> _TomlEntry:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a stdio server) or `url` (streamable HTTP)")
        return self


class _JsonEntry(BaseModel):
    """One entry of `.mcp.json`'s `mcpServers` (Claude Code's form)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["stdio", "http", "streamable-http", "sse"] | None = None
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_transport(self) -> _JsonEntry:
        if self.type == "sse":
            raise ValueError("the SSE transport is deprecated and not supported; use type http")
        if self.type in ("http", "streamable-http") and self.url is None:
            raise ValueError("an http server needs `url`")
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a stdio server) or `url` (streamable HTTP)")
        return self


class _JsonFile(BaseModel):
    model_config = ConfigDict(extra="allow")  # the file may carry other tools' keys
    mcpServers: dict[str, dict[str, Any]] = Field(default_factory=dict)


def parse_toml_servers(table: Any, where: str) -> tuple[ServerSpec, ...]:
    """`mcp_servers` from config.toml (`where` names the file in errors)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: mcp_servers must be a table of [mcp_servers.NAME] entries")
    specs = []
    for name, raw in table.items():
        _check_name(name, where)
        try:
            entry = _TomlEntry.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{where}: [mcp_servers.{name}]: {_problems(e)}") from None
        specs.append(
            ServerSpec(
                name=name,
                source="user",
                transport="stdio" if entry.command else "http",
                command=entry.command,
                args=tuple(entry.args),
                env=dict(entry.env),
                cwd=entry.cwd,
                url=entry.url,
                headers=dict(entry.headers),
                enabled=entry.enabled,
                startup_timeout_s=entry.startup_timeout,
                tool_timeout_s=entry.tool_timeout,
                allow_network=entry.allow_network,
            )
        )
    return tuple(specs)


def parse_mcp_json(text: str, where: str, env: Mapping[str, str]) -> tuple[ServerSpec, ...]:
    """A project's `.mcp.json`. `${VAR}` and `${VAR:-default}` in command, args, env, url and
    headers expand from `env`, as in Claude Code; an unset variable without default is an
    error naming it."""
    try:
        data = _JsonFile.model_validate(json.loads(text))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e})") from None
    except ValidationError as e:
        raise ConfigError(f"{where}: {_problems(e)}") from None
    specs = []
    for name, raw in data.mcpServers.items():
        _check_name(name, where)
        try:
            entry = _JsonEntry.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{where}: mcpServers.{name}: {_problems(e)}") from None

        def expand(value: str, name: str = name) -> str:
            return _expand(value, env, f"{where}: mcpServers.{name}")

        specs.append(
            ServerSpec(
                name=name,
                source="project",
                transport="stdio" if entry.command else "http",
                command=expand(entry.command) if entry.command else None,
                args=tuple(expand(a) for a in entry.args),
                env={k: expand(v) for k, v in entry.env.items()},
                cwd=expand(entry.cwd) if entry.cwd else None,
                url=expand(entry.url) if entry.url else None,
                headers={k: expand(v) for k, v in entry.headers.items()},
            )
        )
    return tuple(specs)


def merge_servers(
    user: tuple[ServerSpec, ...], project: tuple[ServerSpec, ...]
) -> tuple[ServerSpec, ...]:
    """User entries win over a project entry of the same name (the project cannot replace a
    server the user configured)."""
    names = {s.name for s in user}
    return user + tuple(s for s in project if s.name not in names)


class ProjectApprovals:
    """Which of a project's `.mcp.json` servers the user approved, by fingerprint; a JSON file
    in the user's state directory (never in the repository), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._approved: dict[str, str] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                approved = data["approved"]
                if not isinstance(approved, dict):
                    raise TypeError("approved is not an object")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{path}: unreadable MCP approvals file ({e})") from e
            self._approved = {str(k): str(v) for k, v in approved.items()}

    def is_approved(self, spec: ServerSpec) -> bool:
        return spec.source == "user" or self._approved.get(spec.name) == spec.fingerprint()

    def approve(self, specs: list[ServerSpec]) -> None:
        for spec in specs:
            self._approved[spec.name] = spec.fingerprint()
        self._save()

    def revoke(self, names: list[str]) -> None:
        for name in names:
            self._approved.pop(name, None)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"approved": self._approved}, indent=2) + "\n")


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{where}: MCP server name {name!r} must be 1-40 letters, digits, '_' or '-' "
            "(its tools are offered as mcp__NAME__TOOL)"
        )


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: ${{{name}}} is not set (write ${{{name}:-default}})")

    return _ENV_REFERENCE.sub(substitute, value)


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in error.errors()
    )
