"""The retry tiers and dead-letter queues as ``/status`` shows them: late retries, undrained tiers, parked messages.

Two sources: the broker (a short blocking connection in a worker thread: ready messages and consumers of each retry
tier — those of earlier versions while they exist — and of each dead-letter queue), and the writers' own reports in
Redis (``RedisKeys.retry_overdue``: how late the most overdue tier message each writer holds is; a tier message a
writer holds is not "ready", so only the writer can tell). The snapshot is kept ``cache_seconds`` so that a polled
``/status`` opens at most one broker connection per process that often.

- retry tiers **overdue**: a writer reported, within the last ``REPORT_MAX_AGE`` seconds, a held message later than
  the margin (``RETRY_OVERDUE_MARGIN_SECONDS``); **undrained**: a tier holds messages and nobody consumes it (no
  writer of its queue is running: nothing would ever take them back); else **ok**.
- dead letters **holding** (messages parked for a human) or **empty**.
- either **unknown** while no snapshot could be read (a slow or unreachable broker: the ``rabbitmq`` check says
  which): not a fault of its own, so a slow scan never turns ``/status`` into a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as redis

from chat_common.clients.broker import BrokerNodes
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology
from chat_common.writing.retry_tiers import parse_overdue_report

log = logging.getLogger(__name__)

REPORT_MAX_AGE = 10.0  # writers report every 0.2 s; an older report is a writer that is gone
FIRST_READ_SECONDS = 1.5  # /status waits this long for a process's first snapshot (its checks get 2 s)
MAX_AGE = 15.0  # an older snapshot (the reads failing meanwhile) is not shown: the state is unknown
OK, OVERDUE, UNDRAINED, UNKNOWN = "ok", "overdue", "undrained", "unknown"
EMPTY, HOLDING = "empty", "holding"


@dataclass(frozen=True)
class QueueSnapshot:
    """Retry tiers and dead-letter queues at one moment."""

    tiers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (ready, consumers); existing ones only
    dead: dict[str, int] = field(default_factory=dict)  # name -> messages
    overdue_seconds: float = 0.0  # the latest writer reports' maximum

    def retry_state(self, margin: float) -> str:
        """``overdue``, ``undrained`` or ``ok`` (module docstring)."""
        if self.overdue_seconds > margin:
            return OVERDUE
        if any(ready and not consumers for ready, consumers in self.tiers.values()):
            return UNDRAINED
        return OK

    def dead_state(self) -> str:
        """``holding`` when a dead-letter queue has messages, else ``empty``."""
        return HOLDING if any(self.dead.values()) else EMPTY


@dataclass(eq=False)
class QueueHealth:
    """Reads :class:`QueueSnapshot` s for ``/status`` (one per ``cache_seconds`` at most)."""

    client: redis.Redis
    keys: RedisKeys
    broker: BrokerNodes
    topology: Topology
    margin_seconds: float
    cache_seconds: float = 2.0
    _snapshot: QueueSnapshot | None = field(default=None, init=False, repr=False)
    _taken: float = field(default=float("-inf"), init=False, repr=False)
    _reading: asyncio.Task | None = field(default=None, init=False, repr=False)

    async def snapshot(self) -> QueueSnapshot | None:
        """The latest snapshot no older than ``MAX_AGE`` (None: none yet, or the reads keep failing).

        A snapshot older than ``cache_seconds`` is read anew in the background — one read at a time, shared by
        concurrent requests — so a slow broker or a long list of queues never holds ``/status`` up; only the first
        read is waited for, and for at most ``FIRST_READ_SECONDS``.
        """
        if time.monotonic() - self._taken > self.cache_seconds and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._read())
        if self._snapshot is None and self._reading is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reading), FIRST_READ_SECONDS)
        if self._snapshot is None or time.monotonic() - self._taken > MAX_AGE:
            return None
        return self._snapshot

    async def _read(self) -> None:
        try:
            counts = await asyncio.to_thread(self._counts)
            reports = await self.client.hgetall(self.keys.retry_overdue)
        except Exception as exc:  # reported as "unknown" once the last snapshot is too old; /status says why not
            log.info("queue snapshot not read: %s", exc.__class__.__name__)
            return
        self._snapshot = self._build(counts, reports, time.time())
        self._taken = time.monotonic()

    async def retry_tiers(self) -> tuple[str, dict]:
        """The ``/status`` check of the retry tiers: its state and, per existing tier, messages and drainers."""
        snapshot = await self.snapshot()
        if snapshot is None:
            return UNKNOWN, {}
        tiers = {name: {"messages": ready, "drainers": drainers} for name, (ready, drainers) in snapshot.tiers.items()}
        return snapshot.retry_state(self.margin_seconds), {
            "overdue_seconds": round(snapshot.overdue_seconds, 3),
            "tiers": tiers,
        }

    async def dead_letters(self) -> tuple[str, dict]:
        """The ``/status`` check of the dead-letter queues: ``holding`` or ``empty``, and the messages of each."""
        snapshot = await self.snapshot()
        if snapshot is None:
            return UNKNOWN, {}
        return snapshot.dead_state(), {"queues": dict(snapshot.dead)}

    def _names(self) -> tuple[list[str], list[str]]:
        tiers, dead = [], []
        for queue in (self.topology.chats, self.topology.messages):
            tiers += [*queue.retry_queues, *queue.legacy_retry_queues]
            dead.append(queue.dead_letter)
        return tiers, dead

    def _counts(self) -> dict[str, tuple[int, int] | None]:
        tiers, dead = self._names()
        return self.broker.count_queues([*tiers, *dead])

    def _build(self, counts: dict, reports: dict, now: float) -> QueueSnapshot:
        tiers, dead = self._names()
        fresh = [seconds for seconds, at in map(parse_overdue_report, reports.values()) if now - at <= REPORT_MAX_AGE]
        return QueueSnapshot(
            tiers={name: counts[name] for name in tiers if counts.get(name) is not None},
            dead={name: counts[name][0] for name in dead if counts.get(name) is not None},
            overdue_seconds=max(fresh, default=0.0),
        )
