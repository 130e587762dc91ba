"""`python -m m2agent`."""

from m2agent.cli import main

main()
