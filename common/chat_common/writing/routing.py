"""Where each message of a finished batch goes: acknowledged, to a delayed-retry tier, or to the dead-letter queue.

:func:`route` decides (pure, no broker); :func:`send` carries the decision out on the consumer's channels.
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

    @property
    def applied(self) -> int:
        """Messages the handler applied (neither retried nor dead-lettered)."""
        return self.batch_size - len(self.retries) - len(self.dead)


def route(batch: Sequence[Delivery], result: BatchResult, queue: WorkQueue, max_attempts: int) -> Routing:
    """Decide the fate of each message: a retry past ``max_attempts`` is dead-lettered instead."""
    retries, gave_up = [], []
    for delivery, reason in result.retry:
        attempt = delivery.attempt + 1
        if attempt > max_attempts:
            gave_up.append((delivery, f"gave up after {max_attempts} attempts: {reason}"))
        else:
            retries.append(Retry(delivery, queue.retry(attempt), attempt, queue.retry_delay(attempt)))
    routing = Routing(batch_size=len(batch), retries=retries, dead=[*result.dead, *gave_up])
    # The channel holds no other unacked tags, so acknowledging the highest tag still outstanding covers the
    # batch. Never a nacked tag: acknowledging it again makes the broker close the channel (406).
    dead_tags = {d.delivery_tag for d, _ in routing.dead}
    remaining = [d.delivery_tag for d in batch if d.delivery_tag not in dead_tags]
    routing.ack_up_to = max(remaining) if remaining else None
    return routing


def send(routing: Routing, channel, retry_channel, clock: Callable[[], float] = time.time) -> None:
    """Publish the retries (confirmed, persistent, due ``delay`` from now), reject the dead (into ``<queue>.dead``),
    then ack the rest."""
    for retry in routing.retries:
        headers = {
            ATTEMPT_HEADER: retry.attempt,
            # The publish stamp travels with the message through every tier (numbering recovery reads it).
            PUBLISHED_AT_HEADER: stamp_header(retry.delivery.published_at),
            DUE_AT_HEADER: stamp_header(clock() + retry.delay),
        }
        retry_channel.basic_publish(
            "", retry.queue, retry.delivery.body, pika.BasicProperties(delivery_mode=2, headers=headers), mandatory=True
        )
    for delivery, reason in routing.dead:
        log.error("dead-lettering message (tag %s): %s", delivery.delivery_tag, reason)
        channel.basic_nack(delivery.delivery_tag, requeue=False)
    if routing.ack_up_to is not None:
        channel.basic_ack(routing.ack_up_to, multiple=True)
