"""Every scenario of `make bench`, one module each, in the order a run takes them.

The order reuses data: write scenarios on an empty table first, then the table is filled to ``BENCH_GROWTH_ROWS``
for the growth, read and count-sync scenarios. Each scenario is ``run(bench) -> dict``: the figures it adds to
``results["scenarios"]``, under the keys docs/performance.md and benchmarks/report.py read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks.scenarios import (
    coalescing,
    count_sync,
    creates,
    drain,
    e2e,
    growth,
    loadgen,
    metrics,
    naive,
    parts,
    rabbit_cluster,
    reads,
    streams,
    webhooks,
)

if TYPE_CHECKING:
    from benchmarks.runner import Bench

SCENARIOS: dict[str, Callable[[Bench], dict]] = {
    "loadgen": loadgen.run,
    "create": creates.run,
    "coalescing": coalescing.run,
    "naive": naive.run,
    "ceilings": parts.run,
    "metrics_cost": metrics.run,
    "e2e": e2e.run,
    "drain": drain.run,
    "growth": growth.run,
    "reads": reads.run,
    "count_sync": count_sync.run,
    "streams": streams.run,
    "webhooks": webhooks.run,
    "rabbit_cluster": rabbit_cluster.run,
}
