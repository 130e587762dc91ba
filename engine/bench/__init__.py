"""Benchmarks run by `m2agent bench …`: each measures the engine against a named baseline in
the same process, on the same weights and machine."""
