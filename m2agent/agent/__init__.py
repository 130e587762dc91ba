"""The agent: the loop, its history, approvals. Never imports the UI."""
