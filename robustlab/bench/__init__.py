"""Speed benchmarks.

    python -m robustlab.bench [--model small_cnn] [--format table|json]   # precision x format x compile x loader
    python -m robustlab.bench --suite gpu --out benchmarks/gpu/ [--smoke]  # the GPU proof run
"""
from robustlab.bench.cli import main

__all__ = ["main"]
