"""Scenario ``rabbit_cluster``: what replicating every message to a quorum of nodes costs a create
(benchmarks/cluster.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import cluster
from benchmarks.knobs import HEADLINE_CONCURRENCY, REPEATS, SECONDS, WORKERS

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def run(bench: Bench) -> dict:
    """Creates on one private RabbitMQ node (classic, quorum) against a 3-node cluster (quorum), at c=64."""
    bench.log("RabbitMQ: one private node (classic, quorum) against a 3-node cluster (quorum), c=64")
    return {
        "rabbit_cluster": cluster.run(
            cluster.Conditions(
                log_dir=bench.log_dir,
                memory=bench.memory,
                workers=WORKERS,
                connections=HEADLINE_CONCURRENCY,
                seconds=SECONDS,
                repeats=REPEATS,
                log=bench.log,
            )
        )
    }
