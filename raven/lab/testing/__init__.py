"""Helpers that run the product's parts in-process for the tests and the benchmarks: the
embedded API server on a thread, the cache proxy on a thread, kube clients with fast timings.

Nothing a node runs imports this package (import-linter holds that line, see pyproject.toml).
"""
