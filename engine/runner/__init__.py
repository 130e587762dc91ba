"""Running the model: batches in, sampled tokens out (one device)."""
