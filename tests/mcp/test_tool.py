"""How an MCP tool result reads for the model, and how the tool names itself."""

from __future__ import annotations

from typing import Any

from m2agent.mcp.tool import exposed_name, render_content
from m2agent.tools.shell import MAX_OUTPUT_CHARS


def test_long_text_is_capped_like_bash_output() -> None:
    text = "head " + "x" * (3 * MAX_OUTPUT_CHARS) + " tail"
    result = render_content([{"type": "text", "text": text}], None, False)
    assert len(result.content) < MAX_OUTPUT_CHARS + 100
    assert result.content.startswith("head ") and result.content.endswith(" tail")
    assert "characters omitted" in result.content


def test_blocks_notes_and_structured_content() -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "image", "data": "AAAA", "mimeType": "image/png"},
        {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "inside"}},
        {"type": "resource", "resource": {"uri": "file:///b.bin", "blob": "AAAA"}},
        {"type": "resource_link", "uri": "file:///c.txt", "name": "c"},
    ]
    result = render_content(blocks, {"rows": 2}, True)
    lines = result.content.splitlines()
    assert lines[0] == "[image (image/png, about 3 bytes) returned; not shown to the model]"
    assert "[resource file:///a.txt]" in lines and "inside" in lines
    assert "[binary resource file:///b.bin; not shown to the model]" in lines
    assert "[resource link: file:///c.txt c]" in lines
    assert result.content.endswith('{\n  "rows": 2\n}') and result.is_error
    # with a text block (the spec asks servers to serialise structured content there too),
    # the structured copy is not repeated
    again = render_content([{"type": "text", "text": '{"rows": 2}'}], {"rows": 2}, False)
    assert again.content == '{"rows": 2}'
    assert render_content([], None, False).content == "(no output)"


def test_exposed_names_fit_function_names() -> None:
    assert exposed_name("gh", "create_issue") == "mcp__gh__create_issue"
    assert exposed_name("docs", "search.v2 (beta)") == "mcp__docs__search_v2__beta_"
    assert len(exposed_name("s", "t" * 100)) == 64
