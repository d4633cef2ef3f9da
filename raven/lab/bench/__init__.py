"""Benchmarks that print their figures, each against a baseline measured in the same run."""
