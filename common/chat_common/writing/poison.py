"""Bisection: when a batch fails for a non-transient reason, halve it until the message at fault stands alone."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from chat_common.writing.batches import BatchHandler, BatchResult, Delivery

log = logging.getLogger(__name__)


def apply_isolating_poison(
    handler: BatchHandler, batch: Sequence[Delivery], transient_errors: tuple[type[BaseException], ...]
) -> BatchResult:
    """Apply the batch; a lone message that still fails is marked for the dead-letter queue.

    Transient errors (a dependency is down) are not the batch's fault: they propagate, and the caller retries
    the whole batch later. Each half is applied in its own call, so the healthy halves are committed.
    """
    try:
        return handler(batch)
    except transient_errors:
        raise
    except Exception as exc:
        if len(batch) == 1:
            return BatchResult(dead=[(batch[0], f"unappliable: {exc.__class__.__name__}: {exc}"[:500])])
        log.warning("batch of %d failed (%s); splitting it", len(batch), exc.__class__.__name__)
        middle = len(batch) // 2
        first = apply_isolating_poison(handler, batch[:middle], transient_errors)
        second = apply_isolating_poison(handler, batch[middle:], transient_errors)
        return BatchResult(retry=first.retry + second.retry, dead=first.dead + second.dead)
