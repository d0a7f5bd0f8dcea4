"""Retry tiers a writer drains: a retried message waits in a tier until it is due, then goes back to its work queue.

A writer that cannot apply a message yet (its chat is not written) publishes it to the tier of its next attempt,
``<queue>.delay.<d>s``, stamped due ``d`` seconds later (``x-due-at-ms``, :func:`chat_common.writing.routing.send`).
Every writer of the queue also consumes that queue's tiers, on a channel of its own with a bounded prefetch per tier
(:class:`RetryDrainer`, a named part of :class:`chat_common.writing.consumer.BatchConsumer`'s loop). It holds each
delivery until its due time, then publishes it to the work queue — persistent, mandatory, confirmed — and only then
acknowledges it. So a message leaves a tier only into its work queue, and does so when due whatever the queue type, the
broker version or a leader change: the tiers have no TTL and dead-letter nothing (docs/architecture.md, "Retry tiers",
says why TTL queues were given up).

- A writer that dies or loses its connection holding tier messages leaves them unacknowledged: the broker hands them
  to another writer (or to this one after it reconnects) with their headers, so they keep their due time. A message
  published but not yet acknowledged when that happens reaches the work queue twice; the upserts are idempotent.
- Several writers drain the same tiers side by side, each holding at most its prefetch per tier.
- A message without a due time (a tier of an earlier version: ``<queue>.retry.<d>s``, drained while it exists) is
  due its tier's delay after it was received; a due time further away than that (another writer's clock ahead) is
  brought back to it, so nothing is ever held longer than one delay.

What it holds counts as held by the writer (its heartbeat: numbering recovery reads it), and how late the most
overdue held message is (:attr:`RetryDrainer.overdue`) is exported as ``chat_writer_retry_overdue_seconds`` and
reported in Redis for the API's ``/status`` (:func:`format_overdue_report`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
import pika.exceptions

from chat_common.clients.broker import queue_counts
from chat_common.wire.topology import WorkQueue
from chat_common.writing.batches import DUE_AT_HEADER, PUBLISHED_AT_HEADER, read_stamp

log = logging.getLogger(__name__)


@dataclass(order=True)
class HeldMessage:
    """One tier delivery waiting for its due time (ordered by due time, then arrival)."""

    due: float
    arrival: int
    tier: str = field(compare=False)
    delivery_tag: int = field(compare=False)
    body: bytes = field(compare=False, repr=False)
    properties: pika.BasicProperties = field(compare=False, repr=False)
    published_at: float = field(compare=False, default=0.0)  # the API's stamp (numbering recovery)


class HeldMessages:
    """Tier deliveries held until due, earliest first (pure: no broker)."""

    def __init__(self) -> None:
        self._heap: list[HeldMessage] = []
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, tier: str, delay: float, delivery_tag: int, body: bytes, properties, now: float) -> HeldMessage:
        """Hold one delivery of ``tier``: due as its header says, at most ``delay`` after ``now``."""
        headers = properties.headers or {}
        latest = now + delay
        stamped = read_stamp(headers.get(DUE_AT_HEADER))
        due = min(stamped, latest) if stamped else latest
        held = HeldMessage(
            due,
            next(self._arrivals),
            tier,
            delivery_tag,
            body,
            properties,
            read_stamp(headers.get(PUBLISHED_AT_HEADER)),
        )
        heapq.heappush(self._heap, held)
        return held

    def due(self, now: float) -> list[HeldMessage]:
        """Take every held message due at ``now``, earliest first."""
        taken = []
        while self._heap and self._heap[0].due <= now:
            taken.append(heapq.heappop(self._heap))
        return taken

    def overdue(self, now: float) -> float:
        """Seconds the earliest held message is past its due time (0 when none is)."""
        return max(now - self._heap[0].due, 0.0) if self._heap else 0.0

    def oldest_stamp(self) -> float | None:
        """The lowest publish stamp among the held messages (None: none held)."""
        return min((m.published_at for m in self._heap), default=None)

    def clear(self) -> None:
        """Forget everything (the channel died: its delivery tags mean nothing any more)."""
        self._heap.clear()


class RetryDrainer:
    """Consumes the retry tiers of one work queue and returns each message to it when due (module docstring).

    :meth:`attach` on every new connection of the loop, :meth:`check` and :meth:`release` on every turn.
    """

    def __init__(self, queue: WorkQueue, prefetch: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.clock = clock
        self.held = HeldMessages()
        self.tiers: dict[str, int] = {}  # tiers consumed on the current connection -> delay
        self._channel = None
        self._publisher = None
        self._cancelled: list[object] = []
        self.overdue = 0.0  # seconds the most overdue held message was late at the last release
        self.received = 0  # tier deliveries received so far (only grows; the writer's heartbeat reports it)

    def attach(self, connection) -> None:
        """Start consuming the queue's tiers (and those of earlier versions that still exist) on ``connection``."""
        self.held.clear()
        self._cancelled = []
        self.tiers = dict(self.queue.retry_tiers)
        # upgrade-only: remove after release 0.2 (drains the TTL retry tiers 0.1.x declared)
        legacy = self.queue.legacy_retry_queues
        present = queue_counts(connection, legacy)
        self.tiers.update({name: delay for name, delay in legacy.items() if present[name] is not None})
        self._publisher = connection.channel()
        self._publisher.confirm_delivery()
        self._channel = channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)  # per consumer: at most this many held per tier
        channel.add_on_cancel_callback(self._cancelled.append)
        for tier, delay in self.tiers.items():
            channel.basic_consume(tier, self._receiver(tier, delay))
        drained_legacy = sorted(set(self.tiers) & set(legacy))
        if drained_legacy:
            log.warning("draining retry tiers of an earlier version: %s", ", ".join(drained_legacy))

    def _receiver(self, tier: str, delay: int):
        def on_message(_channel, method, properties, body: bytes) -> None:
            self.received += 1
            self.held.hold(tier, delay, method.delivery_tag, body, properties, self.clock())

        return on_message

    def check(self) -> None:
        """Raise (the loop reconnects) when a channel was closed or a tier consumer cancelled by the broker."""
        for channel in (self._channel, self._publisher):
            if channel is not None and not channel.is_open:
                raise pika.exceptions.ChannelWrongStateError("a retry-tier channel was closed by the broker")
        if self._cancelled:
            raise pika.exceptions.ChannelWrongStateError("the broker cancelled a retry-tier consumer")

    def release(self) -> int:
        """Publish every due message to the work queue (confirmed), then acknowledge it; returns how many.

        A failed publish raises (the loop reconnects): the message stays unacknowledged and comes back with its due
        time, never lost.
        """
        if self._channel is None:
            return 0
        now = self.clock()
        self.overdue = self.held.overdue(now)
        released = 0
        for message in self.held.due(now):
            properties = message.properties
            headers = {k: v for k, v in (properties.headers or {}).items() if k != DUE_AT_HEADER}
            self._publisher.basic_publish(  # raises unless the broker confirmed it
                "",
                self.queue.name,
                message.body,
                pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type=properties.content_type,
                    message_id=properties.message_id,
                    headers=headers,
                ),
                mandatory=True,
            )
            self._channel.basic_ack(message.delivery_tag)
            released += 1
        return released


def format_overdue_report(seconds: float, at: float) -> str:
    """A writer's report in ``RedisKeys.retry_overdue`` (every heartbeat): how late its most overdue held tier
    message was (:attr:`RetryDrainer.overdue`), and when it said so."""
    return f"{seconds:.3f}:{at:.3f}"


def parse_overdue_report(raw: bytes | str) -> tuple[float, float]:
    """(seconds overdue, unix time of the report); a malformed one reads as (0.0, 0.0): infinitely old."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        seconds, at = text.split(":")
        return float(seconds), float(at)
    except ValueError:
        return 0.0, 0.0
