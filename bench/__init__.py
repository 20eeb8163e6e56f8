"""Benchmarks of the data path, metrics and training loop, as ratios against same-run baselines.

`python -m bench.run_all [--quick]` (or `make bench`) prints one table and writes
`bench/results.json` and `bench/results.md`; `python -m bench.gpu` is the script for a lent GPU.
"""
