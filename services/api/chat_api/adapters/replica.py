"""Read replicas (``DATABASE_READ_URL``, one or several): whether one may serve a lag-tolerant read now, and how
stale its answer may be.

A background task per replica on each API worker asks it every ``interval`` seconds for its replication status
(``SHOW REPLICA STATUS``: MariaDB 10.5+ and MySQL 8.0.22+; the database user needs ``REPLICA MONITOR`` on MariaDB
10.5+/``REPLICATION CLIENT`` on MySQL). The replica may serve while both replication threads run and its lag is at
most ``max_lag`` seconds. Its answers are then at most :meth:`ReplicaMonitor.lag_bound` behind the primary: the
reported lag (whole seconds, truncated: +1) plus the age of the probe (the lag can grow by at most that since).
The service sends a tenant's reads to the primary while its last edit is younger than that bound, so a client
reads its own edits wherever the read runs.

Anything else — the replica unreachable, a thread stopped, the status not readable, a read on it failing — sets it
aside (reads run on the primary, never a 503 because of the replica) until a probe finds it healthy again. A
server that answers the status with no row is not a replica (a read endpoint of a synchronously replicated
cluster, say): it serves with lag 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.engine import make_url

from chat_api.adapters.database import Database
from chat_api.metrics_buffer import BUFFER
from chat_api.model import DatabaseUnavailable
from chat_common import metrics

T = TypeVar("T")

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
_LAG_COLUMNS = ("Seconds_Behind_Master", "Seconds_Behind_Source")
_THREAD_COLUMNS = (("Slave_IO_Running", "Replica_IO_Running"), ("Slave_SQL_Running", "Replica_SQL_Running"))


def replication_lag(status: list[dict]) -> float | None:
    """Seconds the server's replication is behind, from its ``SHOW REPLICA STATUS`` rows; None when it is not
    replicating (a thread stopped or the lag unknown); 0 for a server that is no replica (no row)."""
    if not status:
        return 0.0
    worst = 0.0
    for row in status:  # multi-source replication: one row per connection, the slowest counts
        for names in _THREAD_COLUMNS:
            if next((row[name] for name in names if name in row), None) != "Yes":
                return None
        lag = next((row[name] for name in _LAG_COLUMNS if name in row), None)
        if lag is None:
            return None
        worst = max(worst, float(lag))
    return worst


def replica_name(database_url: str) -> str:
    """``host:port`` of a replica's URL: its label in metrics and logs (never the credentials)."""
    url = make_url(database_url.strip())
    return f"{url.host or '127.0.0.1'}:{url.port or 3306}"


class ReplicaMonitor:
    """The replica's pool and its last probe: :meth:`lag_bound` says whether, and how stale, it may serve."""

    def __init__(self, db: Database, max_lag: float, interval: float = PROBE_SECONDS, name: str = "replica") -> None:
        self.db = db
        self.name = name  # host:port, the ``replica`` label of its lag gauge
        self.max_lag = max_lag
        self.interval = interval
        self._lag: float | None = None  # as last probed; None: set aside
        self._probed_at = 0.0  # monotonic time of that probe
        self._warned = False

    def lag_bound(self) -> float | None:
        """How far behind the primary a read on the replica may be now (seconds); None: do not read from it."""
        if self._lag is None:
            return None
        age = time.monotonic() - self._probed_at
        if age > 3 * self.interval:  # the probe itself is stuck: what it said no longer holds
            return None
        return self._lag + 1.0 + age

    def failed(self) -> None:
        """A read on the replica failed: set it aside until the next probe finds it healthy."""
        self._lag = None
        metrics.API_DB_REPLICA_LAG.labels(self.name).set(-1)

    async def probe(self) -> float | None:
        """Ask the replica for its status once; returns (and keeps) the lag it may serve with, or None."""
        try:
            lag = replication_lag(await self.db.named_rows("SHOW REPLICA STATUS"))
        except DatabaseUnavailable:
            lag = None
        except Exception as exc:  # a refused statement (privileges, an old server): said once, then set aside
            if not self._warned:
                log.warning("cannot read the replica's status (%s): reads stay on the primary", exc)
                self._warned = True
            lag = None
        self._probed_at = time.monotonic()
        self._lag = lag if lag is not None and lag <= self.max_lag else None
        metrics.API_DB_REPLICA_LAG.labels(self.name).set(-1 if lag is None else lag)
        return self._lag

    async def watch(self) -> None:
        """Probe every ``interval`` seconds until cancelled (a task on the worker's event loop)."""
        while True:
            with contextlib.suppress(Exception):
                await self.probe()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Close the replica's pool."""
        await self.db.close()


class ReadRouter:
    """Runs a read on a replica when the caller allows it and one may serve, else on the primary.

    With several replicas (``DATABASE_READ_URL`` lists them, comma-separated), reads take turns over those that may
    serve; one that fails a read is set aside and the next is tried, then the primary. :meth:`lag_bound` is the
    largest bound among the replicas that may serve: whichever answers is at most that far behind.
    """

    def __init__(self, primary: Database, replicas: Sequence[ReplicaMonitor] = ()) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self._turn = 0

    def lag_bound(self) -> float | None:
        """How far behind the primary a replica's answer may be now (seconds); None when no replica may serve."""
        bounds = [bound for replica in self.replicas if (bound := replica.lag_bound()) is not None]
        return max(bounds) if bounds else None

    async def run(self, from_replica: bool, read: Callable[[Database], Awaitable[T]]) -> T:
        """``read(database)`` on a replica if ``from_replica`` and one may serve (the primary if every one fails)."""
        if from_replica and self.replicas:
            count = len(self.replicas)
            self._turn = (self._turn + 1) % count
            for step in range(count):
                replica = self.replicas[(self._turn + step) % count]
                if replica.lag_bound() is None:
                    continue
                try:
                    result = await read(replica.db)
                except DatabaseUnavailable:
                    replica.failed()
                    continue
                BUFFER.inc(metrics.API_DB_READS, "replica")
                return result
        BUFFER.inc(metrics.API_DB_READS, "primary")
        return await read(self.primary)
