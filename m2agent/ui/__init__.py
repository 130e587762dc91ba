"""Front-ends: render the agent's events (headless text/JSON here; the REPL later)."""
