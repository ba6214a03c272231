"""Benchmarks and their results: ``haloscope bench <name>`` (``bench/cli.py``) runs one.

The library packages hold no benchmark code; each benchmark here imports what it measures.
``bench/*.sh`` are the GPU-host scripts and ``bench/results/`` the committed JSON results.
"""

from haloscope.bench.cli import main

__all__ = ["main"]
