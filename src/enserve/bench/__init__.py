"""Benchmarks: a load generator independent of what it drives, baselines, reports, sweeps."""

from enserve.bench.load import LoadResult, run_load
from enserve.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "LoadResult", "run_bench", "run_load"]
