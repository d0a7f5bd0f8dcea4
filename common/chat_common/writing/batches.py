"""What a batch is: the deliveries a writer's handler gets and the decisions it hands back to the consumer loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from chat_common.wire.stamps import PUBLISHED_AT_HEADER, read_stamp, stamp_header

__all__ = [
    "ATTEMPT_HEADER",
    "DUE_AT_HEADER",
    "PUBLISHED_AT_HEADER",
    "BatchHandler",
    "BatchResult",
    "Delivery",
    "decode_batch",
    "read_stamp",
    "stamp_header",
]

ATTEMPT_HEADER = "x-attempt"
# Unix time (integer milliseconds) a message in a retry tier is due back in its work queue; set by the writer that
# sends it to the tier, read by the writers that drain the tier (chat_common.writing.retry_tiers), kept across
# redeliveries.
DUE_AT_HEADER = "x-due-at-ms"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One upsert as the broker handed it over: a whole message, or one part of a bundle (chat_common.wire.bundles).

    The parts of a bundle share its delivery tag, redelivered flag and attempt; each has its own body and stamp.
    """

    body: bytes
    delivery_tag: int
    redelivered: bool
    attempt: int  # 0 for the first try, n after n delayed retries
    published_at: float = 0.0  # PUBLISHED_AT_HEADER; 0.0 when absent (older than every loss: recovery waits for it)
    # How many deliveries share this delivery tag: 1 for a single upsert (or a malformed bundle, handled whole), the
    # bundle's upserts otherwise. A dead delivery with parts > 1 is parked alone (chat_common.writing.routing).
    parts: int = 1
    # Why the message cannot be read as upserts (a malformed bundle): set, it never reaches the handler and is
    # dead-lettered whole.
    unreadable: str = ""

    @property
    def seen_before(self) -> bool:
        """Redelivered or retried: a writer may have applied (and committed) this upsert already."""
        return self.redelivered or self.attempt > 0


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
