"""Hand-off to RabbitMQ with publisher confirms, on the worker's event loop.

One ``AsyncioConnection`` per worker process runs on the process's event loop, with one confirm-mode channel.
A request coroutine publishes directly (no thread hop, no outbox) and awaits a future that the broker's
(often ``multiple``) Basic.Ack resolves, so concurrent requests share the broker's disk syncs while each
answers 201 only after the broker confirmed its own message. A background task connects, declares the
topology and reconnects with backoff; a nack, a return, a lost channel or a missing confirm fails the request.

Every message carries ``x-published-at-ms``: the stamp the caller passes (``published_at``: the time just before its
number or version was handed out, :class:`chat_api.model.Numbered`), or the publish time when none is given.
The publish must be confirmed within ``timeout`` of that stamp, never later, and is not even sent once that is
over: a message stamped ``s`` is in the broker or abandoned by ``s + timeout`` — what numbering recovery relies on
(:mod:`chat_api.numbering.reopening`).

Coalescing (``coalesce``, on by default): a publish does not go out at once; the publishes for one queue made in the
same loop turn (or within ``coalesce_wait`` seconds of the first) are sent together as one *bundle*
(:mod:`chat_common.wire.bundles`) at the end of the turn — one message, one confirm, one quorum-log entry, one
delivery to a writer, where there were as many as creates. Each caller still awaits its own outcome: the bundle's
confirm answers all of its callers, its nack or return fails all of them (and no other message's), its deadline is
its oldest stamp's. A lone publish is sent as a plain message, exactly as without coalescing. Under light load every
turn holds one publish, so nothing changes; under load, bundles grow with the load, and the broker's cost per create
falls with them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils import io_services_utils
from pika.channel import Channel

from chat_api.adapters.pika_callbacks import OneChannelClient, close_if_open, guarded
from chat_api.metrics_buffer import BUFFER
from chat_api.model import PublishError
from chat_common import metrics
from chat_common.clients.broker import BrokerNodes, asyncio_connection
from chat_common.wire.bundles import BUNDLE_CONTENT_TYPE, MAX_BUNDLE_BYTES, MAX_BUNDLE_UPSERTS, pack
from chat_common.wire.stamps import PUBLISHED_AT_HEADER, stamp_header

log = logging.getLogger(__name__)

PERSISTENT = pika.DeliveryMode.Persistent
JSON = "application/json"
FAIL_FAST_SECONDS = 1.0  # right after a failure, fail at once instead of making every request wait for a dead broker
# After this many refused (nacked) messages in a row *to one queue*, reconnect. RabbitMQ 3.10's quorum-queue client can
# keep refusing every message for a queue on a channel that began publishing to it while the queue's recorded leader
# was a node that had just died (tests/cluster/test_rabbit_failover.py: every chat create 503 "refused" for 25 s and
# more while message creates, on the same channel, went through); a new connection publishes normally. Counted per
# queue: the confirms of a busy queue must not hide a rarely used one that is refused every time.
NACKS_BEFORE_RECONNECT = 3


# pika has no public hook on its transport's writes, so the private method is wrapped (see _produce_joined);
# tests/unit/test_library_internals.py fails when a pika version changes the method wrapped (pinned 1.4.4).
_produce_frame_by_frame = io_services_utils._AsyncTransportBase._produce


def _produce_joined(transport: io_services_utils._AsyncTransportBase) -> None:
    """Send everything queued since the last wake-up in one ``send()``.

    pika 1.4 sends each queued frame with a system call of its own, and a publish is three frames; under load one
    loop turn queues dozens of publishes. Joining the buffers first makes that one system call (the rest of pika's
    write path, partial sends included, is unchanged). Installed by :class:`ConfirmingPublisher`.
    """
    buffers = transport._tx_buffers
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
    _produce_frame_by_frame(transport)


class _Waiting:
    """One caller's publish: what it sends, its stamp, the future it awaits and the tag of the message carrying it."""

    __slots__ = ("body", "future", "stamp", "tag")

    def __init__(self, body: bytes, stamp: float, future: asyncio.Future[None]) -> None:
        self.body = body
        self.stamp = stamp
        self.future = future
        self.tag = 0  # 0 until sent


def _fail(waiting: list[_Waiting], reason: str) -> None:
    for one in waiting:
        if not one.future.done():
            one.future.set_exception(PublishError(reason))


def _succeed(waiting: list[_Waiting]) -> None:
    for one in waiting:
        if not one.future.done():
            one.future.set_result(None)


class _Gathering:
    """The publishes for one queue waiting for the end of the loop turn (or the coalescing wait)."""

    __slots__ = ("handle", "size", "waiting")

    def __init__(self) -> None:
        self.waiting: list[_Waiting] = []
        self.size = 0  # bytes of the bundle so far
        self.handle: asyncio.Handle | None = None


class ConfirmingPublisher(OneChannelClient):
    """Publish persistent messages to named queues and wait for the broker's confirm (one per worker process)."""

    def __init__(
        self,
        broker: BrokerNodes,
        *,
        declare: Callable[[object], None],
        timeout: float = 5.0,
        connect_wait: float = 2.0,
        coalesce: bool = True,
        coalesce_wait: float = 0.0,
    ) -> None:
        io_services_utils._AsyncTransportBase._produce = _produce_joined  # see _produce_joined; idempotent
        self.broker = broker  # the nodes (chat_common.clients.broker.API profile): tried in turn, failing over
        self.declare = declare
        self.timeout = timeout
        self.connect_wait = connect_wait
        self.coalesce = coalesce
        self.coalesce_wait = coalesce_wait  # seconds a bundle may gather beyond its loop turn (0: none)
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncioConnection | None = None
        self._over: asyncio.Future[None] | None = None  # resolved when the current connection is closed or failed
        self._channel: Channel | None = None  # set only once in confirm mode with the topology declared
        self._ready = asyncio.Event()
        self._became_ready = self._closing = False
        self._pending: dict[int, list[_Waiting]] = {}  # delivery tag -> the callers it carries, in tag order
        self._timers: dict[int, asyncio.TimerHandle] = {}  # delivery tag -> its confirm deadline
        self._gathering: dict[str, _Gathering] = {}  # queue -> publishes not sent yet
        self._returned: set[int] = set()
        self._next_tag = 0
        self._last_failure = float("-inf")
        self._queue_of: dict[int, str] = {}  # delivery tag -> the queue it was published to
        self._refused_in_a_row: dict[str, int] = {}  # queue -> its messages refused in a row

    @property
    def is_ready(self) -> bool:
        """True while a confirm-mode channel is open (no waiting, no I/O)."""
        return self._channel is not None and self._channel.is_open

    async def start(self) -> None:
        """Start connecting in the background on the running loop; returns at once."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="amqp-publisher")

    async def publish(self, queue: str, body: bytes, published_at: float | None = None) -> None:
        """Publish persistent and mandatory to ``queue``, return once confirmed; else raise :class:`PublishError`.

        ``published_at``: when the number or version it carries was handed out (the stamp numbering recovery reads;
        the confirm must come within ``timeout`` of it); None: now."""
        if self._channel is None:
            await self._wait_ready()
        stamp = published_at or time.time()
        if stamp + self.timeout <= time.time():  # numbering recovery counts on nothing stamped this long ago arriving
            raise PublishError(f"message broker did not confirm within {self.timeout}s")
        waiting = _Waiting(body, stamp, asyncio.get_running_loop().create_future())
        if self.coalesce:
            self._gather(queue, waiting)
        else:
            self._send(queue, [waiting])
        try:
            await waiting.future
        finally:  # cancelled: once no caller of its message waits any more, nothing of the message stays behind
            if waiting.tag and all(one.future.done() for one in self._pending.get(waiting.tag, ())):
                self._forget(waiting.tag)

    def _gather(self, queue: str, waiting: _Waiting) -> None:
        """Add a publish to its queue's bundle; the bundle goes at the end of the loop turn, or now once full."""
        gathering = self._gathering.get(queue)
        if gathering is None:
            gathering = self._gathering[queue] = _Gathering()
            loop = asyncio.get_running_loop()
            if self.coalesce_wait > 0:
                gathering.handle = loop.call_later(self.coalesce_wait, self._send_gathered, queue)
            else:  # after every callback already ready in this turn: the other requests that reached here with it
                gathering.handle = loop.call_soon(self._send_gathered, queue)
        gathering.waiting.append(waiting)
        gathering.size += len(waiting.body) + 1
        if len(gathering.waiting) >= MAX_BUNDLE_UPSERTS or gathering.size >= MAX_BUNDLE_BYTES:
            self._send_gathered(queue)

    def _send_gathered(self, queue: str) -> None:
        gathering = self._gathering.pop(queue, None)
        if gathering is not None:
            if gathering.handle is not None:
                gathering.handle.cancel()
            self._send(queue, gathering.waiting)

    def _send(self, queue: str, waiting: list[_Waiting]) -> None:
        """Send one message carrying ``waiting`` (a bundle when several), or fail them all."""
        now = time.time()
        expired = [one for one in waiting if one.stamp + self.timeout <= now]
        if expired:  # waited for the connection or the coalescing wait too long: not sent at all
            _fail(expired, f"message broker did not confirm within {self.timeout}s")
            waiting = [one for one in waiting if one.stamp + self.timeout > now]
        # A caller cancelled meanwhile is still sent: its number was handed out, and a gap would stay a gap.
        if not waiting:
            return
        channel = self._channel
        if channel is None or not channel.is_open:
            _fail(waiting, "message broker unavailable")
            return
        tag = self._next_tag + 1
        if len(waiting) == 1:
            body, headers, content_type = waiting[0].body, {PUBLISHED_AT_HEADER: stamp_header(waiting[0].stamp)}, JSON
        else:
            body, headers = pack([one.body for one in waiting], [one.stamp for one in waiting])
            content_type = BUNDLE_CONTENT_TYPE
        properties = pika.BasicProperties(  # message_id: see _on_return
            message_id=str(tag), headers=headers, delivery_mode=PERSISTENT, content_type=content_type
        )
        try:
            channel.basic_publish("", queue, body, properties, mandatory=True)
        except pika.exceptions.AMQPError as exc:  # the channel is closing: nothing was sent
            _fail(waiting, f"message broker unavailable: {exc!r}")
            return
        # Count the tag only once sent: the broker numbers what it received, and one skew would misroute every ack.
        self._next_tag = tag
        BUFFER.observe(metrics.API_PUBLISH_BUNDLE_SIZE, len(waiting), queue)
        for one in waiting:
            one.tag = tag
        self._pending[tag] = waiting
        self._queue_of[tag] = queue
        deadline = min(one.stamp for one in waiting) + self.timeout
        self._timers[tag] = asyncio.get_running_loop().call_later(deadline - time.time(), self._expire, tag)

    def _forget(self, tag: int) -> list[_Waiting]:
        """Drop everything kept for a message; returns the callers it carried (none if already forgotten)."""
        timer = self._timers.pop(tag, None)
        if timer is not None:
            timer.cancel()
        self._queue_of.pop(tag, None)
        self._returned.discard(tag)
        return self._pending.pop(tag, None) or []

    async def close(self) -> None:
        """Close the connection: pending publishes fail at once and the reconnect task stops."""
        self._closing = True
        self._mark_down("publisher closed")
        for queue in list(self._gathering):  # not sent yet: "sending" them now fails them (the channel is gone)
            self._send_gathered(queue)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._close_connection(self.timeout)

    # -- background connection -------------------------------------------------------------------------------
    async def _wait_ready(self) -> Channel:
        if self._task is None or time.monotonic() - self._last_failure < FAIL_FAST_SECONDS:
            raise PublishError("message broker unavailable")
        try:
            await asyncio.wait_for(self._ready.wait(), self.connect_wait)
        except TimeoutError:
            raise PublishError("message broker unavailable") from None
        if self._channel is None:  # lost again between the wake-up and now
            raise PublishError("message broker unavailable")
        return self._channel

    async def _run(self) -> None:
        await self.broker.keep_connected(self._connect_and_serve, lambda: self._closing)

    async def _connect_and_serve(self, params: pika.URLParameters) -> bool:
        """Connect to one node and return when that connection is over; True if it became ready."""
        self._became_ready = False
        try:
            # Once per connection, before ready; in a thread because a blocking connection would stall the loop.
            await asyncio.to_thread(self._declare_with_blocking_connection, params)
            self._over = over = asyncio.get_running_loop().create_future()
            self._connection = asyncio_connection(params, self._on_open, self._on_connection_over)
            await asyncio.shield(over)  # shielded: close() still waits for it after cancelling this task
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever failed, this task must live on and retry
            log.warning("message broker %s:%s unavailable: %r", params.host, params.port, exc)
        self._mark_down("connection to the message broker lost")
        return self._became_ready

    def _declare_with_blocking_connection(self, params: pika.URLParameters) -> None:
        with pika.BlockingConnection(params) as connection:
            self.declare(connection.channel())

    def callback_failed(self) -> None:
        """A pika callback failed (:func:`~chat_api.adapters.pika_callbacks.guarded`): drop the connection."""
        self._mark_down("publisher callback failed")
        close_if_open(self._connection)

    def _mark_down(self, reason: str) -> None:
        """Not ready any more: fail every pending publish (its confirm can no longer arrive)."""
        self._channel = None
        self._ready.clear()
        self._last_failure = time.monotonic()
        pending, self._pending = self._pending, {}
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._returned.clear()
        self._queue_of.clear()
        self._refused_in_a_row.clear()  # a new channel starts afresh
        for waiting in pending.values():
            _fail(waiting, reason)

    # -- pika callbacks (on the loop) ------------------------------------------------------------------------
    @guarded
    def _on_connection_over(self, _connection: AsyncioConnection, reason: BaseException) -> None:
        """Connection failed to open or closed: the task's wait for this connection ends."""
        if not self._closing:
            log.warning("message broker connection failed or closed: %r", reason)
        self._mark_down(f"connection to the message broker lost: {reason!r}")
        self._end_wait()

    @guarded
    def _on_channel_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        on_select_ok = functools.partial(self._on_select_ok, channel)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_select_ok)

    @guarded
    def _on_select_ok(self, channel: Channel, _frame: object) -> None:
        self._next_tag = 0  # the broker numbers publishes per channel, from 1
        self._channel = channel
        self._became_ready = True
        self._ready.set()
        log.info("publisher ready (confirm mode)")

    @guarded
    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        self._mark_down(f"message broker closed the channel: {reason!r}")
        # One recovery path for everything: drop the connection; the task reconnects and declares again.
        if not self._closing and self._connection is not None and self._connection.is_open:
            self._connection.close()

    @guarded
    def _on_return(self, _channel: Channel, _method: object, properties: pika.BasicProperties, _body: bytes) -> None:
        # An unroutable message comes back before its ack: remember its tag so that the ack fails it.
        if properties.message_id and properties.message_id.isdigit():
            self._returned.add(int(properties.message_id))

    @guarded
    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:  # every pending tag up to this one; the dict's insertion order is tag order
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, self._pending))
        else:
            tags = [method.delivery_tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            queue = self._queue_of.get(tag)
            if queue is not None:
                self._refused_in_a_row[queue] = self._refused_in_a_row.get(queue, 0) + 1 if nacked else 0
            returned = tag in self._returned
            waiting = self._forget(tag)  # none: timed out or cancelled meanwhile
            if nacked:
                _fail(waiting, "message broker refused the message")
            elif returned:
                _fail(waiting, "message broker has no such queue")
            else:
                _succeed(waiting)
        refused = max(self._refused_in_a_row.values(), default=0)
        if refused >= NACKS_BEFORE_RECONNECT and self._connection is not None and self._connection.is_open:
            log.warning("%d messages to one queue refused in a row; reconnecting", refused)
            self._refused_in_a_row.clear()
            self._connection.close()  # the task reconnects (to the next node) and declares again

    def _expire(self, tag: int) -> None:
        _fail(self._forget(tag), f"message broker did not confirm within {self.timeout}s")
