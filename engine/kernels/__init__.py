"""Compute kernels: a readable PyTorch reference for each (`reference`), and the choice of
implementation by device (`dispatch`)."""
