"""The literal markers of MiniMax-M2's prompt and output format (shared/M2_FORMAT.md §1).

Plain strings only; token ids come from the checkpoint's tokenizer files, never from here.
"""

BEGIN_OF_DOCUMENT = "]~!b["
BEGIN_OF_TURN = "]~b]"
END_OF_TURN = "[e~["

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<minimax:tool_call>"
TOOL_CALL_CLOSE = "</minimax:tool_call>"
INVOKE_CLOSE = "</invoke>"
PARAMETER_CLOSE = "</parameter>"

GENERATION_PROMPT = BEGIN_OF_TURN + "ai\n" + THINK_OPEN + "\n"

DEFAULT_SYSTEM_PROMPT = (
    "You are MiniMax-M2, a helpful AI assistant built by MiniMax. Knowledge cutoff: 2025-06."
)

TOOLS_HEADER = (
    "\n\n# Tools\nYou may call one or more tools to assist with the user query.\n"
    "Here are the tools available in JSONSchema format:\n\n<tools>\n"
)
TOOLS_FOOTER = (
    "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n"
    "\n<minimax:tool_call>\n"
    '<invoke name="tool-name-1">\n'
    '<parameter name="param-key-1">param-value-1</parameter>\n'
    '<parameter name="param-key-2">param-value-2</parameter>\n'
    "...\n"
    "</invoke>\n"
    "</minimax:tool_call>"
)
