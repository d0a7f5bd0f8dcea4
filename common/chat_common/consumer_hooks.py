"""The side concerns of a writer's consumer loop, each a :class:`~chat_common.consumer.ConsumerHook`.

- :class:`WriterMetrics`: consumed, redelivered, applied, retried, dead-lettered, batch sizes and durations.
- :class:`HeartbeatHook`: reports how many messages the writer holds unacknowledged (numbering recovery reads it).
- :class:`QueueDepthSampler`: exports the ready count of the work, retry and dead-letter queues.
- :class:`PeriodicChore`: a writer's own periodic task (the message-writer drains its search backlog).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from chat_common import metrics
from chat_common.batches import Delivery
from chat_common.consumer import ConsumerHook, LoopState
from chat_common.routing import Routing
from chat_common.topology import WorkQueue

log = logging.getLogger(__name__)


class Every:
    """True at most once per ``seconds`` (the first call is always due)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last = float("-inf")

    def due(self) -> bool:  # noqa: D102
        now = self.clock()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


class WriterMetrics(ConsumerHook):
    """Prometheus counters and histograms of a writer, labelled by queue."""

    def on_message(self, queue: WorkQueue, delivery: Delivery) -> None:  # noqa: D102
        metrics.WRITER_CONSUMED.labels(queue.name).inc()
        if delivery.redelivered:
            metrics.WRITER_REDELIVERED.labels(queue.name).inc()

    def on_batch_failed(self, queue: WorkQueue, batch: Sequence[Delivery], exc: BaseException) -> None:  # noqa: D102
        metrics.WRITER_BATCH_FAILURES.labels(queue.name).inc()

    def on_batch_applied(self, queue: WorkQueue, batch: Sequence[Delivery], seconds: float) -> None:  # noqa: D102
        metrics.WRITER_BATCH_SIZE.labels(queue.name).observe(len(batch))
        metrics.WRITER_WRITE_SECONDS.labels(queue.name).observe(seconds)

    def on_batch_done(self, queue: WorkQueue, routing: Routing) -> None:  # noqa: D102
        if routing.retries:
            metrics.WRITER_RETRIED.labels(queue.name).inc(len(routing.retries))
        for _, reason in routing.dead:
            metrics.WRITER_DEAD_LETTERED.labels(queue.name, reason.split(":")[0][:40]).inc()
        metrics.WRITER_WRITTEN.labels(queue.name).inc(max(routing.applied, 0))


class HeartbeatHook(ConsumerHook):
    """Calls ``beat(consumer_id, unacked)`` every ``every`` seconds and once more on stop; a failed beat is skipped."""

    def __init__(
        self,
        beat: Callable[[str, int], None],
        transient_errors: tuple[type[BaseException], ...],
        every: float = 0.2,
    ) -> None:
        self.beat = beat
        self.transient_errors = transient_errors
        self.every = Every(every)

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if self.every.due():
            self._beat(state)

    def on_stop(self, state: LoopState) -> None:  # noqa: D102
        self._beat(state)

    def _beat(self, state: LoopState) -> None:
        try:
            self.beat(state.consumer_id, state.held)
        except self.transient_errors as exc:
            log.debug("heartbeat not recorded: %s", exc)


class QueueDepthSampler(ConsumerHook):
    """Every ``every`` seconds, the ready count of the work, retry and dead-letter queues (for autoscaling views)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = Every(every)

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if not self.every.due():
            return
        queue = state.queue
        names = [(queue.name, "work"), (queue.dead_letter, "dead")]
        names += [(name, "retry") for name in queue.retry_queues]
        channel = state.connection.channel()
        try:
            for name, kind in names:
                ok = channel.queue_declare(name, passive=True).method
                metrics.QUEUE_DEPTH.labels(name, kind).set(ok.message_count)
        finally:
            if channel.is_open:
                channel.close()


class PeriodicChore(ConsumerHook):
    """Runs ``chore()`` every ``every`` seconds between batches; a transient failure is logged and tried next time."""

    def __init__(
        self, chore: Callable[[], None], transient_errors: tuple[type[BaseException], ...], every: float = 2.0
    ) -> None:
        self.chore = chore
        self.transient_errors = transient_errors
        self.every = Every(every)

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if not self.every.due():
            return
        try:
            self.chore()
        except self.transient_errors as exc:
            log.warning("periodic task failed: %s", exc)
