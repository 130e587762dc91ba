"""The agent side's errors: the text is what the user sees, the exit code what scripts see."""

from __future__ import annotations


class M2AgentError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(M2AgentError):
    exit_code = 2


class SandboxError(M2AgentError):
    exit_code = 3


class BackendError(M2AgentError):
    """The model or its endpoint failed (after retries)."""

    exit_code = 4
