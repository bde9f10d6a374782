"""Benchmarks: each prints a JSON line last."""
