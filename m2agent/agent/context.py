"""Keeping the conversation inside the model's context window.

Around 80% full, the middle of the task is compacted: the system prompt, the task, a short
account of the earlier steps, and the most recent steps verbatim (with their reasoning) stay.
The model is told how much context is left, in the newest message only, so the prompt's prefix
(and the server's prefix cache) stays stable. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Sequence

from m2agent.agent.messages import AssistantMessage, Message, ToolMessage, UserMessage

COMPACT_AT = 0.8
KEEP_RECENT_TURNS = 6


def needs_compaction(used_tokens: int, window_tokens: int) -> bool:
    return used_tokens >= COMPACT_AT * window_tokens


def context_note(used_tokens: int, window_tokens: int) -> str:
    left = max(0, window_tokens - used_tokens)
    return f"[context: {100 * used_tokens // max(1, window_tokens)}% used, ~{left} tokens left]"


def compact(messages: Sequence[Message], keep_turns: int = KEEP_RECENT_TURNS) -> list[Message]:
    """System + task + an account of the older steps + the last `keep_turns` assistant turns
    (each with all of its tool results, so every call stays answered)."""
    head = list(messages[:2])
    assistants = [i for i, m in enumerate(messages) if isinstance(m, AssistantMessage) and i >= 2]
    if len(assistants) <= keep_turns:
        return list(messages)
    split = assistants[-keep_turns]
    older = messages[2:split]
    summary = UserMessage("Earlier steps, compacted to save context:\n" + account(older))
    return [*head, summary, *messages[split:]]


def account(messages: Sequence[Message]) -> str:
    """One line per earlier tool call and its outcome, plus any user messages."""
    results = {m.call_id: m.content for m in messages if isinstance(m, ToolMessage)}
    lines = []
    for message in messages:
        if isinstance(message, UserMessage):
            lines.append(f"- user: {message.content[:300]}")
        if isinstance(message, AssistantMessage):
            for record in message.calls:
                args = json.dumps(record.call.arguments, ensure_ascii=False)
                outcome = results.get(record.id, "").strip().splitlines()[:1]
                result = outcome[0][:200] if outcome else "(no result)"
                lines.append(f"- {record.call.name}({args[:200]}) -> {result}")
    return "\n".join(lines) or "(nothing notable)"
