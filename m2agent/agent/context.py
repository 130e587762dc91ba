"""Keeping the conversation inside the model's context window.

Around 80% full, the middle of the task is compacted: the system prompt, the task, a short
account of the earlier steps, and the most recent steps verbatim (with their reasoning) stay.
The model is told how much context is left, in the newest message only, so the prompt's prefix
(and the server's prefix cache) stays stable. Pure functions."""

from __future__ import annotations

import json
from typing import Any

COMPACT_AT = 0.8
KEEP_RECENT_TURNS = 6


def needs_compaction(used_tokens: int, window_tokens: int) -> bool:
    return used_tokens >= COMPACT_AT * window_tokens


def context_note(used_tokens: int, window_tokens: int) -> str:
    left = max(0, window_tokens - used_tokens)
    return f"[context: {100 * used_tokens // max(1, window_tokens)}% used, ~{left} tokens left]"


def compact(
    messages: list[dict[str, Any]], keep_turns: int = KEEP_RECENT_TURNS
) -> list[dict[str, Any]]:
    """System + task + an account of the older steps + the last `keep_turns` assistant turns
    (each with all of its tool results, so every call stays answered)."""
    head = [m for m in messages[:2]]
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i >= 2]
    if len(assistants) <= keep_turns:
        return list(messages)
    split = assistants[-keep_turns]
    older = messages[2:split]
    summary = {
        "role": "user",
        "content": "Earlier steps, compacted to save context:\n" + account(older),
    }
    return [*head, summary, *messages[split:]]


def account(messages: list[dict[str, Any]]) -> str:
    """One line per earlier tool call and its outcome, plus any user messages."""
    results = {
        m.get("tool_call_id"): str(m.get("content", ""))
        for m in messages
        if m.get("role") == "tool"
    }
    lines = []
    for message in messages:
        if message.get("role") == "user":
            lines.append(f"- user: {str(message.get('content', ''))[:300]}")
        for call in message.get("tool_calls") or []:
            fn = call.get("function", {})
            args = fn.get("arguments", "")
            args = args if isinstance(args, str) else json.dumps(args)
            outcome = results.get(call.get("id"), "").strip().splitlines()[:1]
            result = outcome[0][:200] if outcome else "(no result)"
            lines.append(f"- {fn.get('name')}({args[:200]}) -> {result}")
    return "\n".join(lines) or "(nothing notable)"
