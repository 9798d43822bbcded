"""Throughput benchmark of the classifier configs, the training step and the data loader (``tools/benchmark.py``).

    >>> from twostream.benchmark import BenchmarkOptions, format_report, run_benchmark
    >>> print(format_report(run_benchmark(BenchmarkOptions(quick=True))))

Modules: :mod:`~twostream.benchmark.measure` (timing and memory probes), :mod:`~twostream.benchmark.inference`
(end to end and per stage), :mod:`~twostream.benchmark.training` (training step, loader),
:mod:`~twostream.benchmark.report` (markdown, target verdicts), :mod:`~twostream.benchmark.runner` (one run).
"""

from twostream.benchmark.report import format_report
from twostream.benchmark.runner import BenchmarkOptions, BenchmarkResult, run_benchmark

__all__ = ["BenchmarkOptions", "BenchmarkResult", "format_report", "run_benchmark"]
