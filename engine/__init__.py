"""m2agent's inference engine for MiniMax-M2, and the model's wire format (`protocol`).

Importing this package must stay cheap and torch-free: `m2agent.engine.protocol` is used on
the CLI's start-up path. Heavy parts are imported from their own modules.
"""
