"""Hand-off to RabbitMQ with publisher confirms, shared by every request thread of a worker process.

A blocking ``confirm_delivery`` channel waits for one broker disk sync per message (~1.6k msg/s here).
Instead one I/O thread (a greenlet under gevent workers) per process owns an asynchronous pika connection;
request threads put their publish in an outbox and wait on a one-shot lock that the broker's (often
``multiple``) Basic.Ack releases. Concurrent requests therefore share disk syncs, and each still answers 201
only after the broker confirmed its own message. The I/O thread is woken once per batch of queued publishes,
not once per message: under load one wake-up, one loop turn and one socket write carry many publishes
(see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import pika
import pika.exceptions
import pika.spec

log = logging.getLogger(__name__)

PERSISTENT_JSON = dict(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


class PublishError(Exception):
    """The broker did not confirm the message: the caller must not report success."""


class _Waiter:
    """One request thread waiting for its confirm: a lock taken at birth, released once by the I/O thread.

    Cheaper than a ``Future`` (no condition variable, no callbacks): the I/O thread resolves many per ack.
    """

    __slots__ = ("_lock", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.error: PublishError | None = None

    def resolve(self, error: PublishError | None = None) -> None:
        self.error = error
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)


class ConfirmingPublisher:
    """Publish persistent messages to named queues and wait for the broker's confirm."""

    def __init__(
        self,
        amqp_url: str,
        *,
        declare: Callable[[object], None],
        timeout: float = 5.0,
        connect_wait: float = 2.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.declare = declare
        self.timeout = timeout
        self.connect_wait = connect_wait
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._ready = threading.Event()
        self._closing = False
        self._pending: dict[int, _Waiter] = {}
        self._outbox: list[tuple[str, bytes, _Waiter]] = []
        self._outbox_lock = threading.Lock()
        self._wake_scheduled = False
        self._returned: set[int] = set()
        self._next_tag = 0
        self._last_failure = 0.0

    # -- request threads -------------------------------------------------------------------------------------
    def publish(self, queue: str, body: bytes) -> None:
        """Publish and block until confirmed; raises :class:`PublishError` on nack, return, loss or timeout."""
        self._ensure_started()
        if not self._ready.is_set():
            # Right after a failure, fail fast instead of making every request wait for a broker that is down.
            wait = 0.0 if time.monotonic() - self._last_failure < 1.0 else self.connect_wait
            if not self._ready.wait(wait):
                raise PublishError("message broker unavailable")
        connection = self._connection
        waiter = _Waiter()
        with self._outbox_lock:
            self._outbox.append((queue, body, waiter))
            wake, self._wake_scheduled = not self._wake_scheduled, True
        if wake:
            try:
                connection.ioloop.add_callback_threadsafe(self._publish_outbox)
            except (AttributeError, pika.exceptions.AMQPError, RuntimeError) as exc:
                self._fail_outbox(PublishError(f"message broker unavailable: {exc}"))
        if not waiter.wait(self.timeout):
            raise PublishError("message broker did not confirm in time")
        if waiter.error is not None:
            raise waiter.error

    @property
    def is_ready(self) -> bool:
        """True while a confirm channel is open."""
        self._ensure_started()
        return self._ready.is_set() or self._ready.wait(self.connect_wait)

    def close(self) -> None:
        """Close the connection (pending publishes fail) and stop the I/O thread."""
        self._closing = True
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError, RuntimeError, AttributeError):
                connection.ioloop.add_callback_threadsafe(self._close_in_loop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- I/O thread ------------------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        backoff = 0.2
        while not self._closing:
            try:
                self._declare_topology()
                params = pika.URLParameters(self.amqp_url)
                params.heartbeat = 30
                self._connection = pika.SelectConnection(
                    params,
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                self._connection.ioloop.start()
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.warning("broker unreachable: %s", exc)
            self._ready.clear()
            self._last_failure = time.monotonic()
            self._fail_pending(PublishError("connection to the message broker lost"))
            self._fail_outbox(PublishError("connection to the message broker lost"))
            if self._closing:
                break
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            if self._ready.is_set():
                backoff = 0.2

    def _declare_topology(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            self.declare(connection.channel())
        finally:
            connection.close()

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection, error) -> None:
        log.warning("could not open broker connection: %s", error)
        connection.ioloop.stop()

    def _on_closed(self, connection, reason) -> None:
        self._ready.clear()
        self._channel = None
        if not self._closing:
            log.warning("broker connection closed: %s", reason)
        connection.ioloop.stop()

    def _on_channel_open(self, channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self._next_tag = 0
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=partial(self._on_confirm_mode, channel))

    def _on_confirm_mode(self, channel, _frame) -> None:
        self._channel = channel
        # Publishes queued for a previous connection never reached a loop that runs: fail them, re-arm wake-ups.
        self._fail_outbox(PublishError("connection to the message broker lost"))
        self._ready.set()
        log.info("publisher ready (confirm mode)")

    def _on_channel_closed(self, channel, reason) -> None:
        self._ready.clear()
        self._channel = None
        self._fail_pending(PublishError(f"broker closed the channel: {reason}"))
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _publish_outbox(self) -> None:
        with self._outbox_lock:
            batch, self._outbox = self._outbox, []
            self._wake_scheduled = False
        channel = self._channel
        for queue, body, waiter in batch:
            if channel is None or not channel.is_open:
                waiter.resolve(PublishError("message broker unavailable"))
                continue
            self._next_tag += 1
            tag = self._next_tag
            self._pending[tag] = waiter
            properties = pika.BasicProperties(message_id=str(tag), **PERSISTENT_JSON)
            channel.basic_publish("", queue, body, properties, mandatory=True)

    def _on_return(self, _channel, _method, properties, _body) -> None:
        # An unroutable message is returned before its ack: remember it so the ack fails it.
        with contextlib.suppress(TypeError, ValueError):
            self._returned.add(int(properties.message_id))

    def _on_confirm(self, frame) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = []
            for tag in self._pending:  # insertion order is tag order
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._pending else []
        for tag in tags:
            waiter = self._pending.pop(tag)
            if not acked:
                waiter.resolve(PublishError("message broker refused the message"))
            elif tag in self._returned:
                self._returned.discard(tag)
                waiter.resolve(PublishError("message broker has no such queue"))
            else:
                waiter.resolve()

    def _fail_pending(self, error: PublishError) -> None:
        pending, self._pending = self._pending, {}
        self._returned.clear()
        for waiter in pending.values():
            waiter.resolve(error)

    def _fail_outbox(self, error: PublishError) -> None:
        with self._outbox_lock:
            batch, self._outbox = self._outbox, []
            self._wake_scheduled = False
        for _queue, _body, waiter in batch:
            waiter.resolve(error)

    def _close_in_loop(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
