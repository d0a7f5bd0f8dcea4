"""Scenario ``metrics_cost``: what a create's Prometheus calls cost (benchmarks/metrics_cost.py, in a
process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

from benchmarks.knobs import METRICS_ITERATIONS
from chat_devtools.processes import ROOT

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def metrics_cost(bench: Bench) -> dict:
    """What a create's Prometheus calls cost, timed in a process of their own (multi-process mode and not).

    Under gunicorn ``PROMETHEUS_MULTIPROC_DIR`` is set, so every ``inc``/``observe`` writes a memory-mapped
    file; the variable must be set before prometheus_client is imported, hence a fresh interpreter.
    """
    bench.log(f"metrics cost: a create's metric calls, {METRICS_ITERATIONS} times, in a separate process")
    out: dict = {"iterations": METRICS_ITERATIONS}
    for mode in ("multiprocess", "in_memory"):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            argv = [sys.executable, "-m", "benchmarks.metrics_cost", str(METRICS_ITERATIONS)]
            done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=600)
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        calls = ", ".join(f"{k} {v:.2f}" for k, v in out[mode]["us_per_call"].items())
        bench.log(f"  {mode}: {out[mode]['us_per_create']:.2f} us per create ({calls})")
    return out


def run(bench: Bench) -> dict:
    """The figures under ``metrics_cost``."""
    return {"metrics_cost": metrics_cost(bench)}
