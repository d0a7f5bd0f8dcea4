"""Where each message of a finished batch goes: acknowledged, to a delayed-retry tier, or to the dead-letter queue.

:func:`route` decides (pure, no broker); :func:`send` carries the decision out on the consumer's channels.

Per upsert, also inside a bundle (``chat_common.wire.bundles``; its parts share one delivery tag):

- a retried upsert is published alone to its tier (its own body and publish stamp), confirmed;
- a dead upsert that is a whole message is rejected without requeue: the work queue dead-letters it into
  ``<queue>.dead`` (at-least-once on quorum queues, with RabbitMQ's ``x-death`` header);
- a dead upsert that is one part of a bundle cannot be rejected alone (a reject takes the whole message, the parts
  already committed with it): it is *parked* — published alone, persistent, mandatory and confirmed, to
  ``<queue>.dead`` with its attempt, its publish stamp and ``x-dead-reason`` — and the bundle's tag is acknowledged
  with the rest;
- then one ``basic_ack(multiple=True)`` up to the highest tag not rejected: every retry and parked part confirmed
  before, so nothing is acknowledged that is not committed or safely elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pika

from chat_common.wire.topology import WorkQueue
from chat_common.writing.batches import (
    ATTEMPT_HEADER,
    DUE_AT_HEADER,
    PUBLISHED_AT_HEADER,
    BatchResult,
    Delivery,
    stamp_header,
)

log = logging.getLogger(__name__)

# On an upsert parked in the dead-letter queue by a writer (a dead part of a bundle): why no writer can apply it.
# Rejected whole messages carry RabbitMQ's ``x-death`` instead (their reason is in the writer's log).
DEAD_REASON_HEADER = "x-dead-reason"


@dataclass(frozen=True, slots=True)
class Retry:
    """One message to publish to a retry tier."""

    delivery: Delivery
    queue: str  # the retry tier's queue name
    attempt: int  # 1-based: the attempt the message will be on when it comes back
    delay: int = 0  # seconds it waits in the tier


@dataclass
class Routing:
    """The fate of every message of one batch."""

    batch_size: int
    retries: list[Retry] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    ack_up_to: int | None = None  # acknowledge every tag up to this one (``multiple=True``); None: nothing to ack
    dead_letter: str = ""  # the work queue's dead-letter queue (where dead parts of bundles are parked)

    @property
    def applied(self) -> int:
        """Upserts the handler applied (neither retried nor dead-lettered)."""
        return self.batch_size - len(self.retries) - len(self.dead)

    @property
    def rejected(self) -> list[tuple[Delivery, str]]:
        """The dead that are whole messages: rejected, the broker dead-letters them."""
        return [(d, reason) for d, reason in self.dead if d.parts == 1]

    @property
    def parked(self) -> list[tuple[Delivery, str]]:
        """The dead that are parts of a bundle: published alone to the dead-letter queue, their tag acknowledged."""
        return [(d, reason) for d, reason in self.dead if d.parts > 1]


def route(batch: Sequence[Delivery], result: BatchResult, queue: WorkQueue, max_attempts: int) -> Routing:
    """Decide the fate of each message: a retry past ``max_attempts`` is dead-lettered instead."""
    retries, gave_up = [], []
    for delivery, reason in result.retry:
        attempt = delivery.attempt + 1
        if attempt > max_attempts:
            gave_up.append((delivery, f"gave up after {max_attempts} attempts: {reason}"))
        else:
            retries.append(Retry(delivery, queue.retry(attempt), attempt, queue.retry_delay(attempt)))
    routing = Routing(
        batch_size=len(batch), retries=retries, dead=[*result.dead, *gave_up], dead_letter=queue.dead_letter
    )
    # The channel holds no other unacked tags, so acknowledging the highest tag still outstanding covers the
    # batch. Never a nacked tag: acknowledging it again makes the broker close the channel (406). A bundle's tag is
    # never nacked (its dead parts are parked): every part of a message is in the same batch (the loop flushes its
    # whole buffer), so the ack comes once all of them are committed, retried or parked.
    dead_tags = {d.delivery_tag for d, _ in routing.rejected}
    remaining = [d.delivery_tag for d in batch if d.delivery_tag not in dead_tags]
    routing.ack_up_to = max(remaining) if remaining else None
    return routing


def _sent_alone(delivery: Delivery, attempt: int, extra: dict[str, object]) -> dict[str, object]:
    """Headers of an upsert sent on by itself (to a retry tier, or parked): its attempt and its own publish stamp,
    which travels with it wherever it goes (numbering recovery reads it), and ``extra``."""
    return {ATTEMPT_HEADER: attempt, PUBLISHED_AT_HEADER: stamp_header(delivery.published_at), **extra}


def send(routing: Routing, channel, retry_channel, clock: Callable[[], float] = time.time) -> None:
    """Publish the retries (confirmed, persistent, due ``delay`` from now) and park the dead parts of bundles
    (confirmed, into ``<queue>.dead``), reject the dead whole messages (the broker moves them to ``<queue>.dead``),
    then ack the rest."""
    for retry in routing.retries:
        headers = _sent_alone(retry.delivery, retry.attempt, {DUE_AT_HEADER: stamp_header(clock() + retry.delay)})
        retry_channel.basic_publish(
            "", retry.queue, retry.delivery.body, pika.BasicProperties(delivery_mode=2, headers=headers), mandatory=True
        )
    for delivery, reason in routing.parked:
        log.error("dead-lettering one upsert of a bundle (tag %s): %s", delivery.delivery_tag, reason)
        headers = _sent_alone(delivery, delivery.attempt, {DEAD_REASON_HEADER: reason[:500]})
        properties = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers=headers)
        retry_channel.basic_publish("", routing.dead_letter, delivery.body, properties, mandatory=True)
    for delivery, reason in routing.rejected:
        log.error("dead-lettering message (tag %s): %s", delivery.delivery_tag, reason)
        channel.basic_nack(delivery.delivery_tag, requeue=False)
    if routing.ack_up_to is not None:
        channel.basic_ack(routing.ack_up_to, multiple=True)
