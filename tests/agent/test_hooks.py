"""Hooks run as real bash commands with JSON on stdin, in Claude Code's exit-code and JSON
output semantics."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from m2agent.hooks import HookConfigError, HookRunner, merge_hooks, parse_hooks


def runner(tmp_path: Path, table: Mapping[str, object]) -> HookRunner:
    return HookRunner(
        parse_hooks(table, "config.toml"),
        session_id="s-1",
        transcript_path=tmp_path / "t.jsonl",
        cwd=tmp_path,
        permission_mode="ask",
    )


def hook(command: str, matcher: str = "", timeout: float = 10) -> list[dict[str, object]]:
    return [
        {"matcher": matcher, "hooks": [{"type": "command", "command": command, "timeout": timeout}]}
    ]


def test_the_command_gets_the_event_as_json_on_stdin(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    hooks = runner(
        tmp_path, {"PostToolUse": hook(f"cat > {seen}; echo $CLAUDE_PROJECT_DIR >> {seen}.dir")}
    )
    outcome = hooks.run(
        "PostToolUse",
        {"tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_response": {"output": "a"}},
        "Bash",
    )
    assert not outcome.blocked
    body = json.loads(seen.read_text())
    assert body == {
        "session_id": "s-1",
        "transcript_path": str(tmp_path / "t.jsonl"),
        "cwd": str(tmp_path),
        "hook_event_name": "PostToolUse",
        "permission_mode": "ask",
        "tool_name": "Bash",
        "tool_input": {"command": "ls"},
        "tool_response": {"output": "a"},
    }
    assert Path(f"{seen}.dir").read_text().strip() == str(tmp_path)


def test_exit_2_blocks_with_stderr_as_the_reason(tmp_path: Path) -> None:
    script = (
        "jq -r .tool_input.command | grep -q '^rm ' && { echo 'no rm here' >&2; exit 2; }; exit 0"
    )
    script = script.replace(
        "jq -r .tool_input.command",
        'python3 -c \'import json,sys; print(json.load(sys.stdin)["tool_input"]["command"])\'',
    )
    hooks = runner(tmp_path, {"PreToolUse": hook(script, matcher="Bash")})
    blocked = hooks.run(
        "PreToolUse", {"tool_name": "Bash", "tool_input": {"command": "rm -rf x"}}, "Bash"
    )
    assert blocked.blocked and blocked.permission == "deny" and blocked.reason == "no rm here"
    fine = hooks.run("PreToolUse", {"tool_name": "Bash", "tool_input": {"command": "ls"}}, "Bash")
    assert not fine.blocked and fine.permission is None


def test_matchers_are_tool_names_or_regexes(tmp_path: Path) -> None:
    table = {
        "PreToolUse": [
            {
                "matcher": "Edit|Write",
                "hooks": [{"type": "command", "command": "echo e >&2; exit 2"}],
            },
            {
                "matcher": "mcp__gh__.*",
                "hooks": [{"type": "command", "command": "echo m >&2; exit 2"}],
            },
            {"matcher": "*", "hooks": [{"type": "command", "command": "exit 0"}]},
        ]
    }
    hooks = runner(tmp_path, table)
    assert hooks.run("PreToolUse", {}, "Write").reason == "e"
    assert hooks.run("PreToolUse", {}, "mcp__gh__create_issue").reason == "m"
    assert not hooks.run("PreToolUse", {}, "WriteFile").blocked  # full match only
    assert not hooks.run("PreToolUse", {}, "Bash").blocked


def test_json_permission_decisions_strictest_wins(tmp_path: Path) -> None:
    def decide(decision: str) -> str:
        out = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": decision,
                                      "permissionDecisionReason": f"said {decision}",
                                      "additionalContext": f"ctx {decision}"}}  # fmt: skip
        return f"echo '{json.dumps(out)}'"

    allow = runner(tmp_path, {"PreToolUse": hook(decide("allow"))}).run("PreToolUse", {}, "Bash")
    assert allow.permission == "allow" and not allow.blocked and allow.context == ("ctx allow",)
    table = {"PreToolUse": hook(decide("allow")) + hook(decide("ask")) + hook(decide("deny"))}
    both = runner(tmp_path, table).run("PreToolUse", {}, "Bash")
    assert both.permission == "deny" and both.blocked and "said deny" in both.reason
    legacy = runner(tmp_path, {"PreToolUse": hook("""echo '{"decision": "approve"}'""")})
    assert legacy.run("PreToolUse", {}, "Bash").permission == "allow"


def test_json_continue_false_system_message_and_updated_input(tmp_path: Path) -> None:
    out = {"continue": False, "stopReason": "enough", "systemMessage": "hello user",
           "hookSpecificOutput": {"updatedInput": {"command": "ls -la"}}}  # fmt: skip
    outcome = runner(tmp_path, {"PreToolUse": hook(f"echo '{json.dumps(out)}'")}).run(
        "PreToolUse", {}, "Bash"
    )
    assert outcome.stop and outcome.stop_reason == "enough"
    assert outcome.messages == ("hello user",)
    assert outcome.updated_input == {"command": "ls -la"}


def test_plain_stdout_is_context_for_prompt_and_session_start_only(tmp_path: Path) -> None:
    table = {"UserPromptSubmit": hook("echo 'branch: main'"), "PostToolUse": hook("echo noise")}
    hooks = runner(tmp_path, table)
    assert hooks.run("UserPromptSubmit", {"prompt": "hi"}).context == ("branch: main",)
    assert hooks.run("PostToolUse", {}, "Bash").context == ()


def test_failures_and_timeouts_are_warnings_not_blocks(tmp_path: Path) -> None:
    hooks = runner(
        tmp_path, {"Stop": hook("echo broken >&2; exit 1") + hook("sleep 30", timeout=0.5)}
    )
    started = time.monotonic()
    outcome = hooks.run("Stop", {"stop_hook_active": False})
    assert time.monotonic() - started < 10
    assert not outcome.blocked
    assert any("failed (exit 1): broken" in m for m in outcome.messages)
    assert any("timed out after 0.5s" in m for m in outcome.messages)


def test_no_hooks_no_processes(tmp_path: Path) -> None:
    assert runner(tmp_path, {}).run("Stop", {}).blocked is False


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"BeforeEverything": []}, "unknown hook event 'BeforeEverything'"),
        ({"Stop": {"matcher": ""}}, r"must be an array: \[\[hooks.Stop\]\]"),
        ({"Stop": [{"hooks": [{"type": "http", "command": "x"}]}]}, r"hooks.Stop\[0\]"),
        ({"Stop": [{"matcher": "(", "hooks": [{"type": "command", "command": "x"}]}]}, "regular"),
        ({"Stop": [{"hooks": []}]}, r"hooks.Stop\[0\]"),
    ],
)
def test_bad_config_names_the_entry(table: dict[str, object], message: str) -> None:
    with pytest.raises(HookConfigError, match=message):
        parse_hooks(table, "config.toml")


def test_hooks_from_several_files_all_run(tmp_path: Path) -> None:
    user = parse_hooks({"Stop": hook("echo a >&2; exit 2")}, "user")
    project = parse_hooks({"Stop": hook("echo b >&2; exit 2")}, "project")
    merged = HookRunner(
        merge_hooks(user, project), session_id="s", transcript_path=None, cwd=tmp_path
    )
    assert sorted(merged.run("Stop", {}).reason.splitlines()) == ["a", "b"]
