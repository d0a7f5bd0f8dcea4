"""The one batching consumer loop every writer runs; a writer supplies only "apply this batch".

Guarantees: a message is acknowledged only after the batch holding it is committed; a batch is flushed
when it reaches ``batch_size`` or its first message is ``max_wait`` seconds old; transient failures
(database or broker down) are retried with backoff while the batch is held; messages the handler asks to
retry go to a delayed-retry queue and those it cannot ever apply to the dead-letter queue; SIGTERM finishes
the batch in hand, acknowledges it and closes. Broker restarts are survived by reconnecting with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pika
import pika.exceptions

from chat_common import metrics
from chat_common.topology import WorkQueue

log = logging.getLogger(__name__)

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


Heartbeat = Callable[[str, int], None]
Tick = Callable[[], None]


class BatchConsumer:
    """Consume one work queue in batches; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        amqp_url: str,
        queue: WorkQueue,
        handler: BatchHandler,
        transient_errors: tuple[type[BaseException], ...],
        batch_size: int = 500,
        max_wait: float = 0.2,
        max_attempts: int = 40,
        heartbeat: Heartbeat | None = None,
        declare: Callable[[object], None] | None = None,
        tick: Tick | None = None,
        tick_every: float = 2.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.queue = queue
        self.handler = handler
        self.transient_errors = transient_errors
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_attempts = max_attempts
        self.heartbeat = heartbeat
        self.declare = declare or queue.declare
        self.tick = tick
        self.tick_every = tick_every
        self._last_tick = 0.0
        self.consumer_id = f"{queue.name}|{uuid.uuid4().hex[:12]}"
        self.should_stop = False
        self._buffer: list[Delivery] = []
        self._first_at = 0.0
        self._last_beat = 0.0
        self._last_depth = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask the loop to finish the batch in hand and stop."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, *_: object) -> None:
        log.info("stop requested; finishing the batch in hand")
        self.should_stop = True

    def run(self) -> None:
        """Consume until asked to stop, reconnecting with backoff after broker failures."""
        backoff = 0.5
        while not self.should_stop:
            try:
                self._consume()
                backoff = 0.5
            except (pika.exceptions.AMQPError, OSError) as exc:
                # Tags from a dead channel mean nothing on the next one; the broker redelivers those messages.
                self._buffer.clear()
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc.__class__.__name__, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        log.info("consumer stopped")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_stop and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    # -- the loop --------------------------------------------------------------------------------------------
    def _consume(self) -> None:
        params = pika.URLParameters(self.amqp_url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            self.declare(channel)
            channel.basic_qos(prefetch_count=self.batch_size * 2)
            retry_channel = connection.channel()
            retry_channel.confirm_delivery()
            channel.basic_consume(self.queue.name, self._on_message)
            log.info("consuming %s as %s", self.queue.name, self.consumer_id)
            while not self.should_stop:
                if not channel.is_open or not retry_channel.is_open:
                    # A channel the broker closed does not make the connection raise: reconnect explicitly.
                    raise pika.exceptions.ChannelWrongStateError("a channel was closed by the broker")
                wait = self.max_wait - (time.monotonic() - self._first_at) if self._buffer else 0.25
                connection.process_data_events(time_limit=max(wait, 0.0))
                if self._buffer and (
                    len(self._buffer) >= self.batch_size or time.monotonic() - self._first_at >= self.max_wait
                ):
                    self._flush(connection, channel, retry_channel)
                self._beat()
                self._sample_depth(connection)
                self._run_tick()
            if self._buffer:
                self._flush(connection, channel, retry_channel)
            self._beat(force=True)
        finally:
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        headers = properties.headers or {}
        attempt = headers.get(ATTEMPT_HEADER, 0)
        if not self._buffer:
            self._first_at = time.monotonic()
        self._buffer.append(
            Delivery(body, method.delivery_tag, method.redelivered, attempt if isinstance(attempt, int) else 0)
        )
        metrics.WRITER_CONSUMED.labels(self.queue.name).inc()
        if method.redelivered:
            metrics.WRITER_REDELIVERED.labels(self.queue.name).inc()

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.heartbeat and (force or now - self._last_beat >= 0.2):
            self._last_beat = now
            try:
                self.heartbeat(self.consumer_id, len(self._buffer))
            except self.transient_errors as exc:
                log.debug("heartbeat not recorded: %s", exc)

    def _run_tick(self) -> None:
        """The writer's periodic chore (the message-writer drains its search backlog here)."""
        now = time.monotonic()
        if self.tick is None or now - self._last_tick < self.tick_every:
            return
        self._last_tick = now
        try:
            self.tick()
        except self.transient_errors as exc:
            log.warning("periodic task failed: %s", exc)

    def _sample_depth(self, connection, every: float = 5.0) -> None:
        """Export the ready count of the work, retry and dead-letter queues (for autoscaling views and alerts)."""
        now = time.monotonic()
        if now - self._last_depth < every:
            return
        self._last_depth = now
        names = [(self.queue.name, "work"), (self.queue.dead_letter, "dead")]
        names += [(name, "retry") for name in self.queue.retry_queues]
        channel = connection.channel()
        try:
            for name, kind in names:
                ok = channel.queue_declare(name, passive=True).method
                metrics.QUEUE_DEPTH.labels(name, kind).set(ok.message_count)
        finally:
            if channel.is_open:
                channel.close()

    def _flush(self, connection, channel, retry_channel) -> None:
        batch, self._buffer = self._buffer, []
        result = self._apply_with_retries(connection, batch)
        if result is None:  # stop requested while the database was down: leave the batch to the broker
            raise pika.exceptions.ConnectionClosedByClient(200, "stopping with an unwritten batch")
        name = self.queue.name
        for delivery, reason in result.retry:
            attempt = delivery.attempt + 1
            if attempt > self.max_attempts:
                result.dead.append((delivery, f"gave up after {self.max_attempts} attempts: {reason}"))
                continue
            retry_channel.basic_publish(
                "",
                self.queue.retry(attempt),
                delivery.body,
                pika.BasicProperties(delivery_mode=2, headers={ATTEMPT_HEADER: attempt}),
                mandatory=True,
            )
            metrics.WRITER_RETRIED.labels(name).inc()
        for delivery, reason in result.dead:
            log.error("dead-lettering message (tag %s): %s", delivery.delivery_tag, reason)
            channel.basic_nack(delivery.delivery_tag, requeue=False)
            metrics.WRITER_DEAD_LETTERED.labels(name, reason.split(":")[0][:40]).inc()
        # The channel holds no other unacked tags, so acknowledging the highest tag still outstanding covers the
        # batch. Never a nacked tag: acknowledging it again makes the broker close the channel (406).
        dead_tags = {d.delivery_tag for d, _ in result.dead}
        remaining = [d.delivery_tag for d in batch if d.delivery_tag not in dead_tags]
        if remaining:
            channel.basic_ack(max(remaining), multiple=True)
        applied = len(batch) - len(result.retry) - len(result.dead)
        metrics.WRITER_WRITTEN.labels(name).inc(max(applied, 0))

    def _apply_with_retries(self, connection, batch: list[Delivery]) -> BatchResult | None:
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                result = self._apply_isolating_poison(batch)
            except self.transient_errors as exc:
                metrics.WRITER_BATCH_FAILURES.labels(self.queue.name).inc()
                log.warning("batch of %d failed (%s); retrying in %.1fs", len(batch), exc, backoff)
                connection.sleep(backoff)  # keeps the broker heartbeat alive while we wait
                if self.should_stop:
                    return None
                backoff = min(backoff * 2, 5.0)
                continue
            metrics.WRITER_BATCH_SIZE.labels(self.queue.name).observe(len(batch))
            metrics.WRITER_WRITE_SECONDS.labels(self.queue.name).observe(time.monotonic() - started)
            return result

    def _apply_isolating_poison(self, batch: list[Delivery]) -> BatchResult:
        """Apply the batch; when it fails for a non-transient reason, halve it to find the message at fault."""
        try:
            return self.handler(batch)
        except self.transient_errors:
            raise
        except Exception as exc:
            if len(batch) == 1:
                return BatchResult(dead=[(batch[0], f"unappliable: {exc.__class__.__name__}: {exc}"[:500])])
            log.warning("batch of %d failed (%s); splitting it", len(batch), exc.__class__.__name__)
            middle = len(batch) // 2
            first = self._apply_isolating_poison(batch[:middle])
            second = self._apply_isolating_poison(batch[middle:])
            return BatchResult(retry=first.retry + second.retry, dead=first.dead + second.dead)
