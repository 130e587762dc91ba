"""The MCP client: configured servers (config), their connections (manager) and their tools
offered to the model (tool). The `mcp` SDK is imported only where servers start."""
