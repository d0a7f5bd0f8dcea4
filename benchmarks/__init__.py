"""`make bench`: write-path throughput and latency, measured against the ceilings of its own parts in the same run.

Entry point: ``python -m benchmarks`` (see benchmarks/run.py and docs/performance.md).
"""
