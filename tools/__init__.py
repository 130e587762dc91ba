"""The sandboxed tools the model uses on a repository (files, search, shell, undo).

Never imports torch, rich, prompt_toolkit or the agent side of m2agent.
"""
