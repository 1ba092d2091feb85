"""Benchmarks (`make bench`): each figure is a ratio against a reference from the same run."""
