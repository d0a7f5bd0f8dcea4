"""Re-open numbering after Redis lost its data, without ever handing out a number twice.

A number handed out before the loss may still be on its way to MySQL: in an API process waiting for its
publish confirm, in a work queue, in a retry queue, or in a writer's unacknowledged batch. Counters are
re-seeded from MySQL, so numbering may resume only once all of those are empty:

1. the grace period (the publish timeout) has passed since the loss was first seen, so every publish that
   started before it has been confirmed or failed;
2. the work queues and their retry tiers hold no ready message;
3. every consumer the broker knows of has reported, since the loss, that it holds no unacknowledged message;
4. the queues are checked once more.

Only then is a new epoch written; the API's loads of counters from MySQL carry the epoch they read under.

A missing epoch means a loss only if numbering ever opened: a durable marker in MySQL (``system_markers``)
is written the first time it opens, so a brand-new deployment opens at once instead of waiting out a recovery
that has nothing to recover. The epoch's value says which happened and when (``<id>:fresh|recovered:<unix>``),
which tells idempotency lookups whether Redis may have forgotten keys (``keys_may_be_forgotten``).
One API process at a time runs an attempt (a short Redis lock); the others answer 503 meanwhile.
Redis is asked on the event loop; the broker's queue counts come from a short blocking connection run in a
worker thread, so an attempt never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import pika
import pika.exceptions
import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.dialects.mysql import insert

from chat_api.adapters.database import Database
from chat_api.model import Unavailable
from chat_common.idempotency import KEY_LIFETIME_SECONDS
from chat_common.keys import RedisKeys
from chat_common.tables import system_markers
from chat_common.topology import Topology
from chat_common.writer import parse_heartbeat

log = logging.getLogger(__name__)


FRESH, RECOVERED = "fresh", "recovered"
NUMBERING_OPENED = "numbering_opened"


def new_epoch(kind: str, now: float) -> str:
    """An epoch value: unique, and saying whether it opened a new system or followed a loss, and when."""
    return f"{uuid.uuid4().hex}:{kind}:{int(now)}"


def keys_may_be_forgotten(epoch: str, now: float) -> bool:
    """True when Redis may have lost idempotency keys younger than their lifetime: a loss was recovered less
    than a key lifetime ago, numbering is closed (''), or the epoch does not say (written by an older version)."""
    _, kind, opened = [*epoch.split(":"), "", "", ""][:3]
    if kind == FRESH:
        return False
    if kind == RECOVERED and opened.isdigit():
        return now - int(opened) < KEY_LIFETIME_SECONDS
    return True


_MARKER = select(system_markers.c.name).where(system_markers.c.name == NUMBERING_OPENED)
_SET_MARKER = insert(system_markers).prefix_with("IGNORE").values(name=NUMBERING_OPENED)


class NumberingMarker:
    """The durable "numbering has opened before" fact, in MySQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def is_set(self) -> bool:
        """True once numbering has opened on this database (or the database predates the marker)."""
        return bool(await self.db.rows(_MARKER))

    async def set(self) -> None:
        """Record that numbering opened (idempotent)."""
        await self.db.execute(_SET_MARKER)


def writer_heartbeat_fresh(raw: bytes | str, since: float, now: float, max_age: float = 2.0) -> tuple[bool, int]:
    """One writer heartbeat (:func:`chat_common.writer.parse_heartbeat`): (newer than ``since`` and recent, unacked)."""
    held, at = parse_heartbeat(raw)
    return at > since and now - at <= max_age, held


class NumberingRecovery:
    """Decides when numbering may resume after Redis lost its data; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        amqp_url: str,
        topology: Topology,
        grace_seconds: float,
        marker: NumberingMarker,
    ) -> None:
        self.client = client
        self.marker = marker
        self.keys = keys
        self.amqp_url = amqp_url
        self.topology = topology
        self.grace_seconds = grace_seconds

    async def attempt(self) -> bool:
        """One bounded attempt; True when numbering is open (again)."""
        if await self.client.exists(self.keys.epoch):
            return True
        if not await self.marker.is_set():  # nothing was ever numbered: nothing to recover
            await self.marker.set()  # durable before any number is handed out under the new epoch
            if await self.client.set(self.keys.epoch, new_epoch(FRESH, time.time()), nx=True):
                log.info("numbering opened on a new system")
            return True
        now = time.time()
        await self.client.set(self.keys.recovery_started, repr(now), nx=True)
        started = float(await self.client.get(self.keys.recovery_started) or now)
        if now - started < self.grace_seconds:
            return False
        if not await self.client.set(self.keys.recovery_lock, "1", nx=True, px=1000):
            return False
        try:
            counts = await asyncio.to_thread(self._queue_counts)
            if not self._drained(counts) or not await self._writers_idle_since(started, counts):
                return False
            if not self._drained(await asyncio.to_thread(self._queue_counts)):
                return False
            if await self.client.set(self.keys.epoch, new_epoch(RECOVERED, time.time()), nx=True):
                log.warning("numbering re-opened after %.1fs; counters reload from MySQL", time.time() - started)
            await self.client.delete(self.keys.recovery_started)
            return True
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("numbering recovery cannot reach the broker: %s", exc)
            return False
        finally:
            with contextlib.suppress(RedisError):  # the lock expires by itself; never hide the real outcome
                await self.client.delete(self.keys.recovery_lock)

    async def watch(self, interval: float = 1.0) -> None:
        """Check the epoch every ``interval`` seconds and recover without waiting for traffic (a task on the loop)."""
        while True:
            try:
                await self.attempt()
            except (RedisError, OSError, Unavailable) as exc:  # a dependency is down: the next round retries
                log.debug("numbering watchdog: %s", exc)
            except Exception:  # never let the watchdog die: without it, numbering waits for traffic to recover
                log.exception("numbering watchdog round failed")
            await asyncio.sleep(interval)

    def _queue_names(self) -> list[tuple[str, bool]]:
        names = []
        for queue in (self.topology.chats, self.topology.messages):
            names.append((queue.name, True))
            names.extend((retry, False) for retry in queue.retry_queues)
        return names

    def _queue_counts(self) -> dict[str, tuple[int, int]]:
        """(ready messages, consumers) of every work and retry queue; a missing queue counts as empty."""
        counts: dict[str, tuple[int, int]] = {}
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            for name, _ in self._queue_names():
                channel = connection.channel()
                try:
                    ok = channel.queue_declare(name, passive=True).method
                    counts[name] = (ok.message_count, ok.consumer_count)
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:  # 404: never declared, so nothing is in it
                    counts[name] = (0, 0)
        finally:
            connection.close()
        return counts

    @staticmethod
    def _drained(counts: dict[str, tuple[int, int]]) -> bool:
        return all(ready == 0 for ready, _ in counts.values())

    async def _writers_idle_since(self, started: float, counts: dict[str, tuple[int, int]]) -> bool:
        beats = await self.client.hgetall(self.keys.writer_heartbeats)
        now = time.time()
        for name, is_work_queue in self._queue_names():
            if not is_work_queue:
                continue
            consumers = counts.get(name, (0, 0))[1]
            idle = 0
            for field, raw in beats.items():
                field = field.decode() if isinstance(field, bytes) else field
                if not field.startswith(f"{name}|"):
                    continue
                fresh, held = writer_heartbeat_fresh(raw, started, now)
                if fresh and held:
                    return False
                idle += fresh
            if idle < consumers:
                return False
        return True
