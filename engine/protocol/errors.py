"""The one error type of the wire-format layer."""


class ProtocolError(ValueError):
    """Messages or tools that cannot be rendered in M2's format; the text says what to fix."""
