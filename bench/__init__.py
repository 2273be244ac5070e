"""Benchmarks and helper scripts that drive the trained models from outside the pipeline."""
