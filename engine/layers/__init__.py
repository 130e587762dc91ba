"""Model building blocks. Each parameter carries a `weight_loader(param, tensor, shard)` so that
tensor or expert parallelism can later load a slice without the model changing."""
