"""The side concerns of a writer's consumer loop, each a :class:`~chat_common.writing.consumer.ConsumerHook`.

- :class:`WriterMetrics`: consumed, redelivered, applied, retried, dead-lettered, batch sizes and durations.
- :class:`HeartbeatHook`: reports what the writer holds unacknowledged and what it last received (numbering
  recovery reads it).
- :class:`DeferralLedger`: keeps account, in Redis, of the messages sent to a retry tier until they are committed
  (numbering recovery reads it instead of the retry queues).
- :class:`QueueDepthSampler`: exports the ready and consumer counts of the work, retry and dead-letter queues.
- :class:`PeriodicChore`: a writer's own periodic task (the message-writer drains its search backlog).
- :class:`AnnouncementRetry`: sends the announcements a batch left unsent (writers that announce).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from chat_common import metrics
from chat_common.clients.broker import queue_counts
from chat_common.wire.topology import WorkQueue
from chat_common.writing.batches import Delivery
from chat_common.writing.consumer import ConsumerHook, LoopState
from chat_common.writing.routing import Routing

log = logging.getLogger(__name__)


class Throttle:
    """Lets a periodic job run at most once per ``seconds`` between the loop's iterations: :meth:`due` is True
    on the first call and then once the interval has passed since it last was."""

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
    """Prometheus counters, histograms and gauges of a writer, labelled by queue."""

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        metrics.WRITER_RETRY_OVERDUE.labels(state.queue.name).set(state.retry_overdue)

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
    """Calls ``beat(state)`` every ``every`` seconds and once more on stop; a failed beat is skipped."""

    def __init__(
        self,
        beat: Callable[[LoopState], None],
        transient_errors: tuple[type[BaseException], ...],
        every: float = 0.2,
    ) -> None:
        self.beat = beat
        self.transient_errors = transient_errors
        self.throttle = Throttle(every)

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if self.throttle.due():
            self._beat(state)

    def on_stop(self, state: LoopState) -> None:  # noqa: D102
        self._beat(state)

    def _beat(self, state: LoopState) -> None:
        try:
            self.beat(state)
        except self.transient_errors as exc:
            log.debug("heartbeat not recorded: %s", exc)


class QueueDepthSampler(ConsumerHook):
    """Every ``every`` seconds, the ready and consumer counts of the work, retry and dead-letter queues (autoscaling
    views; a retry tier holding messages with no consumer is an alert: nothing would take them back).

    A retry tier of an earlier version (``WorkQueue.legacy_retry_queues``) is sampled while it exists. Once the broker
    says it is gone it is left alone for the rest of the process: nothing declares those tiers any more, and each
    passive declare of a missing queue costs a channel and a broker warning in the log (three per writer every
    five seconds, forever, in a deployment that never had them)."""

    def __init__(self, every: float = 5.0) -> None:
        self.throttle = Throttle(every)
        self.gone: set[str] = set()  # legacy tiers found missing

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if not self.throttle.due():
            return
        queue = state.queue
        legacy = {name for name in queue.legacy_retry_queues if name not in self.gone}
        kinds = {queue.name: "work", queue.dead_letter: "dead"}
        kinds |= {name: "retry" for name in (*queue.retry_queues, *sorted(legacy))}
        for name, counts in queue_counts(state.connection, kinds).items():
            if counts is not None:
                metrics.QUEUE_DEPTH.labels(name, kinds[name]).set(counts[0])
                metrics.QUEUE_CONSUMERS.labels(name, kinds[name]).set(counts[1])
            elif name in legacy:
                self.gone.add(name)
                for gauge in (metrics.QUEUE_DEPTH, metrics.QUEUE_CONSUMERS):  # not a stale last value either
                    with contextlib.suppress(KeyError):
                        gauge.remove(name, kinds[name])


class PeriodicChore(ConsumerHook):
    """Runs ``chore()`` every ``every`` seconds between batches; a transient failure is logged and tried next time."""

    def __init__(
        self, chore: Callable[[], None], transient_errors: tuple[type[BaseException], ...], every: float = 2.0
    ) -> None:
        self.chore = chore
        self.transient_errors = transient_errors
        self.throttle = Throttle(every)

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if not self.throttle.due():
            return
        try:
            self.chore()
        except self.transient_errors as exc:
            log.warning("periodic task failed: %s", exc)


class AnnouncementRetry(ConsumerHook):
    """Sends again, on the loop's next turns, the announcements a batch left unsent (live streams).

    The handler that commits owns the announcement: it calls ``committed`` and ``flush`` right after its commit,
    before the batch is acknowledged (so a writer that dies in between has its batch redelivered, re-applied — a
    no-op upsert — and announced again). The announcer never raises (see
    :class:`chat_common.wire.announcements.Announcer`): what it could not send while the broker was away stays pending,
    and this hook sends it once the broker is back. Installed only for writers that announce (the message-writer).
    """

    def __init__(self, announcer) -> None:
        self.announcer = announcer

    def on_iteration(self, state: LoopState) -> None:  # noqa: D102
        if self.announcer.pending:
            self.announcer.flush()


def deferral_id(delivery: Delivery) -> str:
    """The ledger's name for a message: a digest of its body (the same upsert published twice is one entry)."""
    return hashlib.blake2b(delivery.body, digest_size=12).hexdigest()


class DeferralLedger(ConsumerHook):
    """Accounts for the messages of a batch sent to a retry tier, before they are sent: ``defer(id -> stamp)``;
    and, before a message that may have been deferred (a retried or redelivered one) is acknowledged or
    dead-lettered, removes it: ``settle(ids)``. Both are idempotent, so a batch run twice (the writer died
    between the call and the acknowledgement) leaves the same account; a failure holds the batch (see
    ``ConsumerHook.on_batch_routed``)."""

    def __init__(self, defer: Callable[[dict[str, float]], None], settle: Callable[[list[str]], None]) -> None:
        self.defer = defer
        self.settle = settle

    def on_batch_routed(self, queue: WorkQueue, batch: Sequence[Delivery], routing: Routing) -> None:  # noqa: D102
        deferred = {}
        for retry in routing.retries:
            name = deferral_id(retry.delivery)
            deferred[name] = min(retry.delivery.published_at, deferred.get(name, retry.delivery.published_at))
        if deferred:
            self.defer(deferred)
        retried = {deferral_id(r.delivery) for r in routing.retries}
        settled = {
            deferral_id(d) for d in batch if d.seen_before
        } - retried  # committed or dead-lettered now: no longer anywhere in the pipeline
        if settled:
            self.settle(sorted(settled))
