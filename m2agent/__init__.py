"""m2agent: a terminal coding agent for MiniMax-M2."""

__version__ = "0.1.0"
