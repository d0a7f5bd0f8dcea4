"""Connections to RabbitMQ: every process opens its connections here (node lists, failover, TLS).

``RABBITMQ_URL`` names one broker address (a node, or a Kubernetes Service in front of a cluster) or the nodes of a
cluster separated by commas. :class:`BrokerNodes` parses it once and hands out pika connection parameters per node:

- **Failover.** A caller connects to the first node that answers, trying them in turn from the node *after* the
  one it last connected to; so after losing a node it starts elsewhere, and a crashed node costs one refused
  connection, not one per attempt. Only a whole round of refusals is a failure (callers back off after it).
- **TLS.** An ``amqps://`` URL gets a verifying context (the system's CA store, hostname checked against the URL's
  host), which is pika's own behaviour. A private CA is named by ``RABBITMQ_CA_FILE`` (PEM), or per URL with pika's
  ``?ssl_options={'ca_certs': '/path/ca.pem'}`` query, which wins over the variable. Verification is never turned off.
- **Profiles.** What each kind of connection negotiates and how long it waits (:class:`ConnectionProfile`): the
  writers', the API's asynchronous publisher and stream subscriber, and short-lived connections for one check
  (numbering recovery, ``/status``, queue migration, tools).

Blocking callers use :meth:`BrokerNodes.connect_blocking`; asyncio callers (``chat_api``'s publisher and stream
subscriber) drive :meth:`BrokerNodes.keep_connected` with a coroutine that serves one node's connection, opened with
:func:`asyncio_connection`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection

from chat_common.config import Settings

log = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0  # seconds between whole rounds of refused nodes (doubling)


@dataclass(frozen=True)
class ConnectionProfile:
    """What one kind of connection negotiates and how long it waits for a node; None keeps pika's default."""

    heartbeat: int | None = None
    # Bound on the TCP connect to one node: a node that does not answer (no RST: a partition) must not hold up the next.
    socket_timeout: float | None = None
    # Give up a connection the broker blocked (memory or disk alarm) for this long; None waits for ever.
    blocked_connection_timeout: float | None = None


# The writers' long-lived consuming connections.
WRITER = ConnectionProfile(heartbeat=30, socket_timeout=5, blocked_connection_timeout=60)
# The API's publisher and stream subscriber (asyncio, one each per worker process).
API = ConnectionProfile(heartbeat=30)
# A short-lived connection for one check or one job: numbering recovery's queue counts, /status, queue migration.
CHECK = ConnectionProfile(socket_timeout=5)


def parse_urls(amqp_url: str) -> tuple[str, ...]:
    """The node URLs ``RABBITMQ_URL`` names: one URL, or several separated by commas (blanks ignored)."""
    urls = tuple(url.strip() for url in amqp_url.split(",") if url.strip())
    if not urls:
        raise ValueError("RABBITMQ_URL names no broker")
    return urls


def node_parameters(url: str, profile: ConnectionProfile = CHECK, ca_file: str | None = None) -> pika.URLParameters:
    """pika's parameters for one node URL with ``profile`` applied and, for ``amqps://``, the CA to verify with."""
    params = pika.URLParameters(url)
    if params.ssl_options is not None and ca_file and "ssl_options" not in parse_qs(urlsplit(url).query):
        # Like pika's default for amqps (a verifying context, hostname = the URL's host), trusting the given CA.
        params.ssl_options = pika.SSLOptions(ssl.create_default_context(cafile=ca_file))
    if profile.heartbeat is not None:
        params.heartbeat = profile.heartbeat
    if profile.socket_timeout is not None:
        params.socket_timeout = profile.socket_timeout
    if profile.blocked_connection_timeout is not None:
        params.blocked_connection_timeout = profile.blocked_connection_timeout
    params.connection_attempts = 1  # the node list is the retry: the next node, not the same one again
    return params


class BrokerNodes:
    """The broker nodes of one deployment as one caller sees them: their parameters and whom to try next.

    One instance per connection owner (a writer's loop, a publisher, a check): the failover order is its own.
    """

    def __init__(self, amqp_url: str = DEFAULT_URL, profile: ConnectionProfile = CHECK, ca_file: str | None = None):
        self.urls = parse_urls(amqp_url)
        self.profile = profile
        self.ca_file = ca_file
        self._next = 0  # index of the node tried first next time

    @classmethod
    def from_settings(cls, settings: Settings, profile: ConnectionProfile = CHECK) -> BrokerNodes:
        """The nodes of ``RABBITMQ_URL``, verified with ``RABBITMQ_CA_FILE`` if set."""
        return cls(settings.rabbitmq_url, profile, settings.rabbitmq_ca_file)

    def parameters(self, index: int) -> pika.URLParameters:
        """Connection parameters of node ``index`` (in ``RABBITMQ_URL`` order)."""
        return node_parameters(self.urls[index], self.profile, self.ca_file)

    def failover_order(self) -> list[int]:
        """Node indexes in the order to try them now: from the one after the node last connected to, round."""
        return [(self._next + offset) % len(self.urls) for offset in range(len(self.urls))]

    def connected(self, index: int) -> None:
        """A connection to node ``index`` opened: whatever happens to it, the next attempt starts with another node."""
        self._next = (index + 1) % len(self.urls)
        if len(self.urls) > 1:
            log.info("connected to broker node %d of %d", index + 1, len(self.urls))

    def connect_blocking(self, connect: Callable[[pika.URLParameters], Any] = pika.BlockingConnection) -> Any:
        """A blocking connection to the first node that answers (in failover order); raises the last refusal when
        none does. ``connect``: pika's ``BlockingConnection``, or a fake of it in tests."""
        failure: BaseException | None = None
        for index in self.failover_order():
            try:
                connection = connect(self.parameters(index))
            except (pika.exceptions.AMQPError, OSError) as exc:
                failure = exc
                continue
            self.connected(index)
            return connection
        assert failure is not None
        raise failure

    def count_queues(self, names: Iterable[str]) -> dict[str, tuple[int, int] | None]:
        """:func:`queue_counts` over a short blocking connection of its own (to the first node that answers)."""
        connection = self.connect_blocking()
        try:
            return queue_counts(connection, names)
        finally:
            connection.close()

    async def keep_connected(
        self,
        serve: Callable[[pika.URLParameters], Awaitable[bool]],
        stopping: Callable[[], bool],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Serve one connection after another until ``stopping()``, node after node in failover order.

        ``serve(parameters)`` connects to one node and returns when that connection is over: True if it became
        ready (then the next node is tried after a short pause), False if it never did (the next node at once;
        after a whole round of such failures, a pause growing from 0.2 s to 5 s).
        """
        backoff, refused = BACKOFF_MIN, 0
        while not stopping():
            index = self.failover_order()[0]
            self._next = (index + 1) % len(self.urls)  # the next round starts after this node, whatever happens
            if await serve(self.parameters(index)):
                refused, backoff = 0, BACKOFF_MIN
                await sleep(BACKOFF_MIN)
                continue
            refused += 1
            if refused % len(self.urls):
                continue  # another node may answer: try it at once
            await sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)


def asyncio_connection(
    parameters: pika.URLParameters,
    on_open: Callable[[AsyncioConnection], None],
    on_over: Callable[[AsyncioConnection, BaseException], None],
) -> AsyncioConnection:
    """pika's asyncio connection on the running event loop: ``on_open(connection)`` once it is open,
    ``on_over(connection, reason)`` when it failed to open or closed."""
    return AsyncioConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=on_over,
        on_close_callback=on_over,
        custom_ioloop=asyncio.get_running_loop(),
    )


NOT_FOUND = 404


def queue_counts(connection: Any, names: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    """What the broker says of each queue (passive declares on ``connection``): (ready messages, consumers), or
    None for a queue that does not exist. Ready excludes messages delivered and not yet acknowledged."""
    counts: dict[str, tuple[int, int] | None] = {}
    channel = connection.channel()
    try:
        for name in names:
            try:
                ok = channel.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                counts[name] = None
                channel = connection.channel()  # the 404 closed that channel
                continue
            counts[name] = (ok.message_count, ok.consumer_count)
    finally:
        if channel.is_open:
            channel.close()
    return counts
