"""Benchmarks: each module runs as ``python -m bench.<name>`` and prints ratios
against a baseline measured in the same run, interleaved."""
