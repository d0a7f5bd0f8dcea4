"""One consumer of announcements per API worker, on its own AMQP connection on the worker's event loop.

It declares the announcement exchange and an exclusive, auto-delete, server-named queue (gone with the connection),
consumes it without acknowledgements (announcements are transient hints; a lost one is recovered from MySQL) and
binds it to the routing key of each chat that has local listeners (:meth:`bind`, :meth:`unbind`). The connection is
separate from the publisher's: stream traffic never queues behind, or delays, the confirms of the create path, and
a worker that serves no stream never opens it (the hub starts it with the first stream).

Lost connection → ``on_lost`` (the hub forgets its bindings), reconnect with backoff → ``on_ready`` (the hub binds
its chats again and re-reads them from MySQL: announcements published while the queue did not exist are gone).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel

from chat_api.adapters.pika_callbacks import OneChannelClient, close_if_open, guarded
from chat_common.clients.broker import BrokerNodes, asyncio_connection
from chat_common.wire.topology import declare_announcements

log = logging.getLogger(__name__)

# Bound on what the broker keeps for a worker that stalls; beyond it the oldest announcements are dropped (the
# streams' gap rule reads those rows from MySQL).
MAX_QUEUED = 100_000


class AnnouncementSubscriber(OneChannelClient):
    """The worker's announcement consumer (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerNodes,
        exchange: str,
        *,
        on_announcement: Callable[[str, bytes], None],
        on_ready: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.broker = broker  # the nodes (chat_common.clients.broker.API profile): tried in turn, failing over
        self.exchange = exchange
        self.on_announcement = on_announcement
        self.on_ready = on_ready
        self.on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncioConnection | None = None
        self._channel: Channel | None = None
        self._queue: str | None = None
        self._over: asyncio.Future[None] | None = None
        self._closing = False
        self._was_ready = False

    @property
    def is_ready(self) -> bool:
        """True while the queue exists and is consumed (bindings can be made)."""
        return self._queue is not None and self._channel is not None and self._channel.is_open

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-announcements")

    def bind(self, key: str) -> asyncio.Future[None] | None:
        """Bind the queue to one chat's routing key; a future resolved on Bind-Ok, or None while not ready."""
        if not self.is_ready:
            return None
        future = asyncio.get_running_loop().create_future()

        def done(_frame: object) -> None:
            if not future.done():
                future.set_result(None)

        self._channel.queue_bind(self._queue, self.exchange, routing_key=key, callback=done)
        return future

    def unbind(self, key: str) -> None:
        """Stop receiving one chat's announcements (no-op while not ready: the queue is gone anyway)."""
        if self.is_ready:
            self._channel.queue_unbind(self._queue, self.exchange, routing_key=key, callback=lambda _frame: None)

    async def close(self) -> None:
        """Stop consuming and close the connection."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._close_connection(5)

    # -- background connection -------------------------------------------------------------------------------
    async def _run(self) -> None:
        await self.broker.keep_connected(self._connect_and_serve, lambda: self._closing)

    async def _connect_and_serve(self, params: pika.URLParameters) -> bool:
        """Connect to one node and return when that connection is over; True if it became ready."""
        self._was_ready = False
        self._over = over = asyncio.get_running_loop().create_future()
        try:
            self._connection = asyncio_connection(params, self._on_open, self._on_connection_over)
            await asyncio.shield(over)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # this task must live on and retry, whatever failed
            log.warning("announcement subscriber: broker %s:%s unavailable: %r", params.host, params.port, exc)
        self._mark_down()
        return self._was_ready

    def callback_failed(self) -> None:
        """A pika callback failed (:func:`~chat_api.adapters.pika_callbacks.guarded`): reconnect from scratch."""
        close_if_open(self._connection)

    def _mark_down(self) -> None:
        was_ready = self._queue is not None
        self._channel = None
        self._queue = None
        if was_ready:
            self.on_lost()

    @guarded
    def _on_connection_over(self, _connection: AsyncioConnection, reason: BaseException) -> None:
        if not self._closing:
            log.warning("announcement subscriber: connection failed or closed: %r", reason)
        self._mark_down()
        self._end_wait()

    @guarded
    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        declare_announcements(channel, self.exchange, callback=self._on_exchange_ok)

    @guarded
    def _on_exchange_ok(self, _frame: object) -> None:
        self._channel.queue_declare(
            "",
            exclusive=True,
            auto_delete=True,
            arguments={"x-max-length": MAX_QUEUED},
            callback=self._on_queue_ok,
        )

    @guarded
    def _on_queue_ok(self, frame: Any) -> None:
        queue = frame.method.queue
        self._channel.basic_consume(
            queue, self._on_message, auto_ack=True, callback=functools.partial(self._on_consume_ok, queue)
        )

    @guarded
    def _on_consume_ok(self, queue: str, _frame: object) -> None:
        self._queue = queue
        self._was_ready = True
        log.info("announcement subscriber ready (queue %s)", queue)
        self.on_ready()

    @guarded
    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        self._mark_down()
        if not self._closing:
            log.warning("announcement subscriber: channel closed: %r", reason)
            if self._connection is not None and self._connection.is_open:
                self._connection.close()  # one recovery path: reconnect, declare, bind again

    def _on_message(self, _channel: Channel, method: Any, _properties: Any, body: bytes) -> None:
        try:
            self.on_announcement(method.routing_key, body)
        except Exception:  # a bad announcement must not take the consumer down
            log.exception("announcement not handled")
