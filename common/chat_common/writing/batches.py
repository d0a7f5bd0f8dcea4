"""What a batch is: the deliveries a writer's handler gets and the decisions it hands back to the consumer loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

ATTEMPT_HEADER = "x-attempt"
# Unix time (integer milliseconds: AMQP tables carry no floats) the API stamped on a create or edit just before its
# number or version was handed out; kept on every retry and dead-letter hop, so numbering recovery can tell messages
# from before a Redis loss from later ones.
PUBLISHED_AT_HEADER = "x-published-at-ms"
# Unix time (integer milliseconds) a message in a retry tier is due back in its work queue; set by the writer that
# sends it to the tier, read by the writers that drain the tier (chat_common.writing.retry_tiers), kept across
# redeliveries.
DUE_AT_HEADER = "x-due-at-ms"


def stamp_header(at: float) -> int:
    """The header value for the unix time ``at``."""
    return round(at * 1000)


def read_stamp(value: object) -> float:
    """The unix time a header value says; 0.0 (older than anything) when absent or malformed."""
    return value / 1000 if isinstance(value, int) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker handed it over."""

    body: bytes
    delivery_tag: int
    redelivered: bool
    attempt: int  # 0 for the first try, n after n delayed retries
    published_at: float = 0.0  # PUBLISHED_AT_HEADER; 0.0 when absent (older than every loss: recovery waits for it)


@dataclass
class BatchResult:
    """What a handler decided. Deliveries not named here were applied and committed."""

    retry: list[tuple[Delivery, str]] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)


BatchHandler = Callable[[Sequence[Delivery]], BatchResult]
T = TypeVar("T")


def decode_batch(
    deliveries: Sequence[Delivery], decode: Callable[[bytes], T], invalid: tuple[type[Exception], ...]
) -> tuple[list[tuple[Delivery, T]], BatchResult]:
    """Decode every delivery; the undecodable ones are already marked for the dead-letter queue in the result."""
    result = BatchResult()
    decoded: list[tuple[Delivery, T]] = []
    for delivery in deliveries:
        try:
            decoded.append((delivery, decode(delivery.body)))
        except invalid as exc:
            result.dead.append((delivery, f"invalid: {exc}"))
    return decoded, result
