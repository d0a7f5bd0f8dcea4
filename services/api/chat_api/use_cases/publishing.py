"""Handing a create or edit to the writers' queue: confirmed by the broker, or a 503 the client retries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chat_api.metrics_buffer import BUFFER
from chat_api.model import PublishError, Unavailable
from chat_api.ports import NumbersPort, Publisher, Repository
from chat_api.use_cases.limits import Limits
from chat_api.use_cases.tenants import TenantGate
from chat_common import metrics

log = logging.getLogger(__name__)


async def publish(publisher: Publisher, queue: str, body: bytes, published_at: float) -> None:
    """Publish with the stamp of the number it carries; :class:`Unavailable` when the broker did not confirm."""
    try:
        await publisher.publish(queue, body, published_at)
    except PublishError as exc:
        BUFFER.inc(metrics.API_PUBLISH_FAILURES, queue)
        # The detail (which node, which error) is for the operators' log; the client learns when to retry.
        log.warning("publish to %s failed: %s", queue, exc)
        raise Unavailable("message broker unavailable", retry_after=1) from None
    BUFFER.inc(metrics.API_PUBLISHED, queue)


@dataclass
class WrittenRows:
    """What the use cases of rows a writer stores (chats, messages) work with: the tenant gate, numbering, the
    broker, MySQL reads, the limits, and the writer's work queue."""

    gate: TenantGate
    numbers: NumbersPort
    publisher: Publisher
    repository: Repository
    queue: str  # the writer's work queue
    limits: Limits
