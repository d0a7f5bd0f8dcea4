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
One API process at a time runs an attempt (a short Redis lock); the others answer 503 meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pika
import pika.exceptions
import redis

from chat_common.keys import RedisKeys
from chat_common.topology import Topology

log = logging.getLogger(__name__)


def writer_heartbeat_fresh(raw: bytes | str, since: float, now: float, max_age: float = 2.0) -> tuple[bool, int]:
    """Parse one writer heartbeat ("<unacked>:<unix time>"): (is it newer than ``since`` and recent, unacked)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    unacked, _, stamp = text.partition(":")
    try:
        at, held = float(stamp), int(unacked)
    except ValueError:
        return False, 0
    return at > since and now - at <= max_age, held


class NumberingRecovery:
    """Decides when numbering may resume after Redis lost its data; see the module docstring."""

    def __init__(
        self, client: redis.Redis, keys: RedisKeys, amqp_url: str, topology: Topology, grace_seconds: float
    ) -> None:
        self.client = client
        self.keys = keys
        self.amqp_url = amqp_url
        self.topology = topology
        self.grace_seconds = grace_seconds

    def attempt(self) -> bool:
        """One bounded attempt; True when numbering is open (again)."""
        if self.client.exists(self.keys.epoch):
            return True
        now = time.time()
        self.client.set(self.keys.recovery_started, repr(now), nx=True)
        started = float(self.client.get(self.keys.recovery_started) or now)
        if now - started < self.grace_seconds:
            return False
        if not self.client.set(self.keys.recovery_lock, "1", nx=True, px=1000):
            return False
        try:
            counts = self._queue_counts()
            if not self._drained(counts) or not self._writers_idle_since(started, counts):
                return False
            if not self._drained(self._queue_counts()):
                return False
            if self.client.set(self.keys.epoch, uuid.uuid4().hex, nx=True):
                log.warning("numbering re-opened after %.1fs; counters reload from MySQL", time.time() - started)
            self.client.delete(self.keys.recovery_started)
            return True
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("numbering recovery cannot reach the broker: %s", exc)
            return False
        finally:
            self.client.delete(self.keys.recovery_lock)

    def start_watchdog(self, interval: float = 1.0) -> threading.Thread:
        """Check the epoch every ``interval`` seconds in a daemon thread and recover without waiting for traffic."""

        def watch() -> None:
            while True:
                try:
                    self.attempt()
                except (redis.RedisError, OSError) as exc:
                    log.debug("numbering watchdog: %s", exc)
                time.sleep(interval)

        thread = threading.Thread(target=watch, name="numbering-watchdog", daemon=True)
        thread.start()
        return thread

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

    def _writers_idle_since(self, started: float, counts: dict[str, tuple[int, int]]) -> bool:
        beats = self.client.hgetall(self.keys.writer_heartbeats)
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
