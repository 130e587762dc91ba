"""Model definitions, weight loading, and tiny checkpoints for tests."""
