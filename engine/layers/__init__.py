"""Model building blocks. Each parameter carries a `weight_loader(param, tensor, shard)`, so a
tensor-parallel rank loads its own slice of each checkpoint tensor without the model changing."""
