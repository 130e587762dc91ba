"""Ways to reach the model: one interface (`ModelBackend`), several transports."""
