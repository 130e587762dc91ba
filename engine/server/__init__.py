"""The OpenAI-compatible HTTP server over `LLMEngine` (`m2agent serve`)."""
