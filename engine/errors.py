"""The engine's few error types. Their text is what the user sees: it names the file and says
what to do; a traceback from deep inside torch never stands in for it."""


class EngineError(Exception):
    """Base of every error the engine reports to its caller."""


class ConfigError(EngineError):
    """A config.json (or generation_config.json) the engine cannot use, and why."""


class CheckpointError(EngineError):
    """Checkpoint files that are missing, corrupt, or do not match the config."""


class TokenizerError(EngineError):
    """Tokenizer files that are missing or unreadable."""
