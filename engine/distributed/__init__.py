"""Tensor parallelism: one process per GPU, each holding a slice of every layer.

`parallel.py` is what the layers see (rank, size, the collectives); `workers.py` starts the
processes of ranks 1..N-1 and replays on them the model runner's calls made on rank 0."""
