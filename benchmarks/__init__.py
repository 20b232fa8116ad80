"""Benchmarks of transformers-vargpt on a medium random-weight configuration (CPU, float32, 2 threads).

Run everything with `make bench` (or `python -m benchmarks.run`); `--quick` for a run under five minutes.
Results (JSON and PNG plots) go to `benchmarks/results/`; BENCHMARKS.md explains them.
"""
