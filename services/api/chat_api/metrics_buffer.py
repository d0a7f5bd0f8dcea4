"""Per-request metrics, summed in the process and handed to prometheus_client once a second.

Under gunicorn, prometheus_client writes every increment to a memory-mapped file shared with the exposition, behind
a lock and a process-id check: about 5-8 µs a call here, and a create makes four of them (measured in
``make bench``, ``metrics_us_per_create``). Summing in a dict first costs well under a microsecond, and a task on
the event loop writes the sums once a second (and ``/metrics`` writes its own process's first), so the exported
series, names and labels are exactly the same, at most a second late.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict

from prometheus_client import Counter, Histogram

FLUSH_SECONDS = 1.0


class MetricsBuffer:
    """Counter increments and histogram observations of this process, not yet written."""

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        # per (histogram, labels): a count per bucket, then the sum of the observations
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}
        self._bounds: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}

    def inc(self, counter: Counter, *labels: str) -> None:
        """``counter.labels(*labels).inc()``, buffered."""
        self._counts[(counter, labels)] += 1

    def observe(self, histogram: Histogram, value: float, *labels: str) -> None:
        """``histogram.labels(*labels).observe(value)``, buffered."""
        key = (histogram, labels)
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = list(histogram.labels(*labels)._upper_bounds)
        slot = self._observed.get(key)
        if slot is None:
            slot = self._observed[key] = [0.0] * (len(bounds) + 1)
        slot[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value, as observe() does
        slot[-1] += value

    def flush(self) -> None:
        """Write everything buffered to prometheus_client."""
        counts, self._counts = self._counts, defaultdict(float)
        for (counter, labels), amount in counts.items():
            counter.labels(*labels).inc(amount)
        observed, self._observed = self._observed, {}
        for (histogram, labels), slot in observed.items():
            child = histogram.labels(*labels)
            for bucket, amount in zip(child._buckets, slot, strict=False):
                if amount:
                    bucket.inc(amount)
            child._sum.inc(slot[-1])

    async def flush_every(self, seconds: float = FLUSH_SECONDS) -> None:
        """Flush periodically (a task on the worker's event loop); flushes once more when cancelled."""
        try:
            while True:
                await asyncio.sleep(seconds)
                self.flush()
        finally:
            self.flush()


BUFFER = MetricsBuffer()
