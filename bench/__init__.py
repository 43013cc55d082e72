"""Benchmarks (run from the project root, e.g. ``python -m bench.intake``)."""
