"""What a batch is: the deliveries a writer's handler gets and the decisions it hands back to the consumer loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

ATTEMPT_HEADER = "x-attempt"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker handed it over."""

    body: bytes
    delivery_tag: int
    redelivered: bool
    attempt: int  # 0 for the first try, n after n delayed retries


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
