"""Pydantic models of the OpenAI wire format the server accepts, and its error body.

Unknown fields are ignored, as vLLM does: the route logs them and names them in the
`X-M2Agent-Ignored-Fields` response header (see `body.py`). Fields whose meaning we cannot
honour and that would change the result (`n > 1`, `logprobs`, penalties) are clear 400s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, type and the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        """The same error in the Anthropic Messages API's shape."""
        kind = ANTHROPIC_ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else None)
        return {"type": "error", "error": {"type": kind or self.type, "message": self.message}}


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "invalid_request_error",
    503: "overloaded_error",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(BaseModel):
    """Fields shared by chat and completions requests."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    # Accepted and ignored: they do not change generation.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        return value

    @property
    def response_kind(self) -> str:
        """The `response_format` type this request asks for ("text" when none)."""
        return "text"

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def reject_unsupported(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.n != 1, "n", "only n=1 is supported"),
            (self.presence_penalty != 0, "presence_penalty", "presence_penalty is not supported"),
            (
                self.frequency_penalty != 0,
                "frequency_penalty",
                "frequency_penalty is not supported",
            ),
            (
                self.repetition_penalty != 1,
                "repetition_penalty",
                "repetition_penalty is not supported",
            ),
            (bool(self.logprobs), "logprobs", "logprobs are not supported"),
            (bool(self.logit_bias), "logit_bias", "logit_bias is not supported"),
            (any(s == "" for s in self.stop_list()), "stop", "stop strings must not be empty"),
        ]
        for failed, param, message in checks:
            if failed:
                raise APIError(400, message, param=param, code="unsupported_parameter")


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None  # accepted; M2 always reasons
    top_logprobs: int | None = None
    add_generation_prompt: bool = True

    @property
    def response_kind(self) -> str:
        return (self.response_format or {}).get("type") or "text"

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        kind = (self.response_format or {}).get("type")
        if kind not in (None, "text", "json_object"):
            raise APIError(
                400,
                f"response_format {kind!r} is not supported; use {{'type': 'json_object'}} "
                "(JSON mode: the answer is one JSON object) or {'type': 'text'}",
                param="response_format",
                code="unsupported_parameter",
            )
        if self.top_logprobs:
            raise APIError(400, "logprobs are not supported", param="top_logprobs")
        if kind == "json_object" and self.tool_choice not in (None, "auto", "none"):
            raise APIError(
                400,
                "response_format json_object cannot be combined with a required tool call",
                param="response_format",
            )
        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise APIError(
                400, "max_completion_tokens must be at least 1", param="max_completion_tokens"
            )


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        if self.suffix:
            raise APIError(
                400, "suffix is not supported", param="suffix", code="unsupported_parameter"
            )
        if self.best_of not in (None, 1):
            raise APIError(
                400, "best_of is not supported", param="best_of", code="unsupported_parameter"
            )

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return prompt  # type: ignore[return-value]
        if len(prompt) == 1 and isinstance(prompt[0], str | list):
            return prompt[0]
        raise APIError(400, "exactly one prompt per request is supported", param="prompt")


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = False


Role = Literal["system", "developer", "user", "assistant", "tool"]
