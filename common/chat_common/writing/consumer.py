"""The one batching consumer loop every writer runs; a writer supplies only "apply this batch".

Guarantees: a message is acknowledged only after the batch holding it is committed; a batch is flushed
when it reaches ``batch_size`` or its first message is ``max_wait`` seconds old; transient failures
(database or broker down) are retried with backoff while the batch is held; messages the handler asks to
retry go to a retry tier and those it cannot ever apply to the dead-letter queue; SIGTERM finishes
the batch in hand, acknowledges it and closes. Broker restarts are survived by reconnecting with backoff.

The loop also drains its queue's retry tiers: :class:`chat_common.writing.retry_tiers.RetryDrainer`, on channels of its
own on the same connection, holds each tier message until it is due and returns it to the work queue (confirmed, then
acknowledged). What it holds counts as held by the loop (:class:`LoopState`).

Several broker nodes (``RABBITMQ_URL`` listing a cluster's nodes, or one address in front of them): connections
come from :class:`chat_common.clients.broker.BrokerNodes`, which starts with the node *after* the one last lost.
Deliveries held when the connection died are dropped unacknowledged (the broker delivers them again, perhaps
through another node); the handler's upserts are idempotent, so a redelivered batch stores nothing twice.

Bundles (``chat_common.wire.bundles``): a message with ``x-bundle`` holds several upserts, which the loop unpacks
into one :class:`Delivery` each (its own body and publish stamp; the message's delivery tag, redelivered flag and
attempt, and ``parts`` saying how many share the tag). Everything after works per upsert: the handler, bisection,
the retry tiers (a retried part goes to its tier alone, as a single message), the deferral ledger, announcements,
metrics and the numbering-recovery counts. A dead part is *parked* alone in ``<queue>.dead`` (published, confirmed)
instead of rejecting the message, whose other parts are committed (``chat_common.writing.routing``); a malformed
bundle is one delivery, rejected whole into ``<queue>.dead``. All the parts of a message are in the same batch (a
flush takes the whole buffer), so its tag is acknowledged once, after all of them. Messages without ``x-bundle`` are
single upserts, as before bundles: both are consumed side by side, so upgrade the writers first, then turn coalescing
on in the API (``PUBLISH_COALESCE``).

The loop only consumes, flushes and acknowledges. What else a writer does while it runs — metrics, its
heartbeat, queue-depth sampling, a periodic chore — are :class:`ConsumerHook` s
(``chat_common.writing.consumer_hooks``), called at named points like kombu's ``ConsumerMixin`` callbacks or dramatiq's
middleware. Finding the message at fault in a failing batch is
:func:`chat_common.writing.poison.apply_isolating_poison`; where each message of a finished batch goes (ack, retry tier,
dead-letter) is :func:`chat_common.writing.routing.route`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pika
import pika.exceptions

from chat_common.clients.broker import BrokerNodes
from chat_common.wire.bundles import MAX_BUNDLE_UPSERTS, BundleError, is_bundle, unpack
from chat_common.wire.topology import WorkQueue
from chat_common.writing.batches import (
    ATTEMPT_HEADER,
    PUBLISHED_AT_HEADER,
    BatchHandler,
    BatchResult,
    Delivery,
    decode_batch,
    read_stamp,
)
from chat_common.writing.poison import apply_isolating_poison
from chat_common.writing.retry_tiers import RetryDrainer
from chat_common.writing.routing import Routing, route, send

__all__ = [
    "ATTEMPT_HEADER",
    "BatchConsumer",
    "BatchHandler",
    "BatchResult",
    "ConsumerHook",
    "Delivery",
    "LoopState",
    "decode_batch",
]

log = logging.getLogger(__name__)

# Weight of the newest message in the running mean of upserts per message (the prefetch rule, BatchConsumer).
PARTS_MEAN_WEIGHT = 0.2


@dataclass(frozen=True, slots=True)
class LoopState:
    """What a hook may look at on each turn of the loop."""

    consumer_id: str
    queue: WorkQueue
    held: int  # upserts received and not yet acknowledged (of the work queue and of its retry tiers)
    connection: object  # the broker connection (the depth sampler opens a short-lived channel on it)
    # seconds the most overdue held retry-tier message was late (chat_common.writing.retry_tiers)
    retry_overdue: float = 0.0
    # For numbering recovery (see chat_api.numbering.reopening), reported in the writer heartbeat:
    oldest: float | None = None  # lowest publish stamp among the held deliveries (None: holds nothing)
    last: float = 0.0  # publish stamp of the latest first-attempt delivery received
    firsts: int = 0  # first-attempt upserts received since the consumer started (only grows; a bundle counts each)
    # Broker connection number, also bumped by a re-subscription (the prefetch rule): changes whenever the broker may
    # have requeued what it had sent this writer.
    session: int = 0
    deliveries: int = 0  # every upsert received, of the work queue and of its retry tiers (only grows)


class ConsumerHook:
    """Named points of the loop a side concern can attach to; every method is a no-op unless overridden."""

    def on_message(self, queue: WorkQueue, delivery: Delivery) -> None:
        """A delivery was taken from the broker."""

    def on_iteration(self, state: LoopState) -> None:
        """One turn of the loop ended (roughly every ``max_wait`` seconds, or 0.25 s when idle)."""

    def on_batch_failed(self, queue: WorkQueue, batch: Sequence[Delivery], exc: BaseException) -> None:
        """A transient failure: the batch is held and tried again after a backoff."""

    def on_batch_applied(self, queue: WorkQueue, batch: Sequence[Delivery], seconds: float) -> None:
        """The handler finished the batch (committed what it could apply)."""

    def on_batch_routed(self, queue: WorkQueue, batch: Sequence[Delivery], routing: Routing) -> None:
        """The batch is committed and its fate decided, nothing sent or acknowledged yet. A transient error raised
        here holds the batch (nothing is acknowledged) and the hook is called again after a backoff."""

    def on_batch_done(self, queue: WorkQueue, routing: Routing) -> None:
        """The batch's deliveries were acknowledged, sent to a retry tier or dead-lettered."""

    def on_stop(self, state: LoopState) -> None:
        """The loop left a connection after finishing the batch in hand (stop requested)."""


class BatchConsumer:
    """Consume one work queue in batches; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        broker: BrokerNodes,
        queue: WorkQueue,
        handler: BatchHandler,
        transient_errors: tuple[type[BaseException], ...],
        batch_size: int = 500,
        max_wait: float = 0.2,
        max_attempts: int = 40,
        declare: Callable[[object], None] | None = None,
        hooks: Sequence[ConsumerHook] = (),
        retry_prefetch: int = 1000,
        connect: Callable[[pika.URLParameters], object] = pika.BlockingConnection,
    ) -> None:
        self.broker = broker  # the nodes, with the writers' connection profile (chat_common.clients.broker.WRITER)
        self.queue = queue
        self.handler = handler
        self.transient_errors = transient_errors
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.max_attempts = max_attempts
        self.declare = declare or queue.declare
        self.hooks = list(hooks)
        self.connect = connect  # pika's BlockingConnection (a fake of it in unit tests)
        self.drainer = RetryDrainer(queue, retry_prefetch)
        self.consumer_id = f"{queue.name}|{uuid.uuid4().hex[:12]}"
        self.should_stop = False
        self._buffer: list[Delivery] = []
        self._first_at = 0.0
        self._firsts = 0
        self._deliveries = 0
        self._last = 0.0
        self._session = 0
        # Running mean of upserts per message, kept across connections; the largest bundle until shown otherwise.
        self._mean_parts = float(MAX_BUNDLE_UPSERTS)
        self._buffered_messages = 0  # messages (not upserts) in the buffer
        self._prefetch = 0  # the work queue consumer's prefetch on the current connection
        self._consumer_tag = ""

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
                self._buffered_messages = 0
                self.drainer.held.clear()
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc.__class__.__name__, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        log.info("consumer stopped")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_stop and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _state(self, connection) -> LoopState:
        stamps = [d.published_at for d in self._buffer]
        held_in_tiers = self.drainer.held.oldest_stamp()
        oldest = min([*stamps, held_in_tiers] if held_in_tiers is not None else stamps, default=None)
        return LoopState(
            self.consumer_id,
            self.queue,
            len(self._buffer) + len(self.drainer.held),
            connection,
            self.drainer.overdue,
            oldest,
            self._last,
            self._firsts,
            self._session,
            self._deliveries + self.drainer.received,
        )

    # -- the loop --------------------------------------------------------------------------------------------
    def _consume(self) -> None:
        connection = self.broker.connect_blocking(self.connect)
        self._session += 1
        try:
            channel = connection.channel()
            self.declare(channel)
            retry_channel = connection.channel()
            retry_channel.confirm_delivery()
            cancelled: list[object] = []
            # The broker cancels a consumer whose queue went away or moved (e.g. a queue's node left the cluster);
            # the channel stays open, so without this the loop would wait for deliveries that never come.
            channel.add_on_cancel_callback(cancelled.append)
            self._subscribe(channel, self._target_prefetch())
            self.drainer.attach(connection)  # after the work queue: a writer of the queue drains its tiers
            log.info("consuming %s and its retry tiers as %s", self.queue.name, self.consumer_id)
            while not self.should_stop:
                if not channel.is_open or not retry_channel.is_open:
                    # A channel the broker closed does not make the connection raise: reconnect explicitly.
                    raise pika.exceptions.ChannelWrongStateError("a channel was closed by the broker")
                if cancelled:
                    raise pika.exceptions.ChannelWrongStateError("the broker cancelled the consumer")
                self.drainer.check()
                wait = self.max_wait - (time.monotonic() - self._first_at) if self._buffer else 0.25
                connection.process_data_events(time_limit=max(wait, 0.0))
                if self._buffer and (
                    len(self._buffer) >= self.batch_size
                    or self._buffered_messages >= self._prefetch  # the broker sends no more before an ack
                    or time.monotonic() - self._first_at >= self.max_wait
                ):
                    self._flush(connection, channel, retry_channel)
                    self._adjust_prefetch(channel)
                self.drainer.release()
                state = self._state(connection)
                for hook in self.hooks:
                    hook.on_iteration(state)
            if self._buffer:
                self._flush(connection, channel, retry_channel)
            state = self._state(connection)
            for hook in self.hooks:
                hook.on_stop(state)
        finally:
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    # -- prefetch: a bounded number of upserts held ------------------------------------------------------------
    # The broker counts prefetch in messages, and a message holds 1 upsert or a bundle of up to MAX_BUNDLE_UPSERTS
    # (~400 bytes held each, more while a batch is written). The rule: hold about ``2 * batch_size`` upserts, as before
    # bundles — prefetch = 2 * batch_size / (running mean of upserts per message), between
    # 2 * batch_size / MAX_BUNDLE_UPSERTS and 2 * batch_size messages. The mean starts at MAX_BUNDLE_UPSERTS (a writer
    # started in front of a backlog of the largest bundles takes 8 of them at batch 500, not 1,000: 128,000 upserts
    # in one batch), so singles start with a small window that grows within a few batches (a batch is flushed as
    # soon as it holds the whole window: no more comes before an ack). RabbitMQ applies a new prefetch only to a new
    # consumer, so the consumer is re-subscribed, after a flush, when the right prefetch is half the current one or
    # less, or twice or more. A factor of 2 either way: the running mean moves with every message, and a narrower
    # band would re-subscribe on every swing of a varying load; once settled it is rare (when the API's load changes
    # its bundles' size), and pika requeues what it received and had not handed over. Held at once: about
    # 1-4 * batch_size upserts in a steady stream; at the very worst, the window singles opened (2 * batch_size
    # messages) filled by the largest bundles before the next flush (~50 MB at batch 500; the drain benchmark reports
    # the writers' peak RSS).
    def _target_prefetch(self) -> int:
        window = self.batch_size * 2
        floor = math.ceil(window / MAX_BUNDLE_UPSERTS)
        return max(floor, min(window, math.ceil(window / max(self._mean_parts, 1.0))))

    def _subscribe(self, channel, prefetch: int) -> None:
        channel.basic_qos(prefetch_count=prefetch)
        self._prefetch = prefetch
        self._consumer_tag = channel.basic_consume(self.queue.name, self._on_message)

    def _adjust_prefetch(self, channel) -> None:
        target = self._target_prefetch()
        if target * 2 <= self._prefetch or target >= self._prefetch * 2:
            log.info("prefetch %d -> %d (%.1f upserts per message)", self._prefetch, target, self._mean_parts)
            channel.basic_cancel(self._consumer_tag)  # pika requeues what it had received and not handed over
            # A requeue the numbering recovery must see (LoopState.session: "the broker may have requeued"): a round
            # spanning it does not count this writer as live, and waits for the next one.
            self._session += 1
            self._subscribe(channel, target)

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        headers = properties.headers or {}
        attempt = headers.get(ATTEMPT_HEADER, 0)
        attempt = attempt if isinstance(attempt, int) else 0
        stamp = read_stamp(headers.get(PUBLISHED_AT_HEADER))
        tag, redelivered = method.delivery_tag, method.redelivered
        if is_bundle(headers):
            try:
                parts = unpack(body, headers)
            except BundleError as exc:
                log.error("malformed bundle (tag %s): %s", tag, exc)
                deliveries = [Delivery(body, tag, redelivered, attempt, stamp, unreadable=f"malformed bundle: {exc}")]
            else:
                deliveries = [Delivery(b, tag, redelivered, attempt, at, len(parts)) for b, at in parts]
        else:
            deliveries = [Delivery(body, tag, redelivered, attempt, stamp)]
        self._mean_parts += (len(deliveries) - self._mean_parts) * PARTS_MEAN_WEIGHT
        self._buffered_messages += 1
        if not self._buffer:
            self._first_at = time.monotonic()
        for delivery in deliveries:  # numbering recovery counts upserts, each with its own stamp
            self._deliveries += 1
            if attempt == 0:
                self._firsts += 1
                self._last = delivery.published_at
            self._buffer.append(delivery)
            for hook in self.hooks:
                hook.on_message(self.queue, delivery)

    def _flush(self, connection, channel, retry_channel) -> None:
        batch, self._buffer = self._buffer, []
        self._buffered_messages = 0
        result = self._apply_with_retries(connection, batch)
        if result is None:  # stop requested while the database was down: leave the batch to the broker
            raise pika.exceptions.ConnectionClosedByClient(200, "stopping with an unwritten batch")
        routing = route(batch, result, self.queue, self.max_attempts)
        self._routed_with_retries(connection, batch, routing)
        send(routing, channel, retry_channel)
        for hook in self.hooks:
            hook.on_batch_done(self.queue, routing)

    def _routed_with_retries(self, connection, batch: list[Delivery], routing: Routing) -> None:
        """Run the ``on_batch_routed`` hooks until they all succeed; nothing is sent or acknowledged before."""
        backoff = 0.2
        while True:
            try:
                for hook in self.hooks:
                    hook.on_batch_routed(self.queue, batch, routing)
                return
            except self.transient_errors as exc:
                log.warning("batch of %d held: %s; retrying in %.1fs", len(batch), exc, backoff)
                self.drainer.release()  # retried messages keep coming back while this batch waits
                connection.sleep(backoff)
                if self.should_stop:  # leave the batch to the broker: it is redelivered, and committed again
                    raise pika.exceptions.ConnectionClosedByClient(200, "stopping with an unrouted batch") from None
                backoff = min(backoff * 2, 5.0)

    def _apply(self, batch: list[Delivery]) -> BatchResult:
        """The handler's result on the readable deliveries; the unreadable ones (malformed bundles) are dead."""
        readable = [d for d in batch if not d.unreadable]
        result = apply_isolating_poison(self.handler, readable, self.transient_errors) if readable else BatchResult()
        result.dead.extend((d, d.unreadable) for d in batch if d.unreadable)
        return result

    def _apply_with_retries(self, connection, batch: list[Delivery]) -> BatchResult | None:
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                result = self._apply(batch)
            except self.transient_errors as exc:
                for hook in self.hooks:
                    hook.on_batch_failed(self.queue, batch, exc)
                log.warning("batch of %d failed (%s); retrying in %.1fs", len(batch), exc, backoff)
                self.drainer.release()  # retried messages keep coming back while this batch waits
                connection.sleep(backoff)  # keeps the broker heartbeat alive while we wait
                if self.should_stop:
                    return None
                backoff = min(backoff * 2, 5.0)
                continue
            for hook in self.hooks:
                hook.on_batch_applied(self.queue, batch, time.monotonic() - started)
            return result
